package dedup

import (
	"sync"
	"time"
)

// cache holds this worker's recent answers in two generations: the
// current one takes writes; when it is older than ttl, or full, it becomes
// the previous one and the old previous is dropped whole. An answer thus
// lives between ttl and 2×ttl (or until max newer answers push it out),
// with no per-entry timers and no sweeping.
type cache struct {
	ttl time.Duration
	max int

	mu        sync.Mutex
	cur, prev map[string]answer
	since     time.Time
}

func newCache(ttl time.Duration, max int) *cache {
	return &cache{ttl: ttl, max: max, cur: map[string]answer{}, prev: map[string]answer{}, since: time.Now()}
}

func (c *cache) get(key string) (answer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	if a, ok := c.cur[key]; ok {
		return a, true
	}
	a, ok := c.prev[key]
	return a, ok
}

func (c *cache) put(key string, a answer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	if len(c.cur) >= c.max/2 {
		c.prev, c.cur, c.since = c.cur, map[string]answer{}, time.Now()
	}
	c.cur[key] = a
}

func (c *cache) rotate(now time.Time) {
	switch age := now.Sub(c.since); {
	case age >= 2*c.ttl:
		c.prev, c.cur, c.since = map[string]answer{}, map[string]answer{}, now
	case age >= c.ttl:
		c.prev, c.cur, c.since = c.cur, map[string]answer{}, now
	}
}

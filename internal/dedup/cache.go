package dedup

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"
)

// cache holds this worker's recent answers in two generations: the
// current one takes writes; when it is older than ttl, or full, it becomes
// the previous one and the old previous is dropped whole. An answer thus
// lives between ttl and 2×ttl (or until max newer answers push it out),
// with no per-entry timers and no sweeping.
//
// A generation holds no pointers: keys are 16 bytes and answers are kept
// encoded (the store's format) in one byte slice, the map giving each
// answer's span of it. The garbage collector thus never walks the cache.
// Kept as strings and structs, 100,000 answers (the default LocalMax)
// took 190 bytes each, and a collection of a process holding them took
// 4.7 ms on a 2-core machine; kept as bytes, 119 bytes and 0.3 ms
// (BenchmarkGCWithFullCache).
type cache struct {
	ttl      time.Duration
	max      int // answers in both generations
	maxBytes int // of one generation's data

	mu        sync.Mutex
	cur, prev generation
	since     time.Time
}

type generation struct {
	spans map[slot]span
	data  []byte // encoded answers, appended; never written over
}

// slot is the map key for a bucket key: Keyer's 32 hex digits as the 16
// bytes they spell.
type slot [16]byte

type span struct{ off, len uint32 }

func newGeneration() generation { return generation{spans: map[slot]span{}} }

func newCache(ttl time.Duration, max int) *cache {
	return &cache{ttl: ttl, max: max, maxBytes: min(max/2*maxAnswerBytes, 1<<31),
		cur: newGeneration(), prev: newGeneration(), since: time.Now()}
}

// slotOf is key's slot. Keys that are not 32 hex digits (only tests make
// such) take the first half of their SHA-256.
func slotOf(key string) slot {
	var k slot
	if len(key) == 2*len(k) {
		if _, err := hex.Decode(k[:], []byte(key)); err == nil {
			return k
		}
	}
	sum := sha256.Sum256([]byte(key))
	copy(k[:], sum[:])
	return k
}

func (c *cache) get(key string) (answer, bool) {
	k := slotOf(key)
	c.mu.Lock()
	c.rotate(time.Now())
	g := &c.cur
	sp, ok := g.spans[k]
	if !ok {
		g = &c.prev
		sp, ok = g.spans[k]
	}
	var b []byte
	if ok {
		// The bytes stay valid outside the lock: data is only appended to.
		b = g.data[sp.off : sp.off+sp.len : sp.off+sp.len]
	}
	c.mu.Unlock()
	if !ok {
		return answer{}, false
	}
	return decode(b)
}

// put keeps an answer, given encoded (answer.encode).
func (c *cache) put(key string, encoded []byte) {
	k := slotOf(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	if len(c.cur.spans) >= c.max/2 || len(c.cur.data)+len(encoded) > c.maxBytes {
		c.prev, c.cur, c.since = c.cur, newGeneration(), time.Now()
	}
	c.cur.spans[k] = span{off: uint32(len(c.cur.data)), len: uint32(len(encoded))}
	c.cur.data = append(c.cur.data, encoded...)
}

// maxAnswerBytes bounds a generation's data at max/2 answers of this
// size, should the same key ever be put again and again (its older copies
// stay in data until the generation goes). Answers are under 400 bytes.
// The bound also keeps spans' offsets within uint32.
const maxAnswerBytes = 1024

func (c *cache) rotate(now time.Time) {
	switch age := now.Sub(c.since); {
	case age >= 2*c.ttl:
		c.prev, c.cur, c.since = newGeneration(), newGeneration(), now
	case age >= c.ttl:
		c.prev, c.cur, c.since = c.cur, newGeneration(), now
	}
}

package dedup

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"
)

// cache holds this worker's recent answers in two generations: the
// current one takes writes; when it is older than ttl, or full, it becomes
// the previous one and the old previous is dropped whole, with no
// per-entry timers and no sweeping. Each answer also carries its expiry
// (when the bucket drops it: ttl after it was stored), and is not given
// after it, so that no layer keeps an answer longer than WX_RESULT_TTL.
//
// A generation holds almost no pointers: keys are 16 bytes and answers
// are kept encoded (the store's format, without its MAC) in 64 KiB chunks of bytes, the map
// giving each answer's place. The garbage collector thus never walks the
// answers. Kept as strings and structs, 100,000 answers (the default
// LocalMax) took 190 bytes each, and a collection of a process holding
// them took 4.7 ms on a 2-core machine; kept as bytes, 145 bytes (with
// each answer's expiry) and about 0.4 ms (BenchmarkGCWithFullCache).
// Chunks are never grown: growing one slice would copy megabytes under the
// lock every worker's exchange takes.
type cache struct {
	ttl      time.Duration
	max      int // answers in both generations
	maxBytes int // of one generation's chunks

	mu        sync.Mutex
	cur, prev generation
	since     time.Time
}

type generation struct {
	places map[slot]place
	chunks [][]byte // encoded answers, appended; never written over
	size   int      // bytes in chunks
}

// slot is the map key for a bucket key: Keyer's 32 hex digits as the 16
// bytes they spell.
type slot [16]byte

// place is where an answer's bytes are (chunk, offset, length), and when
// it expires (unix nanos).
type place struct {
	chunk, off, len uint32
	exp             int64
}

const chunkSize = 64 << 10

func newGeneration() generation { return generation{places: map[slot]place{}} }

func newCache(ttl time.Duration, max int) *cache {
	return &cache{ttl: ttl, max: max, maxBytes: max / 2 * maxAnswerBytes,
		cur: newGeneration(), prev: newGeneration(), since: time.Now()}
}

// maxAnswerBytes bounds a generation's bytes at max/2 answers of this
// size, should the same key ever be put again and again (its older copies
// stay until the generation goes). Answers are under 400 bytes.
const maxAnswerBytes = 1024

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
	now := time.Now()
	c.mu.Lock()
	c.rotate(now)
	b, ok := c.cur.lookup(k, now)
	if !ok {
		b, ok = c.prev.lookup(k, now)
	}
	c.mu.Unlock()
	if !ok {
		return answer{}, false
	}
	// The bytes stay valid outside the lock: chunks are only appended to.
	return decode(b)
}

// put keeps an answer, given encoded (answer.encode), until expires.
func (c *cache) put(key string, encoded []byte, expires time.Time) {
	k := slotOf(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	if len(c.cur.places) >= c.max/2 || c.cur.size+len(encoded) > c.maxBytes {
		c.prev, c.cur, c.since = c.cur, newGeneration(), time.Now()
	}
	c.cur.add(k, encoded, expires.UnixNano())
}

func (g *generation) lookup(k slot, now time.Time) ([]byte, bool) {
	p, ok := g.places[k]
	if !ok || now.UnixNano() >= p.exp {
		return nil, false
	}
	return g.chunks[p.chunk][p.off : p.off+p.len : p.off+p.len], true
}

func (g *generation) add(k slot, b []byte, exp int64) {
	n := len(g.chunks)
	if n == 0 || cap(g.chunks[n-1])-len(g.chunks[n-1]) < len(b) {
		g.chunks = append(g.chunks, make([]byte, 0, max(chunkSize, len(b))))
		n++
	}
	last := &g.chunks[n-1]
	g.places[k] = place{chunk: uint32(n - 1), off: uint32(len(*last)), len: uint32(len(b)), exp: exp}
	*last = append(*last, b...)
	g.size += len(b)
}

func (c *cache) rotate(now time.Time) {
	switch age := now.Sub(c.since); {
	case age >= 2*c.ttl:
		c.prev, c.cur, c.since = newGeneration(), newGeneration(), now
	case age >= c.ttl:
		c.prev, c.cur, c.since = c.cur, newGeneration(), now
	}
}

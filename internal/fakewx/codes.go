package fakewx

import (
	"hash/maphash"
	"sync"
	"time"
)

// numShards spreads codes over independently locked maps so that concurrent
// requests rarely contend; a power of two so the index is a mask.
const numShards = 64

// shard holds what the fake knows about the codes that hash to it.
//
// Codes live in two generations: cur holds codes seen since genStart, prev
// codes seen in the generation before. Generations last one TTL, so when a
// generation ends every code still in prev was last seen more than a TTL ago
// and the whole map can be dropped at once. A code seen again while in prev
// moves to cur. Expiry is still checked exactly on every read; generations
// only bound memory to about two TTLs' worth of distinct codes.
type shard struct {
	mu       sync.Mutex
	cur      map[string]codeState
	prev     map[string]codeState
	genStart int64
	// scripts are the pending steps per code. They are installed by tests
	// through the Go API and never expire, so that a slow test cannot lose
	// them; they are removed as they are consumed.
	scripts map[string][]Step
}

// codeState is what the fake remembers about one code. Times are nanoseconds
// since Server.epoch.
type codeState struct {
	calls    int64
	lastSeen int64
	// used lists the appids that exchanged this code successfully; nearly
	// always zero or one entry. Marks live as long as the state: a code
	// stays used until it is forgotten, as on WeChat, where a used code
	// never works again.
	used []string
}

// touch returns the live state for code, rotating generations if one has
// ended and moving the code out of prev so that it survives the next rotation.
// The caller stores the updated state back into cur. sh.mu must be held.
func (sh *shard) touch(code string, now, ttl int64) codeState {
	if now-sh.genStart >= ttl {
		// Every code in prev was last seen before genStart, more than a
		// TTL ago: drop the map whole rather than clearing it, so a soak
		// spike does not pin its peak-sized buckets forever. Codes in
		// cur were seen before genStart+ttl; if that too is more than a
		// TTL ago, the shard was idle and they have all expired.
		if now-sh.genStart >= 2*ttl {
			sh.prev = make(map[string]codeState)
		} else {
			sh.prev = sh.cur
		}
		sh.cur = make(map[string]codeState)
		sh.genStart = now
	}
	st, ok := sh.cur[code]
	if !ok {
		if st, ok = sh.prev[code]; ok {
			delete(sh.prev, code)
		}
	}
	if ok && now-st.lastSeen >= ttl {
		st = codeState{} // expired: forget everything, as WeChat would
	}
	return st
}

func (s *Server) shard(code string) *shard {
	return &s.shards[maphash.String(s.seed, code)&(numShards-1)]
}

// now returns monotonic nanoseconds since the server started; compact and
// immune to wall-clock steps.
func (s *Server) now() int64 {
	if s.elapsed != nil {
		return int64(s.elapsed())
	}
	return int64(time.Since(s.epoch))
}

package dedup

import (
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
)

// BenchmarkGCWithFullCache is one garbage collection of a process whose
// cache holds LocalMax's default 100,000 answers: the marking a full
// cache adds to every collection in a busy worker. B/answer is the heap
// the cache takes per answer.
func BenchmarkGCWithFullCache(b *testing.B) {
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newCache(time.Hour, 2*n)
	k := NewKeyer("secret", "wxapp", seal.NewMAC([]byte("k")))
	for i := range n {
		s := strconv.Itoa(i)
		a := answer{Result: protocol.Result{OpenID: "oc7iHOjffdgFwpp_Ss17I5T" + s, UnionID: "uSGoVuFtSp09hrQj9-uLCn5" + s}}
		c.put(k.Key(s).Name, a.encode(), time.Now().Add(time.Hour))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	for b.Loop() {
		runtime.GC()
	}
	runtime.KeepAlive(c)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/answer")
}

// BenchmarkCachePutGet is the cache as busy workers use it: every
// exchange looks its key up, and most then put an answer, from many
// goroutines at once.
func BenchmarkCachePutGet(b *testing.B) {
	c := newCache(time.Hour, 100_000)
	k := NewKeyer("secret", "wxapp", seal.NewMAC([]byte("k")))
	v := answer{Result: protocol.Result{OpenID: "oc7iHOjffdgFwpp_Ss17I5TUYXtW", UnionID: "uSGoVuFtSp09hrQj9-uLCn5dw-bB"}}.encode()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := k.Key(strconv.FormatInt(n.Add(1), 10)).Name
			if _, ok := c.get(key); !ok {
				c.put(key, v, time.Now().Add(time.Hour))
			}
		}
	})
}

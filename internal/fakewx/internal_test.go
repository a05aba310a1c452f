package fakewx

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func TestParseMagic(t *testing.T) {
	for code, want := range map[string]magic{
		"fx-invalid-":         {kind: magicInvalid},
		"fx-blocked-a-b":      {kind: magicBlocked},
		"fx-hang-x":           {kind: magicHang},
		"fx-busy3-x":          {kind: magicBusy, n: 3},
		"fx-limit10-x":        {kind: magicLimit, n: 10},
		"fx-5xx1-x":           {kind: magic5xx, n: 1},
		"fx-garbage0-x":       {kind: magicGarbage, n: 0},
		"fx-slow250-x":        {kind: magicSlow, n: 250},
		"fx-busy999999999-x":  {kind: magicBusy, n: 999999999},
		"fx-busy1000000000-x": {},
		"fx-busy-x":           {},
		"fx-busy1":            {},
		"fx-busy-1-x":         {},
		"fx-slow1.5-x":        {},
		"fx-invalidx-x":       {},
		"fx-hang":             {},
		"0712cDoV0cfty22Aelo": {},
		"":                    {},
	} {
		if got := parseMagic(code); got != want {
			t.Errorf("parseMagic(%q) = %+v, want %+v", code, got, want)
		}
	}
}

// TestMemoryBounded soaks the fake with many distinct codes over several
// TTLs and checks that only about two TTLs' worth stay in memory.
func TestMemoryBounded(t *testing.T) {
	const ttl = 20 * time.Millisecond
	s := New(Config{Apps: []App{DemoApp()}, CodeTTL: ttl})
	var clock time.Duration // controlled, so that a slow machine changes nothing
	s.elapsed = func() time.Duration { return clock }
	s.Script("pending", Busy()) // scripts must survive expiry
	stored := func() int {
		n := 0
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			n += len(sh.cur) + len(sh.prev)
			sh.mu.Unlock()
		}
		return n
	}
	exchange := func(code string) int {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, Path+"?appid="+DemoAppID+"&secret="+DemoSecret+
			"&grant_type=authorization_code&js_code="+code, nil)
		s.ServeHTTP(w, r)
		return w.Code
	}

	const burst = 2000
	i := 0
	for range 4 { // bursts, each followed by more than a TTL of quiet
		for range burst {
			exchange("soak" + strconv.Itoa(i))
			i++
		}
		// At most this burst and the one before it are held.
		if n := stored(); n > 2*burst {
			t.Fatalf("%d codes stored after burst, want at most %d", n, 2*burst)
		}
		clock += ttl + ttl/2
	}
	// Two more TTLs pass, then touch every shard once so that each
	// rotates: everything from the bursts has expired and must be gone.
	clock += 2 * ttl
	for j := 0; stored() > 1000 && j < 10000; j++ {
		exchange("probe" + strconv.Itoa(j))
	}
	if n := stored(); n > 1000 {
		t.Fatalf("%d codes stored after %d distinct codes and expiry, want about the probes only", n, i)
	}
	if s.Calls("soak0") != 0 {
		t.Fatal("expired code still counted")
	}
	sh := s.shard("pending")
	sh.mu.Lock()
	pending := len(sh.scripts["pending"])
	sh.mu.Unlock()
	if pending != 1 {
		t.Fatalf("pending script lost: %d steps left", pending)
	}
}

func TestGenerationsKeepLiveCodes(t *testing.T) {
	// A code touched repeatedly within each TTL must survive any number of
	// generation rotations.
	const ttl = 30 * time.Millisecond
	s := New(Config{Apps: []App{DemoApp()}, CodeTTL: ttl})
	// A controlled clock: real sleeps overshoot a 30ms TTL on a loaded
	// machine and would make the code expire legitimately.
	var clock time.Duration
	s.elapsed = func() time.Duration { return clock }
	req := func() *http.Request {
		return httptest.NewRequest(http.MethodGet, Path+"?appid="+DemoAppID+"&secret="+DemoSecret+
			"&grant_type=authorization_code&js_code=live", nil)
	}
	s.ServeHTTP(httptest.NewRecorder(), req())
	for range 10 {
		clock += ttl / 3
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req())
		if !json40163(w.Body.String()) {
			t.Fatalf("code forgotten while in use: %s", w.Body)
		}
	}
	if got := s.Calls("live"); got != 11 {
		t.Fatalf("Calls = %d, want 11", got)
	}
}

func json40163(body string) bool {
	return len(body) > 16 && body[:16] == `{"errcode":40163`
}

package exchange

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
)

// TestBackgroundLoopSurvivesPanic: a background loop that panics is
// logged, started again after a pause, and the process carries on.
func TestBackgroundLoopSurvivesPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		w := &Worker{log: slog.New(slog.NewJSONHandler(&logs, nil))}
		runs := 0
		w.keepRunning(t.Context(), "test loop", func() {
			runs++
			if runs == 1 {
				var m map[string]int
				m["secret-value"] = 1 // panics: a nil map
			}
		})
		if runs != 2 {
			t.Errorf("loop ran %d times, want 2 (once more after its panic)", runs)
		}
		out := logs.String()
		if !strings.Contains(out, "panic recovered") || !strings.Contains(out, "nil map") || !strings.Contains(out, `"in":"test loop"`) {
			t.Errorf("panic not logged as expected:\n%s", out)
		}
	})
}

func TestPanicTextLeavesValuesOut(t *testing.T) {
	if got := panicText("code=abc123"); strings.Contains(got, "abc123") || got != "panic(string)" {
		t.Errorf("panicText(string) = %q", got)
	}
}

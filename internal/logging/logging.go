// Package logging builds the one *slog.Logger each binary passes down:
// tint for people, JSON for machines. It also names the few log attributes
// every package shares, so that lines can be searched across services.
package logging

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/lmittmann/tint"
)

// New returns a logger writing to w at level, in format "text" or "json".
func New(w io.Writer, level slog.Leveler, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewHandler(w, &tint.Options{
		Level:      level,
		TimeFormat: time.TimeOnly,
		NoColor:    !isTerminal(w),
	}))
}

// Discard is a logger that writes nothing, for tests and benchmarks.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Err is the attribute for an error.
func Err(err error) slog.Attr { return tint.Err(err) }

// CodeHash is how a login code appears in logs: a short hash that lets
// operators correlate lines of one exchange without holding the code.
func CodeHash(code string) string {
	sum := sha256.Sum256([]byte(code))
	return hex.EncodeToString(sum[:6])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Throttle lets a message through at most once per Every: a store outage
// should show in the log without flooding it.
type Throttle struct {
	Every time.Duration
	last  atomic.Int64 // unix nanos of the last message let through
}

// Allow reports whether a message may be logged now.
func (t *Throttle) Allow() bool {
	now := time.Now().UnixNano()
	last := t.last.Load()
	return now-last >= int64(t.Every) && t.last.CompareAndSwap(last, now)
}

//go:build unix

package reliability_test

import "syscall"

// fdLimit raises the soft limit on open files toward want, as far as the
// hard limit allows, and returns the soft limit in force. (Go already
// raises it to the hard limit at start on most systems; this makes the
// test's need explicit rather than relying on that.)
func fdLimit(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	if lim.Cur < want && lim.Cur < lim.Max {
		lim.Cur = min(want, lim.Max)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

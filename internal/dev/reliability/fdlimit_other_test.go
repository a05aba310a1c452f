//go:build !unix

package reliability_test

// fdLimit assumes a modest limit where it cannot be read.
func fdLimit(uint64) uint64 { return 2048 }

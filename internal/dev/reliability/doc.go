// Package reliability holds no code, only the fault, abuse and load suite
// of wxlogin (issue 6) as tests: real embedded NATS servers (single and
// clustered), the fake WeChat over real HTTP, real workers, and edges
// served the way cmd/edge serves them (edge.Serve, so the real HTTP
// server limits apply). Each test names, in its comment, the protection
// it proves: removing that protection makes the test fail.
//
// Tests that measure the whole process (goroutines, heap, memory
// allocated) do not run in parallel with the others; the rest do.
package reliability

// Package exchange is the worker: it turns login codes into openids by
// calling WeChat, with the secrets it alone holds. It serves the NATS
// micro service "wxlogin", runs each exchange in a goroutine of its own
// (a bounded number at once), rate-limits upstream calls per appid,
// retries what can succeed on retry within the requester's deadline, and
// never lets a secret, a session_key or a raw code into a log line or
// reply.
//
// # How the worker behaves
//
// Concurrency. A NATS subscription delivers messages one at a time, so a
// handler that called WeChat itself would serve one user at a time.
// Instead the handler starts a goroutine per exchange, which decodes the
// request, waits for one of WORKER_CONCURRENCY slots, asks
// de-duplication, calls WeChat if it must, and replies. Up to 8 times
// WORKER_CONCURRENCY accepted exchanges may wait for a slot, each against
// its own deadline. Beyond that the handler blocks, and NATS buffers up
// to max(16×WORKER_CONCURRENCY, 65536) messages; past that buffer NATS
// drops messages, the worker logs a slow-consumer error, and those
// requesters time out. The exchanges holding a slot are the worker's in
// flight figure (Stats.InFlight, the wxlogin_worker_in_flight gauge).
//
// Deadlines. A request's budget counts from its arrival at the worker,
// not from when it gets a slot. The edge sends its remaining budget in
// the Wxlogin-Timeout-Ms header, less 50 ms for the reply's trip back;
// without the header the budget is WORKER_REQUEST_TIMEOUT, and it is
// capped at a minute. The worker neither waits for a rate-limit token nor
// starts a retry that the budget cannot cover, and caps each attempt at
// WX_HTTP_TIMEOUT.
//
// Retries. The worker retries errcode -1, HTTP 5xx, network errors,
// timeouts and garbage bodies, with exponential backoff and full jitter.
// A 45011 (frequency limit) waits longer and ends as rate_limited. It
// never retries 40029, 40163, 40226, 40013 or 40125. WeChat does not say
// whether a busy or timed-out attempt consumed the code; when a retry
// then gets 40163, the worker answers code_used (get a new code) and
// counts a lost answer.
//
// Pool-wide pieces. De-duplication (package dedup) and the rate limit
// (package ratelimit) bind to their JetStream buckets once the server
// answers, retrying in the background; until then, and for good on a
// server without JetStream, both hold per worker, and the rate limiter
// divides WX_RATE by the workers it counts through micro's PING.
//
// Panics. A panic in an exchange is logged (where, the runtime's message
// or the panic's type, the stack; never the panic's value or the code)
// and answered with upstream_error, retry same_code; a de-duplication
// claim it held is ended with that transient error, so a retry of the
// code is not kept waiting. The background loops (binding the buckets,
// counting peers) are started again a second after a panic. The worker
// carries on serving either way.
//
// Shutdown. On SIGTERM the worker stops taking requests, lets every
// accepted exchange finish and reply (messages that had already reached
// it when intake stopped included), then drains its NATS connection.
// That takes at most the longest remaining request budget.
//
// Logs. One line per exchange with the appid, the code's short hash, the
// outcome, the attempts, the latency, WeChat's errcode and its rid, which
// WeChat support asks for.
//
// # Failure behaviour
//
// What a requester sees when something breaks (the reliability tests in
// internal/reliability check each):
//
//   - A worker dies mid-request: the requests it held time out at the
//     requester's deadline; NATS sends new requests to the other workers
//     at once, and with none left the edge answers 503 at once.
//   - A worker is stopped (SIGTERM, rolling update): nothing; the
//     requests it holds are answered.
//   - The NATS server goes down: requests in flight fail at once with
//     unavailable (their replies could only come over the lost
//     connection); a retry with the same code gets the original answer if
//     it reached the de-duplication store.
//   - WeChat hangs or drips its answer: timeout at the deadline, or
//     upstream_error (same_code) once WX_MAX_ATTEMPTS attempts of
//     WX_HTTP_TIMEOUT are spent, whichever comes first.
//   - WeChat refuses or resets connections, answers 5xx pages, cut or
//     non-JSON bodies: upstream_error, retry same_code, after up to
//     WX_MAX_ATTEMPTS attempts within the budget.
//   - WeChat answers a huge body: upstream_error; the worker reads 64 KiB
//     (wechat.MaxBody) and hangs up.
//   - WeChat says 45011 or busy: rate_limited with Retry-After, or success
//     after a retry; the pool slows down together.
package exchange

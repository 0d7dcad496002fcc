// A process-wide pool of sleeping worker threads for the CPU kernels (see parallel.h).
#pragma once

namespace dk {

// Calls fn(ctx) on `threads` threads concurrently, the calling thread being one of them, and
// returns when every call has returned. fn must not throw. A call made while the pool is busy
// (another thread's pass, or a pass nested in fn) runs fn(ctx) on the calling thread alone,
// and so does one the pool cannot grow for: callers share work through ctx, so any number of
// participants from one up gives the same result.
void run_parallel(int threads, void (*fn)(void*), void* ctx);

}  // namespace dk

// The parallel pass over chunks shared by the encode and decode kernels, on our own thread pool
// (thread_pool.cpp), not OpenMP: torch ships its own libgomp, and a second OpenMP runtime in the
// same process (ours, vendored into the wheel) would keep a second team of spinning threads.
// The pool's threads sleep when idle, and the wheel needs nothing but glibc.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <new>

#include "../include/distro_kernels.h"
#include "thread_pool.h"

// Internal linkage on purpose: compiled once per instruction set (see simd.h). The pool itself
// lives in thread_pool.cpp, compiled once with baseline flags.
namespace dk {
namespace {

// Runs fn on `threads` threads at once (the caller is one of them) and returns when all are done.
template <typename Fn>
void run_on_threads(int threads, Fn& fn) {
  if (threads <= 1) {
    fn();
    return;
  }
  run_parallel(threads, [](void* ctx) { (*static_cast<Fn*>(ctx))(); }, &fn);
}

// Chunks per run: run r is [16 r, 16 r + 16) (clipped to total), all of it on one thread, in
// order (decode.cpp's step relies on it).
constexpr int64_t kChunkRun = 16;

// Runs body(scratch, chunk) for every chunk in [0, total), each thread with its own scratch
// from make_scratch(), made when the thread takes its first chunk. Below ~64k elements of work
// one thread runs it all (waking threads costs more than it saves); chunks are handed out in
// runs of 16 from a shared counter, so a preempted thread does not stall the pass. Returns
// DK_OK, or DK_ERR_ALLOC if a thread could not get its scratch (its chunks are then skipped).
template <typename MakeScratch, typename Body>
int for_each_chunk(int64_t total, int64_t elements_per_chunk, int threads, MakeScratch make_scratch,
                   Body body) {
  constexpr int64_t kRun = kChunkRun;
  if (total * elements_per_chunk < 65536) threads = 1;
  threads = static_cast<int>(std::min<int64_t>(threads, (total + kRun - 1) / kRun));
  std::atomic<int64_t> next{0};
  std::atomic<int> status{DK_OK};
  auto worker = [&]() noexcept {
    decltype(make_scratch()) scratch;
    for (;;) {
      const int64_t first = next.fetch_add(kRun, std::memory_order_relaxed);
      if (first >= total) return;
      if (!scratch) {
        try {
          scratch = make_scratch();
        } catch (const std::bad_alloc&) {
          status.store(DK_ERR_ALLOC, std::memory_order_relaxed);
          return;  // the chunks this thread took stay unwritten; the call fails
        }
      }
      for (int64_t c = first, end = std::min(total, first + kRun); c < end; ++c) body(*scratch, c);
    }
  };
  run_on_threads(threads, worker);
  return status.load();
}

// Runs body(begin, end) over [0, n) split into `threads` contiguous ranges (a static schedule,
// for flat loops such as the sign packers); one thread runs it all when n <= serial_below.
template <typename Body>
void parallel_for(int64_t n, int threads, int64_t serial_below, Body body) {
  if (n <= serial_below) threads = 1;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  std::atomic<int> next_part{0};
  auto worker = [&]() noexcept {
    for (int part; (part = next_part.fetch_add(1, std::memory_order_relaxed)) < threads;)
      body(n * part / threads, n * (part + 1) / threads);
  };
  run_on_threads(threads, worker);
}

// target |= bits, atomically (flags set from several threads of one pass).
inline void atomic_or(int& target, int bits) { __atomic_fetch_or(&target, bits, __ATOMIC_RELAXED); }

}  // namespace
}  // namespace dk

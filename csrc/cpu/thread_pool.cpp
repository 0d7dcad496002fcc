// The CPU kernels' thread pool: workers are created on first need (one fewer than the largest
// thread count asked for, up to kMaxWorkers), block on a condition variable between passes
// (no spinning, so torch's own threads keep the cores), and live until the process ends.
#include "thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <thread>

namespace dk {
namespace {

constexpr int kMaxWorkers = 255;

class Pool {
 public:
  void run(int threads, void (*fn)(void*), void* ctx) {
    if (threads <= 1 || !busy_.try_lock()) {
      fn(ctx);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const int wanted = std::min(threads - 1, kMaxWorkers);
      while (workers_ < wanted && spawn(workers_)) ++workers_;
      joining_ = std::min(wanted, workers_);
      running_ = joining_;
      fn_ = fn;
      ctx_ = ctx;
      ++generation_;
    }
    wake_.notify_all();
    fn(ctx);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return running_ == 0; });
      fn_ = nullptr;
      ctx_ = nullptr;
    }
    busy_.unlock();
  }

 private:
  // Called with mutex_ held; false if the system refuses another thread.
  bool spawn(int id) {
    try {
      std::thread([this, id, seen = generation_] { work(id, seen); }).detach();
      return true;
    } catch (const std::system_error&) {
      return false;
    }
  }

  void work(int id, uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= joining_) continue;  // this pass wants fewer threads
      void (*fn)(void*) = fn_;
      void* ctx = ctx_;
      lock.unlock();
      fn(ctx);
      lock.lock();
      if (--running_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_;  // held by the thread whose pass the pool is running
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;  // bumped once per pass
  int workers_ = 0;
  int joining_ = 0;  // workers with id < joining_ run the current pass
  int running_ = 0;  // of those, how many have not finished it
  void (*fn_)(void*) = nullptr;
  void* ctx_ = nullptr;
};

// Never destroyed: detached workers may still be waiting on it while the process exits.
Pool* g_pool = nullptr;

// A forked child has none of the parent's workers (and perhaps a locked mutex): it starts a new
// pool, leaking the old one's memory rather than touching its state.
void fresh_pool_in_child() { g_pool = new Pool(); }

Pool& pool() {
  static Pool* const first = [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, fresh_pool_in_child);
    return g_pool;
  }();
  (void)first;
  return *g_pool;
}

}  // namespace

void run_parallel(int threads, void (*fn)(void*), void* ctx) { pool().run(threads, fn, ctx); }

}  // namespace dk

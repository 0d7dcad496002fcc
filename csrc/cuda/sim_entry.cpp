// Host emulation entry point (tests only): runs a kernel of kernels.cu on the CPU with the
// same argument array that cuLaunchKernel takes, so the Python launch path is exercised as is.
// Blocks run one after another; the threads of a block are real threads (see host_sim.h).
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.cu"

thread_local dk_dim3 threadIdx;
thread_local dk_dim3 blockIdx;
dk_dim3 blockDim;
dk_dim3 gridDim;
std::barrier<>* dk_sim_barrier = nullptr;

namespace {

template <typename... A, size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
std::function<void(void**)> entry(void (*kernel)(A...)) {
  return [kernel](void** args) { call(kernel, args, std::index_sequence_for<A...>{}); };
}

const std::map<std::string, std::function<void(void**)>>& kernels() {
  static const std::map<std::string, std::function<void(void**)>> table = {
      {"dk_encode", entry(dk_encode)},         {"dk_decompress", entry(dk_decompress)},
      {"dk_idct", entry(dk_idct)},             {"dk_pack_signs", entry(dk_pack_signs)},
      {"dk_unpack_signs", entry(dk_unpack_signs)},
  };
  return table;
}

std::mutex launch_lock;  // one launch at a time: __shared__ arrays are process-wide statics

}  // namespace

extern "C" int dk_sim_launch(const char* name, unsigned grid, unsigned block, void** args) {
  const auto found = kernels().find(name);
  if (found == kernels().end()) return 1;
  if (block != DK_THREADS) return 2;  // every kernel assumes DK_THREADS threads
  std::lock_guard<std::mutex> hold(launch_lock);
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    dk_sim_barrier = &barrier;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, b, t] {
        blockIdx = {b, 0, 0};
        threadIdx = {t, 0, 0};
        found->second(args);
      });
    for (auto& thread : threads) thread.join();
  }
  return 0;
}

extern "C" int dk_sim_threads() { return DK_THREADS; }
// The integer division of decode, for a host test against IEEE division.
extern "C" void dk_sim_div_count_many(const float* s, const uint32_t* n, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = dk_div_count(s[i], n[i]);
}

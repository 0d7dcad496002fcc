// The C ABI (distro_kernels.h): argument checks, then the kernel set for this CPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../include/distro_kernels.h"
#include "basis.h"
#include "cpu_features.h"
#include "geometry.h"
#include "kernels.h"
#include "parallel.h"

namespace {

// DISTRO_KERNELS_CPU_VARIANT=generic|avx2 caps the kernel set (tests run every set this way).
const char* variant_cap() {
  static const char* cap = std::getenv("DISTRO_KERNELS_CPU_VARIANT");
  return cap ? cap : "";
}

bool cpu_has_avx2() {
#if defined(DK_HAVE_AVX2_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = std::strcmp(variant_cap(), "generic") != 0 &&
                          dk::x86_features().avx2 && dk::x86_features().fma;
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(DK_HAVE_AVX512_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  static const bool has = cpu_has_avx2() && std::strcmp(variant_cap(), "avx2") != 0 &&
                          dk::x86_features().avx512f && dk::x86_features().avx512vl &&
                          dk::x86_features().avx512dq;
  return has;
#else
  return false;
#endif
}

#if defined(DK_HAVE_AVX512_KERNELS)
#define DK_DISPATCH(fn, ...)                                                       \
  (cpu_has_avx512() ? dk::avx512::fn(__VA_ARGS__)                                  \
   : cpu_has_avx2() ? dk::avx2::fn(__VA_ARGS__) : dk::generic::fn(__VA_ARGS__))
#elif defined(DK_HAVE_AVX2_KERNELS)
#define DK_DISPATCH(fn, ...) (cpu_has_avx2() ? dk::avx2::fn(__VA_ARGS__) : dk::generic::fn(__VA_ARGS__))
#else
#define DK_DISPATCH(fn, ...) dk::generic::fn(__VA_ARGS__)
#endif

// A decode output is usually fresh memory (torch.empty maps it on each call): its first write
// takes a page fault per 4 KiB, which for a 64 MiB output cost more CPU time than the decode
// (42 ms vs 8 ms measured here with huge pages). Advising transparent huge pages before that
// write makes it 2 MiB faults; it changes nothing for memory already in use. Linux only; only
// the 2 MiB-aligned interior of outputs of 8 MiB and more.
void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < (int64_t{8} << 20)) return;
  const uintptr_t start = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);  // advice only
#else
  (void)p;
  (void)bytes;
#endif
}

int64_t output_bytes(const dk_geometry& g) {
  return g.batch * g.chunks_m * g.chunks_n * static_cast<int64_t>(g.cm) * g.cn * 4;
}

int threads_or_default(int32_t threads) { return threads > 0 ? threads : 1; }
bool dtype_ok(int32_t dtype) { return dtype == DK_F32 || dtype == DK_BF16 || dtype == DK_F16; }

// The fused steps' arguments (the states in either layout).
bool step_arguments_ok(int32_t n_tensors, float* const* states, const void* const* grads,
                       const int32_t* grad_dtypes, const dk_geometry* geoms, int32_t k,
                       const int32_t* indices, const float* values) {
  if (n_tensors < 1 || !states || !grads || !grad_dtypes || !geoms || !indices || !values || k < 1)
    return false;
  for (int t = 0; t < n_tensors; ++t)
    if (!states[t] || !grads[t] || !dtype_ok(grad_dtypes[t]) || !dk::geometry_ok(&geoms[t]))
      return false;
  return true;
}

}  // namespace

extern "C" {

int dk_canonical_basis(int32_t c, float* out) {
  if (c < 1 || c > DK_MAX_CHUNK || !out) return DK_ERR_ARGUMENT;
  dk::canonical_basis(c, out);
  return DK_OK;
}

int dk_dct(const void* x, int32_t dtype, const dk_geometry* g, float* coeffs, int32_t threads) {
  if (!x || !coeffs || !dtype_ok(dtype) || !dk::geometry_ok(g)) return DK_ERR_ARGUMENT;
  return DK_DISPATCH(dct, x, dtype, *g, coeffs, threads_or_default(threads));
}

int dk_idct(const float* coeffs, const dk_geometry* g, float* x, int32_t threads) {
  if (!x || !coeffs || !dk::geometry_ok(g)) return DK_ERR_ARGUMENT;
  advise_huge_pages(x, output_bytes(*g));
  return DK_DISPATCH(idct, coeffs, *g, x, threads_or_default(threads));
}

int dk_compress(const void* x, int32_t dtype, const dk_geometry* g, int32_t k_eff,
                int32_t* indices, float* values, int32_t threads) {
  if (!x || !indices || !values || !dtype_ok(dtype) || !dk::geometry_ok(g)) return DK_ERR_ARGUMENT;
  if (k_eff < 1 || k_eff > g->cm * g->cn) return DK_ERR_ARGUMENT;
  return DK_DISPATCH(compress, x, dtype, *g, k_eff, indices, values, threads_or_default(threads));
}

int dk_demo_step(int32_t n_tensors, float* const* deltas, const void* const* grads,
                 const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,
                 int32_t k, int32_t* indices, float* values, int32_t threads) {
  if (!step_arguments_ok(n_tensors, deltas, grads, grad_dtypes, geoms, k, indices, values))
    return DK_ERR_ARGUMENT;
  return DK_DISPATCH(demo_step, n_tensors, deltas, grads, grad_dtypes, geoms, beta, lr, k, indices,
                     values, threads_or_default(threads));
}

int dk_demo_step_coeffs(int32_t n_tensors, float* const* states, const void* const* grads,
                        const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,
                        int32_t k, int32_t* indices, float* values, int32_t threads) {
  if (!step_arguments_ok(n_tensors, states, grads, grad_dtypes, geoms, k, indices, values))
    return DK_ERR_ARGUMENT;
  return DK_DISPATCH(demo_step_coeffs, n_tensors, states, grads, grad_dtypes, geoms, beta, lr, k,
                     indices, values, threads_or_default(threads));
}

int dk_decompress(int32_t n_peers, const int32_t* const* indices, const void* const* values,
                  int32_t value_codec, const dk_geometry* g, int32_t k_eff, int32_t reduce,
                  int32_t apply_sign, float* out, int32_t threads, int32_t* bad_peer) {
  int32_t bad_tensor = -1;
  return dk_decompress_many(1, n_peers, indices, values, value_codec, g, &k_eff, reduce, apply_sign,
                            &out, threads, &bad_tensor, bad_peer);
}

int dk_decompress_many(int32_t n_tensors, int32_t n_peers, const int32_t* const* indices,
                       const void* const* values, int32_t value_codec, const dk_geometry* geoms,
                       const int32_t* k_effs, int32_t reduce, int32_t apply_sign, float* const* outs,
                       int32_t threads, int32_t* bad_tensor, int32_t* bad_peer) {
  return dk_decompress_many_apply(n_tensors, n_peers, indices, values, value_codec, geoms, k_effs, reduce,
                                  apply_sign, outs, nullptr, nullptr, nullptr, threads, bad_tensor, bad_peer);
}

int dk_decompress_many_apply(int32_t n_tensors, int32_t n_peers, const int32_t* const* indices,
                             const void* const* values, int32_t value_codec, const dk_geometry* geoms,
                             const int32_t* k_effs, int32_t reduce, int32_t apply_sign, float* const* outs,
                             float* const* params, const float* keeps, const float* steps, int32_t threads,
                             int32_t* bad_tensor, int32_t* bad_peer) {
  if (params && (!keeps || !steps)) return DK_ERR_ARGUMENT;
  if (n_tensors < 1 || n_peers < 0 || !geoms || !k_effs || !outs) return DK_ERR_ARGUMENT;
  if (n_peers && (!indices || !values)) return DK_ERR_ARGUMENT;
  if (value_codec != DK_VALUES_F32 && value_codec != DK_VALUES_SIGN) return DK_ERR_ARGUMENT;
  if (reduce != DK_REDUCE_MEAN && reduce != DK_REDUCE_SUM_OVER_PEERS) return DK_ERR_ARGUMENT;
  std::vector<int32_t> k_used(n_tensors);
  for (int t = 0; t < n_tensors; ++t) {
    if (!dk::geometry_ok(&geoms[t]) || !outs[t] || (params && !params[t])) return DK_ERR_ARGUMENT;
    const int E = geoms[t].cm * geoms[t].cn;
    if (n_peers && (k_effs[t] < 1 || k_effs[t] > E)) return DK_ERR_ARGUMENT;
    k_used[t] = n_peers ? k_effs[t] : 1;
    for (int p = 0; p < n_peers; ++p)
      if (!indices[t * n_peers + p] || !values[t * n_peers + p]) return DK_ERR_ARGUMENT;
  }
  for (int t = 0; t < n_tensors; ++t) advise_huge_pages(outs[t], output_bytes(geoms[t]));
  int32_t ignored_tensor = -1, ignored_peer = -1;
  return DK_DISPATCH(decompress, n_tensors, n_peers, indices, values, value_codec, geoms, k_used.data(),
                     reduce, apply_sign, outs, params, keeps, steps, threads_or_default(threads),
                     bad_tensor ? bad_tensor : &ignored_tensor, bad_peer ? bad_peer : &ignored_peer);
}

int dk_pack_signs(const float* values, int64_t n, uint8_t* out, int32_t threads) {
  if (n < 0 || (n && (!values || !out))) return DK_ERR_ARGUMENT;
  const int64_t n_bytes = (n + 7) / 8;
  dk::parallel_for(n_bytes, threads_or_default(threads), 65536, [&](int64_t begin, int64_t end) {
    for (int64_t byte = begin; byte < end; ++byte) {
      uint8_t packed = 0;
      const int64_t first = byte * 8;
      const int count = static_cast<int>(std::min<int64_t>(8, n - first));
      for (int bit = 0; bit < count; ++bit) packed |= static_cast<uint8_t>(std::signbit(values[first + bit])) << bit;
      out[byte] = packed;
    }
  });
  return DK_OK;
}

int dk_unpack_signs(const uint8_t* packed, int64_t n, float* out, int32_t threads) {
  if (n < 0 || (n && (!packed || !out))) return DK_ERR_ARGUMENT;
  // A byte's 8 values at once from a table, without a branch: a branch per value on random
  // signs mispredicted half the time (676 us for 131k values here, against the eager
  // reference's ~340).
  static const struct ByteSigns {
    float values[256][8];
    ByteSigns() {
      for (int byte = 0; byte < 256; ++byte)
        for (int bit = 0; bit < 8; ++bit) values[byte][bit] = (byte >> bit) & 1 ? -1.0f : 1.0f;
    }
  } table;
  const int64_t whole = n / 8;
  dk::parallel_for(whole, threads_or_default(threads), 65536, [&](int64_t begin, int64_t end) {
    for (int64_t byte = begin; byte < end; ++byte) std::memcpy(out + byte * 8, table.values[packed[byte]], sizeof(float) * 8);
  });
  for (int64_t i = whole * 8; i < n; ++i) out[i] = table.values[packed[i >> 3]][i & 7];
  return DK_OK;
}

const char* dk_status_string(int32_t status) {
  switch (status) {
    case DK_OK: return "ok";
    case DK_ERR_ARGUMENT: return "invalid argument";
    case DK_ERR_INDEX_RANGE: return "index out of range [0, E)";
    case DK_ERR_INDEX_ORDER: return "indices not strictly ascending within a chunk (unsorted or duplicate)";
    case DK_ERR_VALUE: return "value not finite or |value| >= 2^64";
    case DK_ERR_ALLOC: return "out of memory";
    default: return "unknown status";
  }
}

const char* dk_kernel_variant(void) {
  return cpu_has_avx512() ? "avx512" : cpu_has_avx2() ? "avx2" : "generic";
}

}  // extern "C"

// The optimizer's whole-tensor passes on CPU (distro_kernels/optim/demo.py): the non-finite
// check before a step and the sign-SGD apply after it, on this library's thread pool. torch's
// own ops compute the same, but each of its parallel regions leaves an OpenMP worker spinning
// on a core for a few ms afterwards (libgomp's default wait policy), and a kernel of ours
// started in that window shares a core with it: the 4096x4096 encode right after
// torch.aminmax took 26.2-26.5 against 21.1-21.7 ms (medians), and 21.4 ms with
// OMP_WAIT_POLICY=PASSIVE.
#include <cstdint>
#include <cstring>

#include "../include/distro_kernels.h"
#include "parallel.h"

namespace {

constexpr int64_t kSerialBelow = 1 << 16;

// Exponent all ones: inf or NaN, for a format with `mask` covering its exponent bits.
template <typename Bits>
bool any_nonfinite(const Bits* x, int64_t n, Bits mask) {
  Bits seen = 0;  // branch-free, so the loop vectorizes: OR of (bits & mask) == mask per value
  for (int64_t i = 0; i < n; ++i) seen |= static_cast<Bits>((x[i] & mask) == mask);
  return seen != 0;
}

}  // namespace

extern "C" {

int dk_has_nonfinite(const void* x, int32_t dtype, int64_t n, int32_t threads, int32_t* found) {
  if (n < 0 || !found || (n && !x) || (dtype != DK_F32 && dtype != DK_BF16 && dtype != DK_F16))
    return DK_ERR_ARGUMENT;
  int any = 0;
  dk::parallel_for(n, threads < 1 ? 1 : threads, kSerialBelow, [&](int64_t begin, int64_t end) {
    bool bad;
    if (dtype == DK_F32)
      bad = any_nonfinite(static_cast<const uint32_t*>(x) + begin, end - begin, uint32_t{0x7f800000u});
    else
      bad = any_nonfinite(static_cast<const uint16_t*>(x) + begin, end - begin,
                          static_cast<uint16_t>(dtype == DK_BF16 ? 0x7f80u : 0x7c00u));
    if (bad) dk::atomic_or(any, 1);
  });
  *found = any;
  return DK_OK;
}

int dk_apply_update(float* p, const float* update, int64_t n, float keep, int32_t decay, float step,
                    int32_t threads) {
  if (n < 0 || (n && (!p || !update))) return DK_ERR_ARGUMENT;
  // Two roundings each, never fused (this file builds with -ffp-contract=off): for a sign
  // update (+-1 or 0) step * u is exact, so this is bit for bit torch's p.mul_(keep) then
  // p.add_(u, alpha=step), fused multiply-add or not.
  dk::parallel_for(n, threads < 1 ? 1 : threads, kSerialBelow, [&](int64_t begin, int64_t end) {
    float* dst = p + begin;
    const float* u = update + begin;
    const int64_t count = end - begin;
    if (decay)
      for (int64_t i = 0; i < count; ++i) dst[i] = dst[i] * keep + step * u[i];
    else
      for (int64_t i = 0; i < count; ++i) dst[i] = dst[i] + step * u[i];
  });
  return DK_OK;
}

}  // extern "C"

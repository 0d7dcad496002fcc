// One kernel source for three compilers: nvcc (CUDA), hipcc (HIP on AMD) and a host C++
// compiler (DK_HOST_SIM: the CPU emulation of the execution model that CI tests run).
// Only device-side names live here; no host runtime API is used anywhere (the Python side
// loads the code objects through the driver at run time).
#pragma once

#if defined(DK_HOST_SIM)
#include "host_sim.h"
#elif defined(__HIPCC__)
#include <hip/hip_runtime.h>
#endif

#include <stdint.h>

#if defined(DK_HOST_SIM)
#define DK_DEVICE inline
#else
#define DK_DEVICE __device__ __forceinline__
#endif

// Separately rounded float32 multiply and add (SPEC 4.3): never contracted into an FMA.
// nvcc: the _rn intrinsics are never fused (and the build passes --fmad=false as well).
// hipcc and the host build compile with -ffp-contract=off, so each operator rounds once.
#if defined(__CUDACC__) && !defined(__HIPCC__) && !defined(DK_HOST_SIM)
DK_DEVICE float dk_mul(float a, float b) { return __fmul_rn(a, b); }
DK_DEVICE float dk_add(float a, float b) { return __fadd_rn(a, b); }
#else
DK_DEVICE float dk_mul(float a, float b) { return a * b; }
DK_DEVICE float dk_add(float a, float b) { return a + b; }
#endif

// Encode-side products: an explicit fused multiply-add (allowed by SPEC 2, and the only
// way an FMA reaches the code objects, since contraction is off everywhere).
DK_DEVICE float dk_fma(float a, float b, float c) { return fmaf(a, b, c); }

#if defined(DK_HOST_SIM)
DK_DEVICE uint32_t dk_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
DK_DEVICE float dk_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
DK_DEVICE int dk_clz64(uint64_t x) { return x ? __builtin_clzll(x) : 64; }
DK_DEVICE int dk_clz32(uint32_t x) { return x ? __builtin_clz(x) : 32; }
#else
DK_DEVICE uint32_t dk_bits(float f) { return __float_as_uint(f); }
DK_DEVICE float dk_float(uint32_t u) { return __uint_as_float(u); }
DK_DEVICE int dk_clz64(uint64_t x) { return __clzll(static_cast<long long>(x)); }
DK_DEVICE int dk_clz32(uint32_t x) { return __clz(static_cast<int>(x)); }
#endif

#if defined(DK_HOST_SIM)
#define DK_KERNEL extern "C" void
#else
#define DK_KERNEL extern "C" __global__ void __launch_bounds__(DK_THREADS, 1)
#endif

// Threads per block of every tile kernel, and the elements of one tile (one 64x64 chunk, or
// several smaller chunks of one tensor): each thread owns DK_EPT elements.
#define DK_THREADS 256
#define DK_TILE 4096
#define DK_EPT (DK_TILE / DK_THREADS)

// CPU emulation of the CUDA execution model, for testing the kernels without a GPU: every
// block runs alone, its threads are real std::threads, __syncthreads is a barrier and
// __shared__ arrays are static (one block at a time, so one copy is enough). Only what the
// kernels use is emulated. Compiled by sim_entry.cpp with -ffp-contract=off.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

struct dk_dim3 { unsigned x = 0, y = 0, z = 0; };
extern thread_local dk_dim3 threadIdx;
extern thread_local dk_dim3 blockIdx;
extern dk_dim3 blockDim;
extern dk_dim3 gridDim;
extern std::barrier<>* dk_sim_barrier;

#define __shared__ static
#define __restrict__

inline void __syncthreads() { dk_sim_barrier->arrive_and_wait(); }

template <typename T> inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename T> inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }

using std::fmaf;

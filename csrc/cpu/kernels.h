// Kernel entry points, compiled once per instruction set (dk::avx512, dk::avx2, dk::generic);
// api.cpp picks one at run time. api.cpp checks the arguments; decompress checks the payload
// content (SPEC 5) itself, in the same parallel pass as the decode.
#pragma once

#include <cstdint>

#include "../include/distro_kernels.h"

#define DK_DECLARE_KERNELS(ns)                                                                   \
  namespace dk {                                                                                 \
  namespace ns {                                                                                 \
  int dct(const void* x, int32_t dtype, const dk_geometry& g, float* coeffs, int threads);      \
  int compress(const void* x, int32_t dtype, const dk_geometry& g, int k_eff, int32_t* indices, \
               float* values, int threads);                                                      \
  int demo_step(int n_tensors, float* const* deltas, const void* const* grads,                   \
                const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,     \
                int k, int32_t* indices, float* values, int threads);                            \
  int demo_step_coeffs(int n_tensors, float* const* states, const void* const* grads,            \
                       const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr, \
                       int k, int32_t* indices, float* values, int threads);                     \
  int idct(const float* coeffs, const dk_geometry& g, float* x, int threads);                   \
  int decompress(int n_tensors, int n_peers, const int32_t* const* indices,                     \
                 const void* const* values, int value_codec, const dk_geometry* geoms,           \
                 const int32_t* k_effs, int reduce, int apply_sign, float* const* outs,          \
                 float* const* params, const float* keeps, const float* steps, int threads,      \
                 int32_t* bad_tensor, int32_t* bad_peer);                                        \
  }                                                                                              \
  }

DK_DECLARE_KERNELS(avx512)
DK_DECLARE_KERNELS(avx2)
DK_DECLARE_KERNELS(generic)

// Small device helpers shared by the encode and decode kernels.
#pragma once

#include "table.h"

DK_DEVICE float dk_bf16(uint16_t h) { return dk_float(static_cast<uint32_t>(h) << 16); }

DK_DEVICE float dk_f16(uint16_t h) {  // exact IEEE binary16 -> binary32
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while (!(mantissa & 0x400u)) { mantissa <<= 1; ++shift; }
      bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  return dk_float(bits);
}

// Element `at` of a float32/bf16/f16 tensor as float32.
DK_DEVICE float dk_load(int64_t base, int dtype, int64_t at) {
  if (dtype == DK_DTYPE_F32) return reinterpret_cast<const float*>(base)[at];
  const uint16_t h = reinterpret_cast<const uint16_t*>(base)[at];
  return dtype == DK_DTYPE_BF16 ? dk_bf16(h) : dk_f16(h);
}

// Exclusive prefix sum of one int per thread over the block (DK_THREADS threads), with the
// total in *total. Shared-memory Hillis-Steele, double-buffered: portable to any warp size.
DK_DEVICE int dk_block_exclusive_scan(int value, int* scratch /* 2 * DK_THREADS */, int* total) {
  const int tid = static_cast<int>(threadIdx.x);
  int* in = scratch;
  int* out = scratch + DK_THREADS;
  in[tid] = value;
  __syncthreads();
  for (int step = 1; step < DK_THREADS; step <<= 1) {
    out[tid] = tid >= step ? in[tid] + in[tid - step] : in[tid];
    __syncthreads();
    int* swap = in; in = out; out = swap;
  }
  const int inclusive = in[tid];
  *total = in[DK_THREADS - 1];
  __syncthreads();  // the scratch may be reused right after
  return inclusive - value;
}

DK_DEVICE uint32_t dk_magnitude_bits(float v) { return dk_bits(v) & 0x7fffffffu; }

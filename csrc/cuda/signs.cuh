// SPEC 3's sign codec: bit = signbit(value), LSB-first (value i is bit i % 8 of byte i / 8).
#pragma once

#include "common.h"

DK_KERNEL dk_pack_signs(const float* values, int64_t n, uint8_t* out, int64_t nbytes) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * DK_THREADS + threadIdx.x;
  if (b >= nbytes) return;
  uint32_t byte = 0;
  for (int i = 0; i < 8; ++i) {
    const int64_t e = b * 8 + i;
    if (e < n) byte |= (dk_bits(values[e]) >> 31) << i;
  }
  out[b] = static_cast<uint8_t>(byte);
}

DK_KERNEL dk_unpack_signs(const uint8_t* packed, int64_t n, float* out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * DK_THREADS + threadIdx.x;
  if (e >= n) return;
  out[e] = (packed[e >> 3] >> (e & 7)) & 1u ? -1.0f : 1.0f;
}

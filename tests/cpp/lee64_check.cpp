// LeeForward64 / LeeInverse64 (csrc/cpu/lee_dct.h) against the plain recursion they reorder,
// LeeForward<V, 64> / LeeInverse<V, 64>: bit for bit, on random normals, signed zeros, tiny
// (subnormal-range) and huge inputs; the inverse both fused (encode) and unfused (the decode's
// certified sign, lee_sign.h). Built and run by tests/test_lee64.py with the kernels' flags.
// Prints "cases N differ D nonzero Z" and exits 1 if any case differs.
#include <cstdio>
#include <cstring>
#include <random>

#include "lee_dct.h"

using namespace dk;

#if defined(__AVX512F__)
using V = v16f;
#else
using V = v8f;
#endif
constexpr int kVectorLanes = sizeof(V) / sizeof(float);

int main() {
  std::mt19937 rng(20261201);
  std::normal_distribution<float> normal;
  const float* f = lee_factors();
  int cases = 0, differ = 0, nonzero = 0;
  for (int t = 0; t < 3000; ++t) {
    V x[64];
    const int kind = t % 5;
    for (int i = 0; i < 64; ++i)
      for (int l = 0; l < kVectorLanes; ++l) {
        float v = normal(rng);
        if (kind == 1) v = (rng() & 1) ? 0.0f : -0.0f;
        if (kind == 2) v *= 1e-38f;
        if (kind == 3) v *= 1e30f;
        if (kind == 4 && rng() % 3) v = 0.0f;
        x[i][l] = v;
      }
    for (int inverse = 0; inverse < 3; ++inverse) {  // 0: forward, 1: fused inverse, 2: unfused
      V plain[64], blocked[64];
      std::memcpy(plain, x, sizeof(x));
      auto in = [&](int i) { return x[i]; };
      auto out = [&](int i, V v) { blocked[i] = v; };
      if (inverse == 1) {
        LeeInverse<V, 64>::run(plain, f);
        LeeInverse64<V>::run(in, f, out);
      } else if (inverse == 2) {
        LeeInverse<V, 64, false>::run(plain, f);
        LeeInverse64<V, false>::run(in, f, out);
      } else {
        LeeForward<V, 64>::run(plain, f);
        LeeForward64<V>::run(in, f, out);
      }
      ++cases;
      if (std::memcmp(plain, blocked, sizeof(plain))) ++differ;
      for (int i = 0; i < 64; ++i)
        if (plain[i][0] != 0.0f) { ++nonzero; break; }
    }
  }
  std::printf("cases %d differ %d nonzero %d\n", cases, differ, nonzero);
  return differ ? 1 : 0;
}

// The Lee certified sign's bound (csrc/cpu/lee_sign_bound.cpp) against measured errors, for
// chunk sides 16, 32 and 64. For random T columns (normal, heavy-tailed, sparse, and signs of
// a row of the basis, which line every term up), it runs the decode's unfused LeeInverse in
// float32 as lee_sign.h does, the canonical fold (SPEC 4.3) in float32, and the exact sum e in
// long double. The bound, with its max|C_n| and factor 2 taken out, is F[i] * S (S = sum |T|),
// which must cover the fast error plus the fold's: it checks
//   1. |a1 y_lee - e| <= a1 F[i] S - gamma_cm max|C_m| S (the fast program's share), and
//   2. wherever |y_lee| > F[i] S, sign(y_lee) == sign(y) and y != 0.
// Prints "cases N certified C flips X worst W" (W: the largest ratio in 1, which must be <= 1)
// and exits 1 on any failure. Built and run by tests/test_lee_sign_bound.py.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "basis.h"
#include "lee_dct.h"

using namespace dk;

template <int N>
int check(std::mt19937& rng, long* cases, long* certified, long* flips, double* worst) {
  const int cn = 64;
  std::vector<float> bm(N * N), bn(cn * cn);
  canonical_basis(N, bm.data());
  canonical_basis(cn, bn.data());
  const std::vector<float> bound = lee_sign_bounds(N, cn, bm, bn);
  if (static_cast<int>(bound.size()) != N) return 1;
  double max_m = 0, max_n = 0;
  for (float c : bm) max_m = std::fmax(max_m, std::fabs(c));
  for (float c : bn) max_n = std::fmax(max_n, std::fabs(c));
  const double u = std::ldexp(1.0, -24), gamma_cm = N * u / (1 - N * u), a1 = std::sqrt(2.0 / N);
  std::normal_distribution<float> normal;
  std::cauchy_distribution<float> heavy;
  for (int t = 0; t < 20000; ++t) {
    float T[N];
    const int kind = t % 4;
    for (int r = 0; r < N; ++r) {
      float v = kind == 1 ? heavy(rng) : normal(rng);
      if (kind == 2 && rng() % 4) v = 0.0f;
      if (kind == 3) v = std::fabs(v) * (bm[r * N + (t / 4) % N] < 0 ? -1.0f : 1.0f);
      T[r] = v;
    }
    float x[N];
    for (int r = 0; r < N; ++r) x[r] = T[r];
    x[0] = x[0] * lee_row0_scale();
    LeeInverse<float, N, false>::run(x, lee_factors());
    double S = 0;
    for (int r = 0; r < N; ++r) S += std::fabs(static_cast<double>(T[r]));
    for (int i = 0; i < N; ++i) {
      float y = 0.0f;  // the canonical fold: ascending u, each product and add rounded
      long double e = 0;
      for (int r = 0; r < N; ++r) {
        const float product = bm[r * N + i] * T[r];
        y = y + product;
        e += static_cast<long double>(bm[r * N + i]) * T[r];
      }
      const double F = bound[i] / (2.0 * max_n);
      const double fast_share = a1 * F * S - gamma_cm * max_m * S;
      const double error = std::fabs(static_cast<double>(a1 * static_cast<long double>(x[i]) - e));
      if (fast_share > 0) *worst = std::fmax(*worst, error / fast_share);
      if (std::fabs(x[i]) > F * S) {
        ++*certified;
        if (y == 0.0f || (y < 0) != (x[i] < 0)) ++*flips;
      }
      ++*cases;
    }
  }
  return 0;
}

int main() {
  std::mt19937 rng(20261201);
  long cases = 0, certified = 0, flips = 0;
  double worst = 0;
  int bad = check<16>(rng, &cases, &certified, &flips, &worst);
  bad |= check<32>(rng, &cases, &certified, &flips, &worst);
  bad |= check<64>(rng, &cases, &certified, &flips, &worst);
  std::printf("cases %ld certified %ld flips %ld worst %.6f\n", cases, certified, flips, worst);
  return bad || flips || worst > 1.0 ? 1 : 0;
}

// The rounding-error bound of the decode's Lee certified sign (lee_sign.h states the argument).
//
// The unfused LeeInverse is a straight-line program of adds, subtracts and multiplies by
// float32 constants. Run here once per chunk side on a type that carries, for every node, its
// exact linear form in the inputs (coef), the same form with every constant and sign made
// positive (abs: the sum over paths of |product of constants|, Higham 3.5) and the most
// roundings on any path to it (depth). Float64 computes both forms to ~1e-16 of abs, far below
// the 2^-24-sized quantities they bound; the factor 2 in the bound covers that.
#include <algorithm>
#include <cmath>
#include <vector>

#include "basis.h"
#include "lee_dct.h"

namespace dk {
namespace {

struct Track {
  bool constant = true;  // V{} and V{} + f: a broadcast constant, no rounding
  double value = 0.0;
  int depth = 0;
  std::vector<double> coef, abs;

  static Track input(int n, int u) {
    Track t;
    t.constant = false;
    t.coef.assign(n, 0.0);
    t.abs.assign(n, 0.0);
    t.coef[u] = t.abs[u] = 1.0;
    return t;
  }
  Track operator+(float c) const {  // only ever V{} + f[...]
    Track t = *this;
    t.value += c;
    return t;
  }
  Track combine(const Track& o, double sign) const {  // one rounded add or subtract
    Track t = *this;
    for (size_t u = 0; u < coef.size(); ++u) {
      t.coef[u] += sign * o.coef[u];
      t.abs[u] += o.abs[u];
    }
    t.depth = std::max(depth, o.depth) + 1;
    return t;
  }
  Track operator+(const Track& o) const { return combine(o, 1.0); }
  Track operator-(const Track& o) const { return combine(o, -1.0); }
  Track operator*(const Track& o) const {  // one rounded multiply by a constant
    const Track& x = constant ? o : *this;
    const double c = constant ? value : o.value;
    Track t = x;
    for (size_t u = 0; u < t.coef.size(); ++u) {
      t.coef[u] *= c;
      t.abs[u] *= std::fabs(c);
    }
    t.depth = x.depth + 1;
    return t;
  }
};

template <int N>
std::vector<Track> lee_program(float row0_scale) {
  std::vector<Track> x(N);
  for (int u = 0; u < N; ++u) x[u] = Track::input(N, u);
  x[0] = x[0] * (Track{} + row0_scale);
  LeeInverse<Track, N, false>::run(x.data(), lee_factors());
  return x;
}

}  // namespace

float lee_row0_scale() { return static_cast<float>(std::sqrt(0.5)); }

std::vector<float> lee_sign_bounds(int cm, int cn, const std::vector<float>& bm,
                                   const std::vector<float>& bn) {
  if (!lee_side(cm)) return {};
  const std::vector<Track> y = cm == 16 ? lee_program<16>(lee_row0_scale())
                               : cm == 32 ? lee_program<32>(lee_row0_scale())
                                          : lee_program<64>(lee_row0_scale());
  const double u = std::ldexp(1.0, -24);
  auto gamma = [u](int n) { return n * u / (1.0 - n * u); };
  const double a1 = std::sqrt(2.0 / cm);  // y_lee * a1 approximates sum_u C_m[u][i] T[u]
  double max_m = 0.0, max_n = 0.0;
  for (float c : bm) max_m = std::max(max_m, std::fabs(static_cast<double>(c)));
  for (float c : bn) max_n = std::max(max_n, std::fabs(static_cast<double>(c)));
  std::vector<float> bounds(cm);
  for (int i = 0; i < cm; ++i) {
    double paths = 0.0, off = 0.0;  // max over u of abs, and of |a1 coef - C_m[u][i]|
    for (int v = 0; v < cm; ++v) {
      paths = std::max(paths, y[i].abs[v]);
      off = std::max(off, std::fabs(a1 * y[i].coef[v] - static_cast<double>(bm[v * cm + i])));
    }
    const double per_t = a1 * gamma(y[i].depth) * paths + off + gamma(cm) * max_m;
    bounds[i] = std::nextafter(static_cast<float>(2.0 * per_t / a1 * max_n), 1.0f);
  }
  return bounds;
}

}  // namespace dk

#include "basis.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

namespace dk {

void canonical_basis(int c, float* out) {
  // Same float64 operation order as the Python reference, then rint (ties to even) on the
  // 2^-24 grid: every value is exactly representable in float32.
  const double pi = 3.141592653589793;
  const double scale = 16777216.0;  // 2^24
  for (int u = 0; u < c; ++u) {
    const double a = u == 0 ? std::sqrt(1.0 / c) : std::sqrt(2.0 / c);
    for (int i = 0; i < c; ++i) {
      const double exact = a * std::cos(pi * (2.0 * i + 1.0) * u / (2.0 * c));
      // + 0.0 turns a cosine rounded to -0 into +0, so zeros have one canonical bit pattern.
      out[u * c + i] = static_cast<float>(std::nearbyint(exact * scale) / scale + 0.0);
    }
  }
}

// basis[u][c-1-i] == (-1)^u basis[u][i] exactly, for every row u and column i (c x c basis).
static bool mirror_exact(const std::vector<float>& basis, int c) {
  for (int u = 0; u < c; ++u)
    for (int i = 0; i < c; ++i) {
      const float value = basis[u * c + i], mirrored = basis[u * c + c - 1 - i];
      if (mirrored != (u % 2 ? -value : value)) return false;
    }
  return true;
}

double gamma_of(int n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1.0 - n * u);
}

double max_abs(const std::vector<float>& basis) {
  double m = 0.0;
  for (float c : basis) m = std::max(m, std::fabs(static_cast<double>(c)));
  return m;
}

// C_m's even/odd levels and the certified-sign bound (sign_fold.h states the argument).
void ChunkBases::plan_certified_sign(const std::vector<float>& bm, const std::vector<float>& bn) {
  auto part = [&](int outputs, int first, int step) {
    SignPart p;
    p.outputs = outputs;
    p.ld = (outputs + 7) / 8 * 8;
    p.first = first;
    p.step = step;
    p.n = (cm - first + step - 1) / step;
    p.basis.assign(static_cast<size_t>(p.n) * p.ld, 0.f);
    for (int r = 0; r < p.n; ++r)
      for (int i = 0; i < outputs; ++i) p.basis[r * p.ld + i] = bm[(first + r * step) * cm + i];
    return p;
  };
  int n = cm, step = 1;  // level l: rows u = 0 mod step (step = 2^l), outputs i < n
  for (; n % 2 == 0; n /= 2, step *= 2) {
    bool exact = true;
    for (int u = 0; u < cm; u += step)
      for (int i = 0; i < n / 2; ++i) {
        const float value = bm[u * cm + i], mirrored = bm[u * cm + n - 1 - i];
        if (mirrored != ((u / step) % 2 ? -value : value)) exact = false;
      }
    if (!exact) break;
    sign_odd.push_back(part(n / 2, step, 2 * step));
  }
  sign_leaf = part(n, 0, step);
  sign_part_of.assign(cm, 0);
  sign_slot.assign(cm, 0);
  const int levels = static_cast<int>(sign_odd.size());
  for (int p = 0; p <= levels; ++p) {
    const SignPart& part = p < levels ? sign_odd[p] : sign_leaf;
    for (int r = 0; r < part.n; ++r) {
      sign_part_of[part.first + r * part.step] = p;
      sign_slot[part.first + r * part.step] = r;
    }
  }
  // Each term of the fast sum passes one rounded product, at most (rows - 1) adds in its dot
  // product and one add per level; the exact fold, at most cm roundings. Twice their sum of
  // gammas, times max |C_m| * max |C_n| (sign_fold.h), covers both errors with room for the
  // (1 + gamma) factors and the rounding of the bound itself.
  int dot = sign_leaf.n;
  for (const SignPart& p : sign_odd) dot = std::max(dot, p.n);
  const double bound = 2.0 * (gamma_of(dot + static_cast<int>(sign_odd.size()) + 1) + gamma_of(cm)) *
                       max_abs(bm) * max_abs(bn);
  sign_bound = std::nextafter(static_cast<float>(bound), 1.0f);
}

ChunkBases::ChunkBases(int cm_, int cn_) : cm(cm_), cn(cn_) {
  ldm = (cm + 7) / 8 * 8;
  ldn = (cn + 7) / 8 * 8;
  std::vector<float> bm(static_cast<size_t>(cm) * cm), bn(static_cast<size_t>(cn) * cn);
  canonical_basis(cm, bm.data());
  canonical_basis(cn, bn.data());
  cm_rows.assign(static_cast<size_t>(cm) * ldm, 0.f);
  cm_cols.assign(static_cast<size_t>(cm) * ldm, 0.f);
  cn_rows.assign(static_cast<size_t>(cn) * ldn, 0.f);
  cn_cols.assign(static_cast<size_t>(cn) * ldn, 0.f);
  for (int u = 0; u < cm; ++u)
    for (int i = 0; i < cm; ++i) {
      cm_rows[u * ldm + i] = bm[u * cm + i];
      cm_cols[i * ldm + u] = bm[u * cm + i];
    }
  for (int v = 0; v < cn; ++v)
    for (int j = 0; j < cn; ++j) {
      cn_rows[v * ldn + j] = bn[v * cn + j];
      cn_cols[j * ldn + v] = bn[v * cn + j];
    }
  cm_mirror = mirror_exact(bm, cm);
  cn_mirror = mirror_exact(bn, cn);
  plan_certified_sign(bm, bn);
  lee_sign_bound = lee_sign_bounds(cm, cn, bm, bn);
  lee_row0 = lee_row0_scale();
  split_n = cn % 16 == 0;
  split_m = cm % 2 == 0 && cm > 1;
  if (split_n) {
    hn = cn / 2;
    cn_even_cols.assign(static_cast<size_t>(hn) * hn, 0.f);
    cn_odd_cols.assign(static_cast<size_t>(hn) * hn, 0.f);
    for (int j = 0; j < hn; ++j)
      for (int w = 0; w < hn; ++w) {
        cn_even_cols[j * hn + w] = bn[(2 * w) * cn + j];
        cn_odd_cols[j * hn + w] = bn[(2 * w + 1) * cn + j];
      }
  }
  if (split_m) {
    hm = cm / 2;
    cm_even_rows.assign(static_cast<size_t>(hm) * hm, 0.f);
    cm_odd_rows.assign(static_cast<size_t>(hm) * hm, 0.f);
    for (int w = 0; w < hm; ++w)
      for (int i = 0; i < hm; ++i) {
        cm_even_rows[w * hm + i] = bm[(2 * w) * cm + i];
        cm_odd_rows[w * hm + i] = bm[(2 * w + 1) * cm + i];
      }
  }
}

const ChunkBases& chunk_bases(int cm, int cn) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, std::unique_ptr<ChunkBases>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{cm, cn}];
  if (!slot) slot.reset(new ChunkBases(cm, cn));
  return *slot;
}

}  // namespace dk

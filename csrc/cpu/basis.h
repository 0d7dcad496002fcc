// The canonical DCT-II basis (SPEC section 2) and the padded layouts the kernels read it in.
#pragma once

#include <cstdint>
#include <vector>

namespace dk {

// C[u * c + i], float64 cosines rounded to a multiple of 2^-24 (ties to even), as float32.
void canonical_basis(int c, float* out);

// One chunk geometry's bases, rows padded to a multiple of 8 floats (zero-filled).
struct ChunkBases {
  int cm = 0, cn = 0;
  int ldm = 0, ldn = 0;          // padded row lengths for cm- and cn-wide rows
  std::vector<float> cm_rows;    // C_m[u][i]   (cm x ldm)
  std::vector<float> cm_cols;    // C_m[u][i] at [i][u] (cm x ldm): C_m transposed
  std::vector<float> cn_rows;    // C_n[v][j]   (cn x ldn)
  std::vector<float> cn_cols;    // C_n[v][j] at [j][v] (cn x ldn): C_n transposed

  // Even/odd halves for the encoder's fast path. C[u][c-1-i] = (-1)^u C[u][i], so a DCT of
  // even size is two half-size products: even u on (x[i] + x[c-1-i]), odd u on the difference.
  // split_n needs cn % 16 == 0 (each half a whole number of 8-float vectors); split_m, even cm.
  bool split_n = false, split_m = false;
  // C_m[u][cm-1-i] == (-1)^u C_m[u][i] exactly (as float32 values) for every u, i: the
  // decode's mirrored second stage (exact_fold.h) relies on it, so it is checked, not assumed.
  bool cm_mirror = false;
  bool cn_mirror = false;  // the same for C_n (the first stage's mirrored fold)
  int hn = 0, hm = 0;
  std::vector<float> cn_even_cols, cn_odd_cols;  // [j][v'] = C_n[2v'][j], C_n[2v'+1][j] (hn x hn)
  std::vector<float> cm_even_rows, cm_odd_rows;  // [u'][i] = C_m[2u'][i], C_m[2u'+1][i] (hm x hm)

  // C_m's even/odd recursion for the decode's certified sign (sign_fold.h). Level l covers
  // the rows u = 0 mod 2^l and the outputs i < cm >> l: about the middle of those outputs,
  // its rows u = 2^l mod 2^(l+1) are odd and the others even, exactly in float32 (checked
  // per level; the recursion stops at the first odd size or failed check).
  struct SignPart {
    int outputs = 0;            // i < outputs
    int ld = 0;                 // outputs padded to a multiple of 8
    int first = 0, step = 1, n = 0;  // its rows u = first + r * step, r < n
    std::vector<float> basis;   // basis[r * ld + i] = C_m[first + r * step][i]
  };
  std::vector<SignPart> sign_odd;  // level l's odd rows over i < (cm >> l) / 2, level 0 first
  SignPart sign_leaf;              // the rows u = 0 mod 2^L over i < cm >> L (L = levels)
  std::vector<int> sign_part_of;   // row u's part: its level, or L for the leaf
  std::vector<int> sign_slot;      // row u's index r in its part
  // sign(y_fast) is sign(y) wherever |y_fast| > sign_bound * sum |A| (sign_fold.h).
  float sign_bound = 0.0f;
  // The Lee certified sign (lee_sign.h), for cm = 16, 32, 64 (empty otherwise): sign(y_lee[i])
  // is sign(y[i]) wherever |y_lee[i]| > lee_sign_bound[i] * sum |A|; its input row 0 is scaled
  // by lee_row0.
  std::vector<float> lee_sign_bound;
  float lee_row0 = 0.0f;
  ChunkBases(int cm_, int cn_);

 private:
  void plan_certified_sign(const std::vector<float>& bm, const std::vector<float>& bn);
};

// gamma_n of the standard rounding-error model (Higham 3.1): n roundings of unit 2^-24.
double gamma_of(int n);
// The largest |entry| of a basis, in float64.
double max_abs(const std::vector<float>& basis);

// lee_sign_bound for a chunk (lee_sign_bound.cpp; empty unless cm is 16, 32 or 64), from the
// canonical bases bm (cm x cm) and bn (cn x cn); and the factor of row 0 it assumes.
std::vector<float> lee_sign_bounds(int cm, int cn, const std::vector<float>& bm, const std::vector<float>& bn);
float lee_row0_scale();

// The bases for a (cm, cn) chunk, built on first use and kept for the process (thread-safe).
// Building one costs ~2 * c^2 float64 cosines, which a per-call build paid on every small tensor.
const ChunkBases& chunk_bases(int cm, int cn);

}  // namespace dk

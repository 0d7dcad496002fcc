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
  ChunkBases(int cm_, int cn_);
};

}  // namespace dk

// Encode kernels (SPEC sections 2-3): forward DCT, per-chunk top-k and the fused DeMo step.
// Each chunk is loaded once into padded scratch, transformed with two small products against
// the canonical basis, selected, corrected and stored while it is still in L1.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "basis.h"
#include "gemm.h"
#include "geometry.h"
#include "kernels.h"
#include "scratch.h"
#include "select.h"

namespace dk {
namespace DK_ARCH {
namespace {

struct Scratch {
  AlignedBuffer<float> block, partial, coeffs, sent_rows, weights;
  std::vector<int32_t> picked;
  std::vector<int> sent_row_ids;
  TopKSelector selector;
  explicit Scratch(int max_c, int k)
      : block(max_c * max_c + 8 * max_c), partial(max_c * max_c + 8 * max_c),
        coeffs(max_c * max_c + 8 * max_c), sent_rows(max_c * max_c + 8 * max_c),
        weights(max_c * max_c + 8 * max_c), picked(std::max(k, 1)), sent_row_ids(max_c) {
    selector.reserve(std::max(k, 1));
  }
};

// coeffs = C_m @ block @ C_n^T over padded rows (ldn floats).
void forward(const ChunkBases& b, const float* block, float* partial, float* coeffs) {
  gemm_fma<false>(block, b.ldn, b.cn_cols.data(), b.ldn, partial, b.ldn, b.cm, b.cn, b.ldn);
  gemm_fma<false>(b.cm_rows.data(), b.ldm, partial, b.ldn, coeffs, b.ldn, b.cm, b.cm, b.ldn);
}

void load_block(const void* x, int32_t dtype, const ChunkSite& site, const ChunkBases& b,
                float* block) {
  for (int i = 0; i < b.cm; ++i) load_row(x, dtype, site.offset + i * site.stride, b.cn, block + i * b.ldn);
}

// block -= C_m^T @ S @ C_n, S holding `k` picked coefficients (error feedback, SPEC 3).
void subtract_sent(const ChunkBases& b, const int32_t* picked, const float* picked_values, int k,
                   Scratch& s, float* block) {
  float* rows = s.sent_rows.data();
  int n_rows = 0;
  for (int t = 0; t < k;) {  // picked is ascending: coefficients of one row u are adjacent
    const int u = picked[t] / b.cn;
    float* row = rows + n_rows * b.ldn;
    std::memset(row, 0, sizeof(float) * b.ldn);
    for (; t < k && picked[t] / b.cn == u; ++t) {
      const v8f value = vsplat(picked_values[t]);
      const float* basis_row = b.cn_rows.data() + (picked[t] % b.cn) * b.ldn;
      for (int q = 0; q < b.ldn; q += kLanes) vstore(row + q, vfma(value, vload(basis_row + q), vload(row + q)));
    }
    s.sent_row_ids[n_rows++] = u;
  }
  float* weights = s.weights.data();  // weights[i][r] = -C_m[u_r][i]
  for (int i = 0; i < b.cm; ++i)
    for (int r = 0; r < n_rows; ++r) weights[i * n_rows + r] = -b.cm_rows[s.sent_row_ids[r] * b.ldm + i];
  gemm_fma<true>(weights, n_rows, rows, b.ldn, block, b.ldn, b.cm, n_rows, b.ldn);
}

using BasesMap = std::map<std::pair<int, int>, std::unique_ptr<ChunkBases>>;

const ChunkBases& bases_for(BasesMap& cache, const dk_geometry& g) {
  auto& slot = cache[{g.cm, g.cn}];
  if (!slot) slot.reset(new ChunkBases(g.cm, g.cn));
  return *slot;
}

// Runs body(scratch, chunk) over every chunk in parallel; returns DK_ERR_ALLOC on failure.
template <typename Body>
int for_each_chunk(int64_t total, int max_c, int k, int threads, Body body) {
  int status = DK_OK;
#pragma omp parallel num_threads(threads)
  {
    std::unique_ptr<Scratch> scratch;
    try {
      scratch.reset(new Scratch(max_c, k));
    } catch (const std::bad_alloc&) {
#pragma omp atomic write
      status = DK_ERR_ALLOC;
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < total; ++c)
      if (scratch) body(*scratch, c);
  }
  return status;
}

}  // namespace

int dct(const void* x, int32_t dtype, const dk_geometry& g, float* coeffs, int threads) {
  const ChunkBases b(g.cm, g.cn);
  const int E = g.cm * g.cn;
  return for_each_chunk(n_chunks(g), std::max(g.cm, g.cn), 1, threads, [&](Scratch& s, int64_t c) {
    load_block(x, dtype, chunk_site(g, c), b, s.block.data());
    forward(b, s.block.data(), s.partial.data(), s.coeffs.data());
    for (int u = 0; u < g.cm; ++u)
      std::memcpy(coeffs + c * E + u * g.cn, s.coeffs.data() + u * b.ldn, sizeof(float) * g.cn);
  });
}

int compress(const void* x, int32_t dtype, const dk_geometry& g, int k_eff, int32_t* indices,
             float* values, int threads) {
  const ChunkBases b(g.cm, g.cn);
  return for_each_chunk(n_chunks(g), std::max(g.cm, g.cn), k_eff, threads, [&](Scratch& s, int64_t c) {
    load_block(x, dtype, chunk_site(g, c), b, s.block.data());
    forward(b, s.block.data(), s.partial.data(), s.coeffs.data());
    int32_t* out_index = indices + c * k_eff;
    s.selector.select(s.coeffs.data(), b.ldn, g.cm, g.cn, k_eff, out_index);
    for (int t = 0; t < k_eff; ++t)
      values[c * k_eff + t] = s.coeffs[(out_index[t] / g.cn) * b.ldn + out_index[t] % g.cn];
  });
}

int demo_step(int n_tensors, float* const* deltas, const void* const* grads,
              const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr, int k,
              int32_t* indices, float* values, int threads) {
  BasesMap cache;
  std::vector<const ChunkBases*> bases(n_tensors);
  std::vector<int64_t> first_chunk(n_tensors + 1, 0), first_out(n_tensors + 1, 0);
  std::vector<int> k_eff(n_tensors);
  int max_c = 1, max_k = 1;
  for (int t = 0; t < n_tensors; ++t) {
    const dk_geometry& g = geoms[t];
    bases[t] = &bases_for(cache, g);
    k_eff[t] = std::min(k, g.cm * g.cn);
    first_chunk[t + 1] = first_chunk[t] + n_chunks(g);
    first_out[t + 1] = first_out[t] + n_chunks(g) * k_eff[t];
    max_c = std::max({max_c, g.cm, g.cn});
    max_k = std::max(max_k, k_eff[t]);
  }
  return for_each_chunk(first_chunk[n_tensors], max_c, max_k, threads, [&](Scratch& s, int64_t global) {
    const int t = static_cast<int>(std::upper_bound(first_chunk.begin(), first_chunk.end(), global) -
                                   first_chunk.begin()) - 1;
    const int64_t c = global - first_chunk[t];
    const dk_geometry& g = geoms[t];
    const ChunkBases& b = *bases[t];
    const ChunkSite site = chunk_site(g, c);
    float* state = deltas[t];
    float* block = s.block.data();
    // delta = beta * delta + lr * grad
    load_block(grads[t], grad_dtypes[t], site, b, s.partial.data());
    for (int i = 0; i < g.cm; ++i) {
      const float* old_row = state + site.offset + i * site.stride;
      const float* grad_row = s.partial.data() + i * b.ldn;
      float* row = block + i * b.ldn;
      for (int j = 0; j < g.cn; ++j) row[j] = beta * old_row[j] + lr * grad_row[j];
    }
    forward(b, block, s.partial.data(), s.coeffs.data());
    const int kk = k_eff[t];
    int32_t* out_index = indices + first_out[t] + c * kk;
    float* out_value = values + first_out[t] + c * kk;
    s.selector.select(s.coeffs.data(), b.ldn, g.cm, g.cn, kk, out_index);
    for (int q = 0; q < kk; ++q)
      out_value[q] = s.coeffs[(out_index[q] / g.cn) * b.ldn + out_index[q] % g.cn];
    subtract_sent(b, out_index, out_value, kk, s, block);
    for (int i = 0; i < g.cm; ++i)
      std::memcpy(state + site.offset + i * site.stride, block + i * b.ldn, sizeof(float) * g.cn);
  });
}

}  // namespace DK_ARCH
}  // namespace dk

// Decode kernels (SPEC section 4), bit-exact: float32 aggregation of the peers in list order,
// then the canonical inverse DCT with separately rounded multiplies and adds in ascending
// order. Terms whose multiplicand is zero are skipped (SPEC 4.3: from +0 this changes no bit),
// which makes the first fold cost O(kept coefficients) instead of O(E * c).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <vector>

#include "basis.h"
#include "gemm.h"
#include "geometry.h"
#include "kernels.h"
#include "parallel.h"
#include "scratch.h"

namespace dk {
namespace DK_ARCH {
namespace {

constexpr float kFlushBelow = 2.7755575615628914e-17f;  // 2^-55

struct Scratch {
  AlignedBuffer<float> agg;       // A (cm x ldn), all +0 between chunks
  AlignedBuffer<int32_t> count;   // n[j] per padded position, all 0 between chunks
  AlignedBuffer<float> partial;   // T (cm x ldn)
  AlignedBuffer<float> out_rows;  // y (cm x ldn)
  std::vector<int32_t> touched;   // padded positions written this chunk
  std::vector<int> row_terms, rows;
  Scratch(int cm, int ldn, int max_touched)
      : agg(cm * ldn), count(cm * ldn), partial(cm * ldn), out_rows(cm * ldn),
        touched(max_touched), row_terms(ldn), rows(cm) {}
};

constexpr int kRangeBad = 1, kOrderBad = 2, kValueBad = 4;

// SPEC 5's per-chunk rules on one peer's k indices (and values, unless sign-coded).
int check_chunk(const int32_t* row, const float* values, int k, int E) {
  int flags = 0;
  int32_t previous = -1;
  for (int t = 0; t < k; ++t) {
    if (row[t] < 0 || row[t] >= E) flags |= kRangeBad;
    if (row[t] <= previous) flags |= kOrderBad;
    previous = row[t];
  }
  if (values)
    for (int t = 0; t < k; ++t)
      if (!(std::fabs(values[t]) < 18446744073709551616.0f)) flags |= kValueBad;  // 2^64; NaN too
  return flags;
}

inline float canonical_value(float v) { return std::fabs(v) < kFlushBelow ? 0.0f : v; }

// Canonical inverse of the aggregate in s.agg (cleared on return); writes y into s.out_rows.
// Returns false when the chunk is all zero (then s.out_rows is not written).
bool canonical_inverse(const ChunkBases& b, Scratch& s) {
  int n_rows = 0;
  for (int u = 0; u < b.cm; ++u) {
    float* a_row = s.agg.data() + u * b.ldn;
    int n_terms = 0;
    for (int v = 0; v < b.cn; ++v)
      if (a_row[v] != 0.0f) s.row_terms[n_terms++] = v;
    if (!n_terms) continue;
    // T[u, :] = fold over v ascending of A[u, v] * C_n[v, :]
    fold_exact(a_row, 0, b.cn_rows.data(), b.ldn, s.partial.data() + u * b.ldn, b.ldn, 1,
               s.row_terms.data(), n_terms, b.ldn);
    std::memset(a_row, 0, sizeof(float) * b.ldn);
    s.rows[n_rows++] = u;
  }
  if (!n_rows) return false;
  // y[i, :] = fold over u ascending of C_m[u, i] * T[u, :]
  fold_exact(b.cm_cols.data(), b.ldm, s.partial.data(), b.ldn, s.out_rows.data(), b.ldn, b.cm,
             s.rows.data(), n_rows, b.ldn);
  return true;
}

void store_chunk(const ChunkBases& b, const ChunkSite& site, bool nonzero, bool apply_sign,
                 const float* rows, float* out) {
  for (int i = 0; i < b.cm; ++i) {
    float* dst = out + site.offset + i * site.stride;
    if (!nonzero) {
      std::memset(dst, 0, sizeof(float) * b.cn);
    } else if (apply_sign) {
      const float* src = rows + i * b.ldn;
      for (int j = 0; j < b.cn; ++j) dst[j] = src[j] > 0.0f ? 1.0f : (src[j] < 0.0f ? -1.0f : 0.0f);
    } else {
      std::memcpy(dst, rows + i * b.ldn, sizeof(float) * b.cn);
    }
  }
}

// This file's scratch type, through the shared driver (parallel.h).
template <typename Body>
int for_each_chunk(int64_t total, int cm, int ldn, int max_touched, int threads, Body body) {
  return dk::for_each_chunk(total, static_cast<int64_t>(cm) * ldn, threads, [&] { return std::unique_ptr<Scratch>(new Scratch(cm, ldn, max_touched)); }, body);
}

}  // namespace

int idct(const float* coeffs, const dk_geometry& g, float* x, int threads) {
  const ChunkBases& b = chunk_bases(g.cm, g.cn);
  const int E = g.cm * g.cn;
  return for_each_chunk(n_chunks(g), g.cm, b.ldn, 1, threads, [&](Scratch& s, int64_t c) {
    for (int u = 0; u < g.cm; ++u)
      for (int v = 0; v < g.cn; ++v) s.agg[u * b.ldn + v] = coeffs[c * E + u * g.cn + v];
    const bool nonzero = canonical_inverse(b, s);
    store_chunk(b, chunk_site(g, c), nonzero, false, s.out_rows.data(), x);
  });
}

int decompress(int n_tensors, int n_peers, const int32_t* const* indices,
               const void* const* values, int value_codec, const dk_geometry* geoms,
               const int32_t* k_effs, int reduce, int apply_sign, float* const* outs,
               int threads, int32_t* bad_tensor, int32_t* bad_peer) {
  // Per-tensor tables: bases (process-wide cache) and the e -> padded-position map.
  std::map<std::pair<int, int>, std::vector<int32_t>> position_cache;
  std::vector<const ChunkBases*> bases(n_tensors);
  std::vector<const int32_t*> positions(n_tensors);
  std::vector<int64_t> first_chunk(n_tensors + 1, 0);
  int max_cm = 1, max_ldn = 8, max_k = 1;
  for (int t = 0; t < n_tensors; ++t) {
    const dk_geometry& g = geoms[t];
    bases[t] = &chunk_bases(g.cm, g.cn);
    auto& table = position_cache[{g.cm, g.cn}];
    if (table.empty()) {
      table.resize(g.cm * g.cn);
      for (int e = 0; e < g.cm * g.cn; ++e) table[e] = (e / g.cn) * bases[t]->ldn + e % g.cn;
    }
    positions[t] = table.data();
    first_chunk[t + 1] = first_chunk[t] + n_chunks(g);
    max_cm = std::max(max_cm, g.cm);
    max_ldn = std::max(max_ldn, bases[t]->ldn);
    max_k = std::max(max_k, k_effs[t]);
  }
  const float peers = static_cast<float>(n_peers);
  const bool sign_codec = value_codec == DK_VALUES_SIGN;
  // Validation runs chunk by chunk in the same parallel pass: a chunk with a bad peer is not
  // aggregated (no out-of-range write), the (tensor, peer) is flagged, and the call fails after.
  std::vector<int> flags(static_cast<size_t>(n_tensors) * n_peers, 0);
  int status = for_each_chunk(first_chunk[n_tensors], max_cm, max_ldn, n_peers * max_k, threads,
                              [&](Scratch& s, int64_t global) {
    const int t = static_cast<int>(std::upper_bound(first_chunk.begin(), first_chunk.end(), global) -
                                   first_chunk.begin()) - 1;
    const int64_t c = global - first_chunk[t];
    const dk_geometry& g = geoms[t];
    const ChunkBases& b = *bases[t];
    const int k_eff = k_effs[t], E = g.cm * g.cn;
    const int64_t first = c * k_eff;
    const int32_t* const* peer_indices = indices + static_cast<int64_t>(t) * n_peers;
    const void* const* peer_values = values + static_cast<int64_t>(t) * n_peers;
    bool chunk_ok = true;
    for (int p = 0; p < n_peers; ++p) {
      const float* f32 = sign_codec ? nullptr : static_cast<const float*>(peer_values[p]) + first;
      const int bad = check_chunk(peer_indices[p] + first, f32, k_eff, E);
      if (bad) {
        dk::atomic_or(flags[static_cast<size_t>(t) * n_peers + p], bad);
        chunk_ok = false;
      }
    }
    if (!chunk_ok) return;
    int n_touched = 0;
    for (int p = 0; p < n_peers; ++p) {  // ascending peer order: S[j] += v, n[j] += 1
      const int32_t* row = peer_indices[p] + first;
      for (int q = 0; q < k_eff; ++q) {
        const int32_t pos = positions[t][row[q]];
        float value;
        if (sign_codec) {
          const int64_t bit = first + q;
          const uint8_t byte = static_cast<const uint8_t*>(peer_values[p])[bit >> 3];
          value = (byte >> (bit & 7)) & 1 ? -1.0f : 1.0f;
        } else {
          value = canonical_value(static_cast<const float*>(peer_values[p])[first + q]);
        }
        if (s.count[pos]++ == 0) s.touched[n_touched++] = pos;
        s.agg[pos] = s.agg[pos] + value;
      }
    }
    for (int q = 0; q < n_touched; ++q) {  // A[j] = S[j] / n[j]  (or / P), then flush
      const int32_t pos = s.touched[q];
      const float divisor = reduce == DK_REDUCE_MEAN ? static_cast<float>(s.count[pos]) : peers;
      const float mean = s.agg[pos] / divisor;
      s.agg[pos] = std::fabs(mean) < kFlushBelow ? 0.0f : mean;
      s.count[pos] = 0;
    }
    const bool nonzero = canonical_inverse(b, s);
    store_chunk(b, chunk_site(g, c), nonzero, apply_sign != 0, s.out_rows.data(), outs[t]);
  });
  for (size_t f = 0; f < flags.size() && status == DK_OK; ++f) {
    if (!flags[f]) continue;  // the lowest tensor, then the lowest peer, is reported
    *bad_tensor = static_cast<int32_t>(f / n_peers);
    *bad_peer = static_cast<int32_t>(f % n_peers);
    status = flags[f] & kRangeBad ? DK_ERR_INDEX_RANGE : flags[f] & kOrderBad ? DK_ERR_INDEX_ORDER : DK_ERR_VALUE;
  }
  return status;
}

}  // namespace DK_ARCH
}  // namespace dk

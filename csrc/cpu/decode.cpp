// Decode kernels (SPEC section 4), bit-exact: float32 aggregation of the peers in list order,
// then the canonical inverse DCT with separately rounded multiplies and adds in ascending
// order (exact_fold.h). Terms whose multiplicand is zero are skipped (SPEC 4.3: from +0 this
// changes no bit): the first stage folds only the picked coefficients, the second only the rows
// that have one. The second stage writes each output vector once, straight to the tensor.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <vector>

#include "basis.h"
#include "exact_fold.h"
#include "geometry.h"
#include "kernels.h"
#include "parallel.h"
#include "scratch.h"

namespace dk {
namespace DK_ARCH {
namespace {

constexpr float kFlushBelow = 2.7755575615628914e-17f;  // 2^-55

struct Scratch {
  int words;                      // 64-bit mark words per coefficient row
  AlignedBuffer<float> agg;       // A (cm x ldn), all +0 between chunks
  AlignedBuffer<int32_t> count;   // n[j] per padded position, all 0 between chunks
  AlignedBuffer<float> partial;   // T (cm x ldn): its nonzero rows, compacted
  AlignedBuffer<float> basis;     // the rows of C_m that match them (cm x ldm)
  AlignedBuffer<uint64_t> marks;  // bit v of row u: A[u, v] is a term; all 0 between chunks
  std::vector<int32_t> touched;   // padded positions written this chunk
  std::vector<int> rows;          // rows u of T with a term, ascending
  Scratch(int cm, int ldn, int max_touched)
      : words((ldn + 63) / 64), agg(cm * ldn), count(cm * ldn), partial(cm * ldn),
        basis(cm * ((cm + 7) / 8 * 8)), marks(cm * words), touched(max_touched), rows(cm) {}
  void mark(int u, int v) { marks[u * words + (v >> 6)] |= uint64_t{1} << (v & 63); }
  void unmark(int u, int v) { marks[u * words + (v >> 6)] &= ~(uint64_t{1} << (v & 63)); }
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

// The first stage on the marked terms of s.agg: T[u, :] = fold over v ascending of
// A[u, v] * C_n[v, :] for each row u with a mark, stored compacted (row n for the n-th such u,
// listed in s.rows). Clears A and the marks. Returns how many rows have one.
int first_stage(const ChunkBases& b, Scratch& s) {
  int n_rows = 0;
  for (int u = 0; u < b.cm; ++u) {
    uint64_t* mark = s.marks.data() + u * s.words;
    uint64_t any = 0;
    for (int w = 0; w < s.words; ++w) any |= mark[w];
    if (!any) continue;
    float* a_row = s.agg.data() + u * b.ldn;
    fold_marked(a_row, mark, s.words, b.cn_rows.data(), b.ldn, s.partial.data() + n_rows * b.ldn, b.ldn);
    for (int w = 0; w < s.words; ++w) mark[w] = 0;
    std::memset(a_row, 0, sizeof(float) * b.ldn);
    s.rows[n_rows++] = u;
  }
  return n_rows;
}

// Where the second stage's vectors go: row i, columns j.. of the chunk in the output tensor,
// as sign(y) or y; lanes past the chunk's cn are dropped.
struct OutputSink {
  float* base;     // the chunk's (0, 0)
  int64_t stride;  // floats between rows
  int cn;
  bool apply_sign, streaming;
  template <class V>
  inline __attribute__((always_inline)) void operator()(int i, int j, V y) {
    constexpr int L = sizeof(V) / sizeof(float);
    if (apply_sign) y = sign_of(y);
    float* dst = base + i * stride + j;
    if (j + L <= cn) {
      if (!(streaming && stream_store(dst, y))) exact_store(dst, y);
    } else if (j < cn) {
      float lanes[L];
      exact_store(lanes, y);
      std::memcpy(dst, lanes, sizeof(float) * (cn - j));
    }
  }
};

// The canonical inverse of the aggregate in s.agg (SPEC 4.3), written to the output.
void inverse_to(const ChunkBases& b, Scratch& s, OutputSink sink) {
  const int n_rows = first_stage(b, s);
  const float* basis = b.cm_rows.data();
  if (n_rows < b.cm) {  // the C_m rows of the compacted T rows
    for (int r = 0; r < n_rows; ++r)
      std::memcpy(s.basis.data() + r * b.ldm, basis + s.rows[r] * b.ldm, sizeof(float) * b.ldm);
    basis = s.basis.data();
  }
  fold_columns(basis, b.ldm, b.cm, s.partial.data(), b.ldn, b.ldn, n_rows, sink);
  if (sink.streaming) stream_fence();
}

OutputSink sink_for(const ChunkBases& b, const ChunkSite& site, float* out, bool apply_sign,
                    bool streaming) {
  return OutputSink{out + site.offset, site.stride, b.cn, apply_sign, streaming};
}

// Streaming stores pay when the output is far larger than the caches (it would be evicted
// before anyone reads it); smaller outputs stay cached for the caller.
constexpr int64_t kStreamingBytes = int64_t{32} << 20;

// This file's scratch type, through the shared driver (parallel.h).
template <typename Body>
int for_each_chunk(int64_t total, int cm, int ldn, int max_touched, int threads, Body body) {
  return dk::for_each_chunk(total, static_cast<int64_t>(cm) * ldn, threads, [&] { return std::unique_ptr<Scratch>(new Scratch(cm, ldn, max_touched)); }, body);
}

}  // namespace

int idct(const float* coeffs, const dk_geometry& g, float* x, int threads) {
  const ChunkBases& b = chunk_bases(g.cm, g.cn);
  const int E = g.cm * g.cn;
  const bool streaming = n_chunks(g) * E * 4 >= kStreamingBytes;
  return for_each_chunk(n_chunks(g), g.cm, b.ldn, 1, threads, [&](Scratch& s, int64_t c) {
    for (int u = 0; u < g.cm; ++u)
      for (int v = 0; v < g.cn; ++v) {
        const float a = coeffs[c * E + u * g.cn + v];
        if (a == 0.0f) continue;  // a zero term changes no bit (SPEC 4.3)
        s.agg[u * b.ldn + v] = a;
        s.mark(u, v);
      }
    inverse_to(b, s, sink_for(b, chunk_site(g, c), x, false, streaming));
  });
}

int decompress(int n_tensors, int n_peers, const int32_t* const* indices,
               const void* const* values, int value_codec, const dk_geometry* geoms,
               const int32_t* k_effs, int reduce, int apply_sign, float* const* outs,
               int threads, int32_t* bad_tensor, int32_t* bad_peer) {
  // Per-tensor tables: bases (process-wide cache) and the e -> (u << 16 | v) map.
  std::map<std::pair<int, int>, std::vector<int32_t>> position_cache;
  std::vector<const ChunkBases*> bases(n_tensors);
  std::vector<const int32_t*> positions(n_tensors);
  int64_t out_bytes = 0;
  std::vector<int64_t> first_chunk(n_tensors + 1, 0);
  int max_cm = 1, max_ldn = 8, max_k = 1;
  for (int t = 0; t < n_tensors; ++t) {
    const dk_geometry& g = geoms[t];
    bases[t] = &chunk_bases(g.cm, g.cn);
    auto& table = position_cache[{g.cm, g.cn}];
    if (table.empty()) {
      table.resize(g.cm * g.cn);
      for (int e = 0; e < g.cm * g.cn; ++e) table[e] = (e / g.cn) << 16 | e % g.cn;
    }
    positions[t] = table.data();
    first_chunk[t + 1] = first_chunk[t] + n_chunks(g);
    max_cm = std::max(max_cm, g.cm);
    max_ldn = std::max(max_ldn, bases[t]->ldn);
    max_k = std::max(max_k, k_effs[t]);
    out_bytes += n_chunks(g) * g.cm * g.cn * 4;
  }
  const bool streaming = out_bytes >= kStreamingBytes;
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
#pragma omp atomic
        flags[static_cast<size_t>(t) * n_peers + p] |= bad;
        chunk_ok = false;
      }
    }
    if (!chunk_ok) return;
    int n_touched = 0;
    for (int p = 0; p < n_peers; ++p) {  // ascending peer order: S[j] += v, n[j] += 1
      const int32_t* row = peer_indices[p] + first;
      for (int q = 0; q < k_eff; ++q) {
        const int32_t uv = positions[t][row[q]];
        const int u = uv >> 16, v = uv & 0xffff;
        const int32_t pos = u * b.ldn + v;
        float value;
        if (sign_codec) {
          const int64_t bit = first + q;
          const uint8_t byte = static_cast<const uint8_t*>(peer_values[p])[bit >> 3];
          value = (byte >> (bit & 7)) & 1 ? -1.0f : 1.0f;
        } else {
          value = canonical_value(static_cast<const float*>(peer_values[p])[first + q]);
        }
        if (s.count[pos]++ == 0) {
          s.touched[n_touched++] = uv;
          s.mark(u, v);
        }
        s.agg[pos] = s.agg[pos] + value;
      }
    }
    for (int q = 0; q < n_touched; ++q) {  // A[j] = S[j] / n[j]  (or / P), then flush
      const int u = s.touched[q] >> 16, v = s.touched[q] & 0xffff;
      const int32_t pos = u * b.ldn + v;
      const float divisor = reduce == DK_REDUCE_MEAN ? static_cast<float>(s.count[pos]) : peers;
      const float mean = s.agg[pos] / divisor;
      s.count[pos] = 0;
      if (std::fabs(mean) < kFlushBelow) {  // a zero term: dropped (changes no bit)
        s.agg[pos] = 0.0f;
        s.unmark(u, v);
      } else {
        s.agg[pos] = mean;
      }
    }
    inverse_to(b, s, sink_for(b, chunk_site(g, c), outs[t], apply_sign != 0, streaming));
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

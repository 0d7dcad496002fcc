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
  std::vector<int> rows;          // rows u of T with a term, ascending
  std::vector<int> term_v;        // one row's terms: v and A[u, v]
  AlignedBuffer<float> term_a;
  Scratch(int cm, int ldn)
      : words((ldn + 63) / 64), agg(cm * ldn), count(cm * ldn), partial(cm * ldn),
        basis(cm * ((cm + 7) / 8 * 8)), marks(cm * words), rows(cm), term_v(ldn), term_a(ldn) {}
  void mark(int u, int v) { marks[u * words + (v >> 6)] |= uint64_t{1} << (v & 63); }
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

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* at = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(at + off, 0, 3);
  __builtin_prefetch(at + bytes - 1, 0, 3);
}

inline float canonical_value(float v) { return std::fabs(v) < kFlushBelow ? 0.0f : v; }

// The first stage on the marked positions of s.agg: for each row u with a mark,
// T[u, :] = fold over v ascending of A[u, v] * C_n[v, :], with A[u, v] = finish(S, n) from
// the sums and counts there (a zero A is no term). T rows are stored compacted (row r for the
// r-th such u, listed in s.rows), or, when `dense`, at row u with every other row zeroed.
// Clears the sums, counts and marks. Returns the number of nonzero rows.
template <class Finish>
int first_stage(const ChunkBases& b, Scratch& s, Finish finish, bool dense) {
  int n_rows = 0;
  for (int u = 0; u < b.cm; ++u) {
    uint64_t* mark = s.marks.data() + u * s.words;
    float* sums = s.agg.data() + u * b.ldn;
    int32_t* counts = s.count.data() + u * b.ldn;
    int n_terms = 0;
    for (int w = 0; w < s.words; ++w) {
      for (uint64_t bits = mark[w]; bits; bits &= bits - 1) {
        const int v = w * 64 + __builtin_ctzll(bits);
        const float a = finish(sums[v], counts[v]);
        sums[v] = 0.0f;
        counts[v] = 0;
        if (a != 0.0f) {
          s.term_v[n_terms] = v;
          s.term_a[n_terms++] = a;
        }
      }
      mark[w] = 0;
    }
    float* row = s.partial.data() + (dense ? u : n_rows) * b.ldn;
    if (!n_terms) {
      if (dense) std::memset(row, 0, sizeof(float) * b.ldn);
      continue;
    }
    fold_terms(s.term_v.data(), s.term_a.data(), n_terms, b.cn_rows.data(), b.ldn, row, b.ldn);
    s.rows[n_rows++] = u;
  }
  return n_rows;
}

// Rows of T that will have a term (an upper bound: a finished mean can flush to zero).
inline int marked_rows(const ChunkBases& b, Scratch& s) {
  int n = 0;
  for (int u = 0; u < b.cm; ++u) {
    uint64_t any = 0;
    for (int w = 0; w < s.words; ++w) any |= s.marks[u * s.words + w];
    n += any != 0;
  }
  return n;
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

// The canonical inverse (SPEC 4.3) of the marked sums in s.agg, finished by finish(S, n),
// written to the output.
template <class Finish>
void inverse_to(const ChunkBases& b, Scratch& s, Finish finish, OutputSink sink) {
  // Mostly full T (e.g. 8 peers x 32 picks of 64 rows): the mirrored fold over every row
  // costs ~0.78 of the plain fold over all of them, so it wins from ~4/5 of the rows on.
  // Stores: streaming ones only for the sparse chunks below. Dense chunks have enough
  // arithmetic between stores to hide the line fills of ordinary ones, and streaming stores
  // stalled them (docs/cpu-kernels.md).
  if (b.cm_mirror && b.cm >= 4 && marked_rows(b, s) * 5 >= b.cm * 4) {
    first_stage(b, s, finish, true);
    sink.streaming = false;
    fold_columns_mirrored(b.cm_rows.data(), b.ldm, b.cm, s.partial.data(), b.ldn, b.ldn, sink);
    return;
  }
  const int n_rows = first_stage(b, s, finish, false);
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
int for_each_chunk(int64_t total, int cm, int ldn, int threads, Body body) {
  return dk::for_each_chunk(total, static_cast<int64_t>(cm) * ldn, threads, [&] { return std::unique_ptr<Scratch>(new Scratch(cm, ldn)); }, body);
}

}  // namespace

int idct(const float* coeffs, const dk_geometry& g, float* x, int threads) {
  const ChunkBases& b = chunk_bases(g.cm, g.cn);
  const int E = g.cm * g.cn;
  const bool streaming = n_chunks(g) * E * 4 >= kStreamingBytes;
  return for_each_chunk(n_chunks(g), g.cm, b.ldn, threads, [&](Scratch& s, int64_t c) {
    for (int u = 0; u < g.cm; ++u)
      for (int v = 0; v < g.cn; ++v) {
        const float a = coeffs[c * E + u * g.cn + v];
        if (a == 0.0f) continue;  // a zero term changes no bit (SPEC 4.3)
        s.agg[u * b.ldn + v] = a;
        s.mark(u, v);
      }
    inverse_to(b, s, [](float a, int32_t) { return a; }, sink_for(b, chunk_site(g, c), x, false, streaming));
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
  int max_cm = 1, max_ldn = 8;
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
    out_bytes += n_chunks(g) * g.cm * g.cn * 4;
  }
  const bool streaming = out_bytes >= kStreamingBytes;
  const float peers = static_cast<float>(n_peers);
  const bool sign_codec = value_codec == DK_VALUES_SIGN;
  // Validation is a pass of its own, before any output is written: a call that fails leaves
  // every output as it was (callers may decode into live buffers, e.g. .grad). It reads only
  // the indices and values (~1 ms for 8 peers at 4096x4096 here); the first offending
  // (tensor, peer) is reported.
  std::vector<int> flags(static_cast<size_t>(n_tensors) * n_peers, 0);
  auto tensor_of = [&](int64_t global) {
    return static_cast<int>(std::upper_bound(first_chunk.begin(), first_chunk.end(), global) -
                            first_chunk.begin()) - 1;
  };
  dk::parallel_for(first_chunk[n_tensors], threads, 256, [&](int64_t begin, int64_t end) {
    for (int64_t global = begin; global < end; ++global) {
      const int t = tensor_of(global);
      const int64_t c = global - first_chunk[t];
      const int k_eff = k_effs[t], E = geoms[t].cm * geoms[t].cn;
      for (int p = 0; p < n_peers; ++p) {
        const int64_t at = static_cast<int64_t>(t) * n_peers + p;
        const float* f32 = sign_codec ? nullptr : static_cast<const float*>(values[at]) + c * k_eff;
        const int bad = check_chunk(indices[at] + c * k_eff, f32, k_eff, E);
        if (bad) dk::atomic_or(flags[static_cast<size_t>(at)], bad);
      }
    }
  });
  for (size_t f = 0; f < flags.size(); ++f) {
    if (!flags[f]) continue;  // the lowest tensor, then the lowest peer, is reported
    *bad_tensor = static_cast<int32_t>(f / n_peers);
    *bad_peer = static_cast<int32_t>(f % n_peers);
    return flags[f] & kRangeBad ? DK_ERR_INDEX_RANGE : flags[f] & kOrderBad ? DK_ERR_INDEX_ORDER : DK_ERR_VALUE;
  }
  return for_each_chunk(first_chunk[n_tensors], max_cm, max_ldn, threads,
                        [&](Scratch& s, int64_t global) {
    const int t = tensor_of(global);
    const int64_t c = global - first_chunk[t];
    const dk_geometry& g = geoms[t];
    const ChunkBases& b = *bases[t];
    const int k_eff = k_effs[t];
    const int64_t first = c * k_eff;
    const int32_t* const* peer_indices = indices + static_cast<int64_t>(t) * n_peers;
    const void* const* peer_values = values + static_cast<int64_t>(t) * n_peers;
    if (c + 1 < n_chunks(g)) {  // the next chunk's payload rows: 2P streams the prefetcher misses
      const int64_t next = first + k_eff;
      for (int p = 0; p < n_peers; ++p) {
        prefetch_bytes(peer_indices[p] + next, k_eff * 4);
        if (sign_codec) prefetch_bytes(static_cast<const uint8_t*>(peer_values[p]) + next / 8, k_eff / 8 + 1);
        else prefetch_bytes(static_cast<const float*>(peer_values[p]) + next, k_eff * 4);
      }
    }
    // ascending peer order: S[j] += v, n[j] += 1, mark (u, v); the value codec and the
    // 64-wide layout (padded position == index, one mark word per row) hoisted out of the loop
    auto aggregate = [&](auto value_at, auto place) {
      for (int p = 0; p < n_peers; ++p) {
        const int32_t* row = peer_indices[p] + first;
        for (int q = 0; q < k_eff; ++q) {
          const float value = value_at(p, q);
          int32_t pos;
          place(row[q], pos);
          s.count[pos] += 1;
          s.agg[pos] = s.agg[pos] + value;
        }
      }
    };
    auto signs = [&](int p, int q) {
      const int64_t bit = first + q;
      const uint8_t byte = static_cast<const uint8_t*>(peer_values[p])[bit >> 3];
      return (byte >> (bit & 7)) & 1 ? -1.0f : 1.0f;
    };
    auto floats = [&](int p, int q) {
      return canonical_value(static_cast<const float*>(peer_values[p])[first + q]);
    };
    auto wide = [&](int32_t e, int32_t& pos) {  // cn == ldn == 64
      pos = e;
      s.marks[e >> 6] |= uint64_t{1} << (e & 63);
    };
    auto general = [&](int32_t e, int32_t& pos) {
      const int32_t uv = positions[t][e];
      const int u = uv >> 16, v = uv & 0xffff;
      pos = u * b.ldn + v;
      s.mark(u, v);
    };
    const bool is_wide = g.cn == 64 && b.ldn == 64 && s.words == 1;
    if (sign_codec) {
      if (is_wide) aggregate(signs, wide);
      else aggregate(signs, general);
    } else {
      if (is_wide) aggregate(floats, wide);
      else aggregate(floats, general);
    }
    // A[j] = S[j] / n[j] (or / P), then the 2^-55 flush
    auto finish = [&](float sum, int32_t n) {
      const float mean = sum / (reduce == DK_REDUCE_MEAN ? static_cast<float>(n) : peers);
      return std::fabs(mean) < kFlushBelow ? 0.0f : mean;
    };
    inverse_to(b, s, finish, sink_for(b, chunk_site(g, c), outs[t], apply_sign != 0, streaming));
  });
}

}  // namespace DK_ARCH
}  // namespace dk

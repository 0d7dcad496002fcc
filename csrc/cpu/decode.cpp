// Decode kernels (SPEC section 4), bit-exact: float32 aggregation of the peers in list order,
// then the canonical inverse DCT with separately rounded multiplies and adds in ascending
// order (exact_fold.h), or, where only sign(y) is wanted, its certified sign (lee_sign.h,
// sign_fold.h).
// Terms whose multiplicand is zero may be folded or skipped (SPEC 4.3: from +0 either changes
// no bit): the first stage folds only the picked coefficients, the second only the rows that
// have one. The second stage writes each output vector once, straight to the tensor.
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
#include "lee_sign.h"
#include "parallel.h"
#include "scratch.h"
#include "sign_fold.h"

namespace dk {
namespace DK_ARCH {
namespace {

constexpr float kFlushBelow = 2.7755575615628914e-17f;  // 2^-55

struct Scratch {
  int words;                      // 64-bit mark words per coefficient row
  AlignedBuffer<float> partial;   // T (cm x ldn), rows as fold_rows lays them out
  AlignedBuffer<float> basis;     // the rows of C_m that match compacted T rows (cm x ldm)
  AlignedBuffer<uint64_t> marks;  // bit v of row u: (u, v) has a term; all 0 between chunks
  std::vector<int> word_rank;     // terms before each mark word
  std::vector<int> rows;          // rows u of T with a term, ascending
  std::vector<int> row_begin;     // row u's terms are [row_begin[u], row_begin[u + 1]), v ascending:
  std::vector<int> term_v;        //   their v,
  AlignedBuffer<float> term_a;    //   S, then A[u, v] (collect_terms),
  std::vector<int32_t> term_n;    //   and n
  SignWork sign;                  // the certified sign's (sign_fold.h)
  std::vector<std::pair<int, int64_t>> decoded;  // (tensor, chunk) of the run so far, for the step
  Scratch(int cm, int ldn)
      : words((ldn + 63) / 64), partial(cm * ldn), basis(cm * ((cm + 7) / 8 * 8)),
        marks(cm * words), word_rank(cm * words + 1), rows(cm), row_begin(cm + 1),
        term_v(cm * ldn), term_a(cm * ldn), term_n(cm * ldn), sign(cm) {}
  // where (u, v) is marked: bit (at & 63) of word (at >> 6)
  int mark_at(int u, int v) const { return u * words * 64 + v; }
};

constexpr int kRangeBad = 1, kOrderBad = 2, kValueBad = 4;

// SPEC 5's per-chunk rules on one peer's k indices (and values, unless sign-coded). Each rule
// is an OR over independent comparisons, so the loops vectorize (with a running `previous`
// they did not: the pass took ~1 ms for 8 peers at 4096x4096). A negative first index is a
// range error, which the caller reports before any order error.
int check_chunk(const int32_t* row, const float* values, int k, int E) {
  int out_of_range = 0, unordered = 0, bad_value = 0;
  for (int t = 0; t < k; ++t) out_of_range |= (row[t] < 0) | (row[t] >= E);
  for (int t = 1; t < k; ++t) unordered |= row[t] <= row[t - 1];
  if (values)
    for (int t = 0; t < k; ++t) bad_value |= !(std::fabs(values[t]) < 18446744073709551616.0f);  // 2^64; NaN too
  return (out_of_range ? kRangeBad : 0) | (unordered ? kOrderBad : 0) | (bad_value ? kValueBad : 0);
}

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* at = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(at + off, 0, 3);
  __builtin_prefetch(at + bytes - 1, 0, 3);
}

inline float canonical_value(float v) { return std::fabs(v) < kFlushBelow ? 0.0f : v; }

// The first stage's terms of one chunk, from its picks: picks(visit) calls visit(at, value)
// for every pick, at = s.mark_at(u, v), in SPEC 4.2's order (ascending peer, and a peer's
// picks once each). Row by row and v ascending (s.row_begin, s.rows), each term gets
// v, S (the picks' values added in that order from +0) and n, then A = finish(S, n)
// (s.term_v, s.term_a, s.term_n). A term whose A is zero stays: from +0,
// its +-0 product changes no bit (SPEC 4.3). Two passes: the picks mark their positions, so
// a pick's term is its rank among the marks (a popcount), and no per-position table is read.
// Returns the number of rows with a term.
template <class Picks, class Finish>
int collect_terms(const ChunkBases& b, Scratch& s, Picks picks, Finish finish) {
  uint64_t* marks = s.marks.data();
  picks([&](int at, float) { marks[at >> 6] |= uint64_t{1} << (at & 63); });
  int n_terms = 0, n_rows = 0;
  for (int u = 0; u < b.cm; ++u) {
    s.row_begin[u] = n_terms;
    for (int w = u * s.words; w < (u + 1) * s.words; ++w) {
      s.word_rank[w] = n_terms;
      n_terms += __builtin_popcountll(marks[w]);
    }
    if (n_terms > s.row_begin[u]) s.rows[n_rows++] = u;
  }
  s.row_begin[b.cm] = n_terms;
  // local pointers: stores through them could alias s's members, which GCC then reloads
  float* __restrict sums = s.term_a.data();
  int32_t* __restrict counts = s.term_n.data();
  int* __restrict term_v = s.term_v.data();
  const int* __restrict word_rank = s.word_rank.data();
  std::memset(sums, 0, sizeof(float) * n_terms);
  std::memset(counts, 0, sizeof(int32_t) * n_terms);
  const int row_bits = 64 * s.words;
  const bool one_word = s.words == 1;
  picks([&](int at, float value) {
    const int w = at >> 6;
    const int r = word_rank[w] + __builtin_popcountll(marks[w] & ((uint64_t{1} << (at & 63)) - 1));
    sums[r] = sums[r] + value;
    counts[r] += 1;
    term_v[r] = one_word ? at & 63 : at % row_bits;
  });
  std::memset(marks, 0, sizeof(uint64_t) * b.cm * s.words);
  // A in one loop (vector divisions)
  for (int t = 0; t < n_terms; ++t) s.term_a[t] = finish(s.term_a[t], s.term_n[t]);
  return n_rows;
}

// collect_terms for a one-row chunk (cm == 1: 1-D tensors), whose picks cover most of its few
// positions: S and n accumulate in place per position v (picks(visit) as for collect_terms,
// at == v), and every v becomes a term, A = 0 where nothing was picked (from +0, a zero term
// changes no bit, SPEC 4.3). One pass over the picks instead of two, and no marks.
template <class Picks, class Finish>
int collect_row_dense(const ChunkBases& b, Scratch& s, Picks picks, Finish finish) {
  float* __restrict sums = s.term_a.data();
  int32_t* __restrict counts = s.term_n.data();
  int* __restrict term_v = s.term_v.data();
  std::memset(sums, 0, sizeof(float) * b.cn);
  std::memset(counts, 0, sizeof(int32_t) * b.cn);
  picks([&](int at, float value) {
    sums[at] = sums[at] + value;
    counts[at] += 1;
  });
  for (int v = 0; v < b.cn; ++v) {
    term_v[v] = v;
    sums[v] = counts[v] ? finish(sums[v], counts[v]) : 0.0f;
  }
  s.row_begin[0] = 0;
  s.row_begin[1] = b.cn;
  s.rows[0] = 0;
  return 1;
}

// sum |A| over the chunk's terms, in any order: it only bounds (sign_fold.h).
inline float terms_abs_sum(const float* a, int n_terms) {
  v8f norm = vzero();
  int t = 0;
  for (; t + kLanes <= n_terms; t += kLanes) norm = norm + abs_of(vload(a + t));
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += norm[l];
  for (; t < n_terms; ++t) sum += std::fabs(a[t]);
  return sum;
}

// Where fold_rows puts row u of T: the r-th row with a term at row r (compacted), every row
// at row u with the empty ones zeroed (dense), or at position[u] (placed).
enum class RowLayout { kCompacted, kDense, kPlaced };

// The first stage, SPEC 4.3: T[u, :] = fold over v ascending of A[u, v] * C_n[v, :], for the
// rows with a term (s.rows), from collect_terms.
inline void fold_rows(const ChunkBases& b, Scratch& s, int n_rows, RowLayout layout,
                      const int* position = nullptr) {
  if (layout == RowLayout::kDense)
    for (int u = 0; u < b.cm; ++u)
      if (s.row_begin[u + 1] == s.row_begin[u]) std::memset(s.partial.data() + u * b.ldn, 0, sizeof(float) * b.ldn);
  // mirrored columns where C_n allows (half the multiplies and basis loads)
  const int halves = b.cn_mirror && b.cn % 16 == 0 && b.cn == b.ldn && b.cn <= 64 ? b.cn / 16 : 0;
  for (int r = 0; r < n_rows; ++r) {
    const int u = s.rows[r], begin = s.row_begin[u], n = s.row_begin[u + 1] - begin;
    const int at = layout == RowLayout::kCompacted ? r : layout == RowLayout::kDense ? u : position[u];
    const int* v = s.term_v.data() + begin;
    const float* a = s.term_a.data() + begin;
    float* row = s.partial.data() + at * b.ldn;
    switch (halves) {
      case 4: fold_terms_mirrored<4>(v, a, n, b.cn_rows.data(), b.ldn, row); break;
      case 3: fold_terms_mirrored<3>(v, a, n, b.cn_rows.data(), b.ldn, row); break;
      case 2: fold_terms_mirrored<2>(v, a, n, b.cn_rows.data(), b.ldn, row); break;
      case 1: fold_terms_mirrored<1>(v, a, n, b.cn_rows.data(), b.ldn, row); break;
      default: fold_terms(v, a, n, b.cn_rows.data(), b.ldn, row, b.ldn);
    }
  }
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

// The canonical inverse (SPEC 4.3) of the chunk's terms (collect_terms; n_rows rows with a
// term), written to the output.
void inverse_to(const ChunkBases& b, Scratch& s, int n_rows, OutputSink sink) {
  // Only sign(y) wanted: certify it, from Lee's fast inverse for cm = 16, 32, 64 (lee_sign.h),
  // else from the even/odd recursion (sign_fold.h). With collect_terms and the mirrored first
  // stage, the recursion's decode of 8 peers at 4096x4096 on one thread took 28.7 ms against
  // 40.2 ms for the exact fold's build (both run at once, one per core; minima of 15 calls).
  if (sink.apply_sign && !b.lee_sign_bound.empty()) {
    fold_rows(b, s, n_rows, RowLayout::kDense);
    const float a_norm = terms_abs_sum(s.term_a.data(), s.row_begin[b.cm]);
    lee_certified_sign(b, s.partial.data(), b.ldn, s.rows.data(), n_rows, a_norm, b.ldn, s.sign,
                       SignOut{sink.base, sink.stride, sink.cn});
    return;
  }
  if (sink.apply_sign && !b.sign_odd.empty()) {
    sign_layout(b, s.rows.data(), n_rows, s.sign);
    for (int e = 0; e < s.sign.n_empty; ++e)
      std::memset(s.partial.data() + s.sign.empty[e] * b.ldn, 0, sizeof(float) * b.ldn);
    fold_rows(b, s, n_rows, RowLayout::kPlaced, s.sign.position.data());
    // ordinary stores: streaming ones took 24 vs 16 ms for 4096 chunks here
    const float a_norm = terms_abs_sum(s.term_a.data(), s.row_begin[b.cm]);
    certified_sign(b, s.partial.data(), b.ldn, s.rows.data(), n_rows, a_norm, b.ldn, s.sign,
                   SignOut{sink.base, sink.stride, sink.cn});
    return;
  }
  // Mostly full T (e.g. 8 peers x 32 picks of 64 rows): the mirrored fold over every row
  // costs ~0.78 of the plain fold over all of them, so it wins from ~4/5 of the rows on.
  // Stores: streaming ones only for the sparse chunks below. Dense chunks have enough
  // arithmetic between stores to hide the line fills of ordinary ones, and streaming stores
  // stalled them (docs/cpu-kernels.md).
  if (b.cm_mirror && b.cm >= 4 && n_rows * 5 >= b.cm * 4) {
    fold_rows(b, s, n_rows, RowLayout::kDense);
    sink.streaming = false;
    fold_columns_mirrored(b.cm_rows.data(), b.ldm, b.cm, s.partial.data(), b.ldn, b.ldn, sink);
    return;
  }
  fold_rows(b, s, n_rows, RowLayout::kCompacted);
  const float* basis = b.cm_rows.data();
  if (n_rows < b.cm) {  // the C_m rows of the compacted T rows
    for (int r = 0; r < n_rows; ++r)
      std::memcpy(s.basis.data() + r * b.ldm, basis + s.rows[r] * b.ldm, sizeof(float) * b.ldm);
    basis = s.basis.data();
  }
  fold_columns(basis, b.ldm, b.cm, s.partial.data(), b.ldn, b.ldn, n_rows, sink);
  if (sink.streaming) stream_fence();
}

// The optimizer's step over decoded outputs u while they are still in cache, each operation
// rounded as dk_apply_update does: p = p * keep + step * u (keep == 1: p + step * u). `width`
// columns of cm rows from site (several chunks of one chunk row at once).
void apply_rows(const ChunkSite& site, int cm, int64_t width, const float* u, float* p, float keep,
                float step) {
  for (int i = 0; i < cm; ++i) {
    const float* __restrict from = u + site.offset + i * site.stride;
    float* __restrict to = p + site.offset + i * site.stride;
    if (keep == 1.0f)
      for (int64_t j = 0; j < width; ++j) to[j] = to[j] + step * from[j];
    else
      for (int64_t j = 0; j < width; ++j) to[j] = to[j] * keep + step * from[j];
  }
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
    auto picks = [&](auto visit) {
      for (int u = 0; u < g.cm; ++u)
        for (int v = 0; v < g.cn; ++v) {
          const float a = coeffs[c * E + u * g.cn + v];
          if (a != 0.0f) visit(s.mark_at(u, v), a);  // a zero term changes no bit (SPEC 4.3)
        }
    };
    const int n_rows = collect_terms(b, s, picks, [](float a, int32_t) { return a; });
    inverse_to(b, s, n_rows, sink_for(b, chunk_site(g, c), x, false, streaming));
  });
}

int decompress(int n_tensors, int n_peers, const int32_t* const* indices,
               const void* const* values, int value_codec, const dk_geometry* geoms,
               const int32_t* k_effs, int reduce, int apply_sign, float* const* outs,
               float* const* params, const float* keeps, const float* steps, int threads,
               int32_t* bad_tensor, int32_t* bad_peer) {
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
  // (not when the step reads the outputs right back)
  const bool streaming = out_bytes >= kStreamingBytes && !params;
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
    // every pick in ascending peer order, as (mark position, value); the value codec and the
    // 64-wide layout (mark position == index, one mark word per row) hoisted out of the loop
    auto picks_of = [&](auto value_at, auto mark_of) {
      return [&, value_at, mark_of](auto visit) {
        for (int p = 0; p < n_peers; ++p) {
          const int32_t* row = peer_indices[p] + first;
          for (int q = 0; q < k_eff; ++q) visit(mark_of(row[q]), value_at(p, q));
        }
      };
    };
    auto signs = [&](int p, int q) {
      const int64_t bit = first + q;
      const uint8_t byte = static_cast<const uint8_t*>(peer_values[p])[bit >> 3];
      return (byte >> (bit & 7)) & 1 ? -1.0f : 1.0f;
    };
    auto floats = [&](int p, int q) {
      return canonical_value(static_cast<const float*>(peer_values[p])[first + q]);
    };
    auto wide = [](int32_t e) { return e; };  // cn == 64, one mark word per row
    auto general = [&](int32_t e) {
      const int32_t uv = positions[t][e];
      return s.mark_at(uv >> 16, uv & 0xffff);
    };
    // A[j] = S[j] / n[j] (or / P), then the 2^-55 flush
    auto finish = [&](float sum, int32_t n) {
      const float mean = sum / (reduce == DK_REDUCE_MEAN ? static_cast<float>(n) : peers);
      return std::fabs(mean) < kFlushBelow ? 0.0f : mean;
    };
    const bool is_wide = g.cn == 64 && s.words == 1;
    auto same = [](int32_t e) { return e; };  // cm == 1: e is v
    int n_rows;
    if (g.cm == 1)
      n_rows = sign_codec ? collect_row_dense(b, s, picks_of(signs, same), finish)
                          : collect_row_dense(b, s, picks_of(floats, same), finish);
    else if (sign_codec)
      n_rows = is_wide ? collect_terms(b, s, picks_of(signs, wide), finish)
                       : collect_terms(b, s, picks_of(signs, general), finish);
    else
      n_rows = is_wide ? collect_terms(b, s, picks_of(floats, wide), finish)
                       : collect_terms(b, s, picks_of(floats, general), finish);
    inverse_to(b, s, n_rows, sink_for(b, chunk_site(g, c), outs[t], apply_sign != 0, streaming));
    if (!params) return;
    // The step runs once per run of chunks (parallel.h), over each chunk row's part of it at
    // once: rows of 16 chunks are 4 KiB runs of p, which the hardware prefetcher follows. Per
    // chunk, p's 64 rows 16 KiB apart were read at DRAM latency: slower than a separate pass.
    s.decoded.emplace_back(t, c);
    if ((global + 1) % kChunkRun != 0 && global + 1 != first_chunk[n_tensors]) return;
    for (size_t a = 0, e; a < s.decoded.size(); a = e) {
      const int ta = s.decoded[a].first;
      const dk_geometry& ga = geoms[ta];
      for (e = a + 1; e < s.decoded.size() && s.decoded[e].first == ta &&
                      s.decoded[e].second % ga.chunks_n != 0; ++e) {
      }
      apply_rows(chunk_site(ga, s.decoded[a].second), ga.cm, static_cast<int64_t>(e - a) * ga.cn, outs[ta],
                 params[ta], keeps[ta], steps[ta]);
    }
    s.decoded.clear();
  });
}

}  // namespace DK_ARCH
}  // namespace dk

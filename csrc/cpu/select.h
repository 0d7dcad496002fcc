// Per-chunk top-k by |X| with SPEC 3's tie rule (equal |X|: the smaller index wins).
//
// Keys are |x|'s bits (monotonic in |x|). A first pass takes group maxima: the chunk split into
// at least k groups (columns, or columns of row blocks when there are fewer than k columns).
// The k-th largest group maximum t is a lower bound on the k-th largest key (k distinct elements
// reach it), so only keys >= t can be picked. A second pass in index order keeps the keys > t
// in a candidate list, cut back to its best k whenever it holds 2k (which raises the
// threshold). Since elements arrive in ascending index order, one that equals a raised
// threshold always loses the tie, so that test is strict. If fewer than k keys beat t, the rest
// are the smallest-index keys equal to t, found by a third pass (an all-zero chunk costs one).
// The k-th largest of a short list is found by counting with vector compares, not sorting. The list stays in index order, so
// the result comes out sorted ascending.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "../include/distro_kernels.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

// Keys of a run of kKeyLanes consecutive floats, and bit masks of comparisons against them.
#if defined(__AVX512F__)
constexpr int kKeyLanes = 16;
struct KeyVec {
  __m512i v;
  explicit KeyVec(const float* p) : v(_mm512_and_si512(_mm512_loadu_si512(p), _mm512_set1_epi32(0x7fffffff))) {}
  explicit KeyVec(const uint32_t* keys) : v(_mm512_loadu_si512(keys)) {}
  KeyVec() : v(_mm512_setzero_si512()) {}
  void max_with(const KeyVec& o) { v = _mm512_max_epu32(v, o.v); }
  uint32_t greater(int32_t t) const { return _mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(t)); }
  uint32_t equal(int32_t t) const { return _mm512_cmpeq_epi32_mask(v, _mm512_set1_epi32(t)); }
  void store(uint32_t* out) const { _mm512_storeu_si512(out, v); }
};
#elif defined(__AVX2__)
constexpr int kKeyLanes = 8;
struct KeyVec {
  __m256i v;
  explicit KeyVec(const float* p)
      : v(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), _mm256_set1_epi32(0x7fffffff))) {}
  explicit KeyVec(const uint32_t* keys) : v(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys))) {}
  KeyVec() : v(_mm256_setzero_si256()) {}
  void max_with(const KeyVec& o) { v = _mm256_max_epu32(v, o.v); }
  uint32_t greater(int32_t t) const {
    return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_set1_epi32(t))));
  }
  uint32_t equal(int32_t t) const {
    return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_set1_epi32(t))));
  }
  void store(uint32_t* out) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v); }
};
#else
constexpr int kKeyLanes = 1;
struct KeyVec {
  uint32_t v = 0;
  explicit KeyVec(const float* p) {
    std::memcpy(&v, p, 4);
    v &= 0x7fffffffu;
  }
  explicit KeyVec(const uint32_t* keys) : v(*keys) {}
  KeyVec() = default;
  void max_with(const KeyVec& o) { v = std::max(v, o.v); }
  uint32_t greater(int32_t t) const { return static_cast<int32_t>(v) > t; }
  uint32_t equal(int32_t t) const { return static_cast<int32_t>(v) == t; }
  void store(uint32_t* out) const { *out = v; }
};
#endif

// The k-th largest of a[0..n) (1 <= k <= n; a zero-padded to whole vectors): the x with
// #{a > x} < k <= #{a >= x}; *n_greater gets #{a > x}. Entries are tried in order as pivots,
// skipping those outside the bracket the earlier counts left, so only a few need a count.
inline uint32_t kth_largest(const uint32_t* a, int n, int k, int* n_greater) {
  uint32_t lo = 0, hi = 0xffffffffu;  // the answer lies in [lo, hi]
  for (int g = 0; g < n; ++g) {
    const uint32_t x = a[g];
    if (x < lo || x > hi) continue;
    int greater = 0, equal = 0;
    for (int q = 0; q < n; q += kKeyLanes) greater += __builtin_popcount(KeyVec(a + q).greater(static_cast<int32_t>(x)));
    if (greater >= k) {
      lo = x + 1;
      continue;
    }
    for (int q = 0; q < n; q += kKeyLanes) equal += __builtin_popcount(KeyVec(a + q).equal(static_cast<int32_t>(x)));
    if (greater + equal < k) {
      hi = x - 1;
      continue;
    }
    *n_greater = greater;
    return x;
  }
  *n_greater = 0;
  return 0;  // unreachable for 1 <= k <= n
}

class TopKSelector {
 public:
  // k: the largest k this selector will see; max_cols: the widest chunk.
  void reserve(int k, int max_cols) {
    const size_t cap = 2 * static_cast<size_t>(k) + kKeyLanes;
    keys_.resize(cap);
    index_.resize(cap);
    ties_.resize(k + 1);
    group_max_.resize(static_cast<size_t>(k) + max_cols + DK_MAX_CHUNK + kKeyLanes);
  }

  // X: rows x ld floats (cols valid per row); writes k ascending indices (u * cols + v).
  // row_max, if given, holds each row's largest |X| bits (the fast DCT takes them in passing);
  // with at least k rows they make the bound, and rows that cannot hold a pick are skipped.
  void select(const float* X, int ld, int rows, int cols, int k, int32_t* out_index,
              const uint32_t* row_max = nullptr) {
    const int total = rows * cols;
    if (k <= 0) return;
    if (k >= total) {
      for (int e = 0; e < total; ++e) out_index[e] = e;
      return;
    }
    if (rows < k) row_max = nullptr;
    const int32_t bound = row_max ? row_max_bound(row_max, rows, k) : group_max_bound(X, ld, rows, cols, k);
    const int cap = 2 * k;
    int32_t threshold = bound;
    int n = 0;
    auto visit = [&](const float* row, int v, int row_base) {
      uint32_t key;
      std::memcpy(&key, row + v, 4);
      key &= 0x7fffffffu;
      if (static_cast<int32_t>(key) <= threshold) return;
      keys_[n] = key;
      index_[n] = row_base + v;
      if (++n == cap) threshold = keep_best(n, k);
    };
    // Hits are gathered 64 columns at a time so a run of misses costs one branch.
    constexpr int kSpan = 64;
    for (int u = 0; u < rows; ++u) {
      if (row_max && static_cast<int32_t>(row_max[u]) <= threshold) continue;
      const float* row = X + static_cast<int64_t>(u) * ld;
      const int row_base = u * cols;
      int v = 0;
      for (; v + kSpan <= cols; v += kSpan) {
        uint64_t hits = 0;
        for (int q = 0; q < kSpan; q += kKeyLanes)
          hits |= static_cast<uint64_t>(KeyVec(row + v + q).greater(threshold)) << q;
        for (; hits; hits &= hits - 1) visit(row, v + __builtin_ctzll(hits), row_base);
      }
      for (; v + kKeyLanes <= cols; v += kKeyLanes)
        for (uint32_t hits = KeyVec(row + v).greater(threshold); hits; hits &= hits - 1)
          visit(row, v + __builtin_ctz(hits), row_base);
      for (; v < cols; ++v) visit(row, v, row_base);
    }
    if (n >= k) {
      if (n > k) keep_best(n, k);
      std::memcpy(out_index, index_.data(), sizeof(int32_t) * k);
      return;
    }
    // Fewer than k keys beat the bound (it was never raised): all of them are in, and the
    // smallest-index keys equal to it fill up the rest.
    const int n_ties = first_ties(X, ld, rows, cols, bound, k - n);
    std::merge(index_.begin(), index_.begin() + n, ties_.begin(), ties_.begin() + n_ties, out_index);
  }

 private:
  // The k-th largest of the rows' maxima (rows >= k).
  int32_t row_max_bound(const uint32_t* row_max, int rows, int k) {
    std::memcpy(group_max_.data(), row_max, sizeof(uint32_t) * rows);
    for (int g = rows; g % kKeyLanes; ++g) group_max_[g] = 0;
    int greater;
    return static_cast<int32_t>(kth_largest(group_max_.data(), rows, k, &greater));
  }

  // The k-th largest maximum over >= k groups: each column of each of ceil(k / cols) row blocks.
  int32_t group_max_bound(const float* X, int ld, int rows, int cols, int k) {
    const int blocks = (k + cols - 1) / cols;  // <= rows, since k < rows * cols
    int n_groups = 0;
    for (int b = 0; b < blocks; ++b) {
      const int first = b * rows / blocks, last = (b + 1) * rows / blocks;
      int v = 0;
      for (; v + kKeyLanes <= cols; v += kKeyLanes) {
        KeyVec best;
        for (int u = first; u < last; ++u) best.max_with(KeyVec(X + static_cast<int64_t>(u) * ld + v));
        best.store(group_max_.data() + n_groups);
        n_groups += kKeyLanes;
      }
      for (; v < cols; ++v) {
        uint32_t best = 0;
        for (int u = first; u < last; ++u) {
          uint32_t key;
          std::memcpy(&key, X + static_cast<int64_t>(u) * ld + v, 4);
          best = std::max(best, key & 0x7fffffffu);
        }
        group_max_[n_groups++] = best;
      }
    }
    // Zero padding to whole vectors: a zero is never greater than a key, and if it ties the
    // k-th largest, that value is 0 anyway.
    for (int g = n_groups; g % kKeyLanes; ++g) group_max_[g] = 0;
    int greater;
    return static_cast<int32_t>(kth_largest(group_max_.data(), n_groups, k, &greater));
  }

  // Keeps the best k of the n candidates in place and in order: every key above the k-th best,
  // then keys equal to it in list (index) order while places remain. Returns the k-th best key.
  int32_t keep_best(int& n, int k) {
    for (int t = n; t % kKeyLanes; ++t) keys_[t] = 0;  // padding: candidate keys are >= 1
    int greater;
    const uint32_t kth = kth_largest(keys_.data(), n, k, &greater);
    int kept = 0, ties_left = k - greater;
    for (int t = 0; t < n; ++t) {
      if (keys_[t] > kth || (keys_[t] == kth && ties_left-- > 0)) {
        keys_[kept] = keys_[t];
        index_[kept] = index_[t];
        ++kept;
      }
    }
    n = kept;
    return static_cast<int32_t>(kth);
  }

  // The first `want` indices whose key equals `bound`, ascending, into ties_; returns how many.
  int first_ties(const float* X, int ld, int rows, int cols, int32_t bound, int want) {
    int n_ties = 0;
    for (int u = 0; u < rows && n_ties < want; ++u) {
      const float* row = X + static_cast<int64_t>(u) * ld;
      for (int v = 0; v < cols && n_ties < want; ++v) {
        uint32_t key;
        std::memcpy(&key, row + v, 4);
        if (static_cast<int32_t>(key & 0x7fffffffu) == bound) ties_[n_ties++] = u * cols + v;
      }
    }
    return n_ties;
  }

  std::vector<uint32_t> keys_;
  std::vector<int32_t> index_;
  std::vector<int32_t> ties_;
  std::vector<uint32_t> group_max_;
};

}  // namespace
}  // namespace dk

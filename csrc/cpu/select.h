// Per-chunk top-k by |X| with SPEC 3's tie rule (equal |X|: the smaller index wins).
//
// One streaming pass in index order keeps a candidate list: an element enters only if its
// key beats the current threshold (the k-th best key seen so far). When the list fills up,
// it is cut back to its best k. Since elements arrive in ascending index order, an element
// whose key equals the threshold always loses the tie, so the test is strict. The list stays
// in index order, so the result comes out sorted ascending.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

class TopKSelector {
 public:
  void reserve(int k) {
    const size_t cap = 2 * static_cast<size_t>(k) + 8;
    keys_.resize(cap);
    index_.resize(cap);
    rank_.resize(cap);
    order_.resize(cap);
  }

  // X: rows x ld floats (cols valid per row); writes k ascending indices (u * cols + v).
  void select(const float* X, int ld, int rows, int cols, int k, int32_t* out_index) {
    const int total = rows * cols;
    if (k <= 0) return;
    if (k >= total) {
      for (int e = 0; e < total; ++e) out_index[e] = e;
      return;
    }
    const int cap = 2 * k;
    int n = 0;
    // Keys are >= 0, so -1 lets everything in. With at least k rows, the k-th largest row
    // maximum t0 is a safe start: k distinct elements reach it, so nothing below it can be
    // picked; starting at t0 - 1 still offers every element that ties t0.
    int32_t threshold = rows >= k ? row_max_bound(X, ld, rows, cols, k) - 1 : -1;
    for (int u = 0; u < rows; ++u) {
      const float* row = X + static_cast<int64_t>(u) * ld;
      int v = 0;
#if defined(__AVX2__)
      const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
      for (; v + 8 <= cols; v += 8) {
        __m256i key = _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(row + v)), magnitude_mask);
        __m256i beats = _mm256_cmpgt_epi32(key, _mm256_set1_epi32(threshold));
        if (!_mm256_movemask_epi8(beats)) continue;
        for (int lane = v; lane < v + 8; ++lane) offer(row, lane, u * cols, threshold, n, cap, k);
      }
#endif
      for (; v < cols; ++v) offer(row, v, u * cols, threshold, n, cap, k);
    }
    if (n > k) cut(n, k);
    std::memcpy(out_index, index_.data(), sizeof(int32_t) * k);
  }

 private:
  static uint32_t key_of(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    return bits & 0x7fffffffu;  // |x|'s bits: monotonic in |x| (NaN ranks above +inf)
  }

  int32_t row_max_bound(const float* X, int ld, int rows, int cols, int k) {
    row_max_.resize(rows);
    for (int u = 0; u < rows; ++u) {
      const float* row = X + static_cast<int64_t>(u) * ld;
      uint32_t best = 0;
      int v = 0;
#if defined(__AVX2__)
      __m256i acc = _mm256_setzero_si256();
      const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
      for (; v + 8 <= cols; v += 8)
        acc = _mm256_max_epu32(acc, _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(row + v)), magnitude_mask));
      alignas(32) uint32_t lanes[8];
      _mm256_store_si256((__m256i*)lanes, acc);
      for (int lane = 0; lane < 8; ++lane) best = std::max(best, lanes[lane]);
#endif
      for (; v < cols; ++v) best = std::max(best, key_of(row[v]));
      row_max_[u] = best;
    }
    std::nth_element(row_max_.begin(), row_max_.begin() + (k - 1), row_max_.end(), std::greater<uint32_t>());
    return static_cast<int32_t>(row_max_[k - 1]);
  }

  inline void offer(const float* row, int v, int row_base, int32_t& threshold, int& n, int cap,
                    int k) {
    const uint32_t key = key_of(row[v]);
    if (static_cast<int32_t>(key) <= threshold) return;
    keys_[n] = key;
    index_[n] = row_base + v;
    if (++n == cap) threshold = cut(n, k);
  }

  // Keeps the best k of the n candidates (order preserved); returns the k-th best key.
  int32_t cut(int& n, int k) {
    for (int t = 0; t < n; ++t)
      rank_[t] = (static_cast<uint64_t>(keys_[t]) << 32) | (0xffffffffu - static_cast<uint32_t>(index_[t]));
    std::copy(rank_.begin(), rank_.begin() + n, order_.begin());
    std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.begin() + n,
                     std::greater<uint64_t>());
    const uint64_t kth = order_[k - 1];
    int kept = 0;
    for (int t = 0; t < n; ++t) {
      if (rank_[t] >= kth) {
        keys_[kept] = keys_[t];
        index_[kept] = index_[t];
        ++kept;
      }
    }
    n = kept;
    return static_cast<int32_t>(kth >> 32);
  }

  std::vector<uint32_t> keys_;
  std::vector<int32_t> index_;
  std::vector<uint64_t> rank_;
  std::vector<uint64_t> order_;
  std::vector<uint32_t> row_max_;
};

}  // namespace
}  // namespace dk

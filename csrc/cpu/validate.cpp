#include "validate.h"

#include <cmath>

#include "../include/distro_kernels.h"

namespace dk {

int validate_peer(const int32_t* indices, const float* values, int64_t n_chunks, int k_eff, int E,
                  int threads) {
  const float limit = 18446744073709551616.0f;  // 2^64
  int range_bad = 0, order_bad = 0, value_bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : range_bad, order_bad, value_bad)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int32_t* row = indices + c * k_eff;
    int32_t previous = -1;
    for (int t = 0; t < k_eff; ++t) {
      range_bad |= row[t] < 0 || row[t] >= E;
      order_bad |= row[t] <= previous;
      previous = row[t];
    }
    if (values) {
      const float* vals = values + c * k_eff;
      for (int t = 0; t < k_eff; ++t) value_bad |= !(std::fabs(vals[t]) < limit);  // NaN fails too
    }
  }
  if (range_bad) return DK_ERR_INDEX_RANGE;
  if (order_bad) return DK_ERR_INDEX_ORDER;
  if (value_bad) return DK_ERR_VALUE;
  return DK_OK;
}

}  // namespace dk

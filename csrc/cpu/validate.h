// Content checks on one peer's sparse payload (SPEC 5 / 4.1), run before any aggregation.
#pragma once

#include <cstdint>

namespace dk {

// DK_OK, or the first failing rule in the order range, order, value.
int validate_peer(const int32_t* indices, const float* values, int64_t n_chunks, int k_eff, int E,
                  int threads);

}  // namespace dk

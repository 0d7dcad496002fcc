// The parallel pass over chunks shared by the encode and decode kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <new>

#include "../include/distro_kernels.h"

// Internal linkage on purpose: compiled once per instruction set (see simd.h).
namespace dk {
namespace {

// Runs body(scratch, chunk) for every chunk in [0, total), each thread with its own scratch
// from make_scratch(). Below ~64k elements of work one thread runs it all (a parallel region
// costs more than it saves); the schedule is dynamic so a preempted thread does not stall the
// pass. Returns DK_OK, or DK_ERR_ALLOC if a thread could not get its scratch.
template <typename MakeScratch, typename Body>
int for_each_chunk(int64_t total, int64_t elements_per_chunk, int threads, MakeScratch make_scratch,
                   Body body) {
  int status = DK_OK;
  if (total * elements_per_chunk < 65536) threads = 1;
#pragma omp parallel num_threads(threads)
  {
    decltype(make_scratch()) scratch;
    try {
      scratch = make_scratch();
    } catch (const std::bad_alloc&) {
#pragma omp atomic write
      status = DK_ERR_ALLOC;
    }
#pragma omp for schedule(dynamic, 16)
    for (int64_t c = 0; c < total; ++c)
      if (scratch) body(*scratch, c);
  }
  return status;
}

}  // namespace
}  // namespace dk

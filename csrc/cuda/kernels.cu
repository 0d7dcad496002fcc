// The one translation unit of the GPU kernels: nvcc builds it into a fatbin (sm_80 ... sm_120),
// hipcc into a code object (gfx90a), and sim_entry.cpp into the host emulation for tests.
// Every kernel is extern "C" so its name in the code object is stable (the loader asks for it).
#include "encode.cuh"
#include "decode.cuh"
#include "signs.cuh"

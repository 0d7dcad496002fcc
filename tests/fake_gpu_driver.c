/* A stand-in for libcuda.so.1 and libamdhip64.so (tests only): the driver entry points that
 * distro_kernels/cuda/driver.py calls, forwarding every launch to the host emulation of the
 * kernels (dk_sim_launch in the library named by $DK_FAKE_SIM). It lets CI run driver.py's
 * ctypes calls end to end (argument types, by-reference outputs, the void** parameter array)
 * on CPU memory. It records the last launch geometry and stream for the test to read. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*launch_fn)(const char*, unsigned, unsigned, void**);
static launch_fn sim_launch;
static int initialised;
static char names[16][64];
static int n_names;
unsigned fake_last_grid, fake_last_block, fake_last_shared, fake_launches;
void* fake_last_stream;
int fake_push_depth;

static int init(void) {
  const char* path = getenv("DK_FAKE_SIM");
  void* lib = path ? dlopen(path, RTLD_NOW) : NULL;
  if (!lib) return 100;
  sim_launch = (launch_fn)dlsym(lib, "dk_sim_launch");
  initialised = sim_launch != NULL;
  return initialised ? 0 : 100;
}

static int get_function(void** f, const char* name) {
  if (!initialised) return 3;
  if (n_names == 16) return 1;
  strncpy(names[n_names], name, 63);
  *f = (void*)(intptr_t)(n_names + 1);
  ++n_names;
  return 0;
}

static int launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                  unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  intptr_t id = (intptr_t)f;
  if (!initialised || id < 1 || id > n_names || gy != 1 || gz != 1 || by != 1 || bz != 1 || extra)
    return 1;
  fake_last_grid = gx; fake_last_block = bx; fake_last_shared = shared; fake_last_stream = stream;
  ++fake_launches;
  return sim_launch(names[id - 1], gx, bx, params) ? 719 : 0;
}

/* CUDA driver API */
int cuInit(unsigned flags) { return flags ? 1 : init(); }
int cuDeviceGet(int* dev, int ordinal) { if (!initialised) return 3; *dev = ordinal; return ordinal == 0 ? 0 : 101; }
int cuDevicePrimaryCtxRetain(void** ctx, int dev) { *ctx = (void*)(intptr_t)(0x1000 + dev); return 0; }
int cuCtxPushCurrent_v2(void* ctx) { (void)ctx; ++fake_push_depth; return 0; }
int cuCtxPopCurrent_v2(void** ctx) { *ctx = NULL; --fake_push_depth; return 0; }
int cuModuleLoadData(void** module, const void* image) {
  if (!initialised) return 3;
  *module = (void*)0x2000;
  return memcmp(image, "FATBIN", 6) == 0 ? 0 : 200; /* CUDA_ERROR_INVALID_IMAGE */
}
int cuModuleGetFunction(void** f, void* module, const char* name) { (void)module; return get_function(f, name); }
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}
int cuGetErrorName(int status, const char** name) {
  *name = status == 200 ? "CUDA_ERROR_INVALID_IMAGE" : status == 719 ? "CUDA_ERROR_LAUNCH_FAILED" : "CUDA_ERROR_UNKNOWN";
  return 0;
}

/* HIP module API */
int hipInit(unsigned flags) { return flags ? 1 : init(); }
int hipModuleLoadData(void** module, const void* image) {
  if (!initialised) return 3;
  *module = (void*)0x3000;
  return memcmp(image, "\x7f" "ELF", 4) == 0 ? 0 : 200;
}
int hipModuleGetFunction(void** f, void* module, const char* name) { (void)module; return get_function(f, name); }
int hipModuleLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}
const char* hipGetErrorName(int status) { return status == 200 ? "hipErrorInvalidImage" : "hipErrorUnknown"; }

// pybind11 module distro_kernels._C: a thin layer over the C ABI (no logic here).
// Buffers arrive as integer addresses of contiguous tensors; the GIL is released while the
// kernels run. Each call returns the dk_status code; Python turns codes into exceptions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "distro_kernels.h"
#include "../csrc/cpu/cpu_features.h"

namespace py = pybind11;
using Geometry = std::tuple<int64_t, int64_t, int64_t, int32_t, int32_t>;

namespace {

dk_geometry to_geometry(const Geometry& g) {
  return dk_geometry{std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<4>(g)};
}

template <typename T>
T* ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }

// dk_demo_step and dk_demo_step_coeffs share one signature (states in either layout).
template <decltype(&dk_demo_step) Step>
int demo_step(const std::vector<uintptr_t>& states, const std::vector<uintptr_t>& grads,
              const std::vector<int32_t>& grad_dtypes, const std::vector<Geometry>& geoms, float beta,
              float lr, int32_t k, uintptr_t indices, uintptr_t values, int32_t threads) {
  const size_t n = states.size();
  if (grads.size() != n || grad_dtypes.size() != n || geoms.size() != n) return int(DK_ERR_ARGUMENT);
  std::vector<float*> state_ptrs(n);
  std::vector<const void*> grad_ptrs(n);
  std::vector<dk_geometry> geometries(n);
  for (size_t t = 0; t < n; ++t) {
    state_ptrs[t] = ptr<float>(states[t]);
    grad_ptrs[t] = ptr<const void>(grads[t]);
    geometries[t] = to_geometry(geoms[t]);
  }
  return Step(static_cast<int32_t>(n), state_ptrs.data(), grad_ptrs.data(), grad_dtypes.data(),
              geometries.data(), beta, lr, k, ptr<int32_t>(indices), ptr<float>(values), threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "distro_kernels CPU kernels (C ABI over raw buffers)";
  py::call_guard<py::gil_scoped_release> no_gil;

  m.def("canonical_basis", [](int32_t c, uintptr_t out) { return dk_canonical_basis(c, ptr<float>(out)); }, no_gil);
  m.def("dct", [](uintptr_t x, int32_t dtype, const Geometry& g, uintptr_t coeffs, int32_t threads) {
    const dk_geometry geometry = to_geometry(g);
    return dk_dct(ptr<const void>(x), dtype, &geometry, ptr<float>(coeffs), threads);
  }, no_gil);
  m.def("idct", [](uintptr_t coeffs, const Geometry& g, uintptr_t x, int32_t threads) {
    const dk_geometry geometry = to_geometry(g);
    return dk_idct(ptr<const float>(coeffs), &geometry, ptr<float>(x), threads);
  }, no_gil);
  m.def("compress", [](uintptr_t x, int32_t dtype, const Geometry& g, int32_t k_eff, uintptr_t indices,
                       uintptr_t values, int32_t threads) {
    const dk_geometry geometry = to_geometry(g);
    return dk_compress(ptr<const void>(x), dtype, &geometry, k_eff, ptr<int32_t>(indices),
                       ptr<float>(values), threads);
  }, no_gil);
  m.def("demo_step", &demo_step<dk_demo_step>, no_gil);
  m.def("demo_step_coeffs", &demo_step<dk_demo_step_coeffs>, no_gil);
  m.def("decompress_many", [](const std::vector<uintptr_t>& indices, const std::vector<uintptr_t>& values,
                              int32_t value_codec, const std::vector<Geometry>& geoms,
                              const std::vector<int32_t>& k_effs, int32_t reduce, bool apply_sign,
                              const std::vector<uintptr_t>& outs, int32_t threads,
                              const std::vector<uintptr_t>& params, const std::vector<float>& keeps,
                              const std::vector<float>& steps) {
    const size_t n_tensors = geoms.size();
    const bool step = !params.empty();  // dk_decompress_many_apply: params[t] stepped by outs[t]
    if (!n_tensors || k_effs.size() != n_tensors || outs.size() != n_tensors ||
        indices.size() != values.size() || indices.size() % n_tensors ||
        (step && (params.size() != n_tensors || keeps.size() != n_tensors || steps.size() != n_tensors)))
      return std::make_tuple(int(DK_ERR_ARGUMENT), -1, -1);
    std::vector<const int32_t*> index_ptrs(indices.size());
    std::vector<const void*> value_ptrs(values.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      index_ptrs[i] = ptr<const int32_t>(indices[i]);
      value_ptrs[i] = ptr<const void>(values[i]);
    }
    std::vector<dk_geometry> geometries(n_tensors);
    std::vector<float*> out_ptrs(n_tensors), param_ptrs(params.size());
    for (size_t t = 0; t < n_tensors; ++t) {
      geometries[t] = to_geometry(geoms[t]);
      out_ptrs[t] = ptr<float>(outs[t]);
    }
    for (size_t t = 0; t < params.size(); ++t) param_ptrs[t] = ptr<float>(params[t]);
    int32_t bad_tensor = -1, bad_peer = -1;
    const int status = dk_decompress_many_apply(
        static_cast<int32_t>(n_tensors), static_cast<int32_t>(indices.size() / n_tensors), index_ptrs.data(),
        value_ptrs.data(), value_codec, geometries.data(), k_effs.data(), reduce, apply_sign, out_ptrs.data(),
        step ? param_ptrs.data() : nullptr, step ? keeps.data() : nullptr, step ? steps.data() : nullptr,
        threads, &bad_tensor, &bad_peer);
    return std::make_tuple(status, static_cast<int>(bad_tensor), static_cast<int>(bad_peer));
  }, no_gil);
  m.def("pack_signs", [](uintptr_t values, int64_t n, uintptr_t out, int32_t threads) {
    return dk_pack_signs(ptr<const float>(values), n, ptr<uint8_t>(out), threads);
  }, no_gil);
  m.def("has_nonfinite", [](uintptr_t x, int32_t dtype, int64_t n, int32_t threads) {
    int32_t found = 0;
    const int status = dk_has_nonfinite(ptr<const void>(x), dtype, n, threads, &found);
    return std::make_tuple(status, found);
  }, no_gil);
  m.def("apply_update", [](uintptr_t p, uintptr_t update, int64_t n, float keep, int32_t decay, float step,
                           int32_t threads) {
    return dk_apply_update(ptr<float>(p), ptr<const float>(update), n, keep, decay, step, threads);
  }, no_gil);
  m.def("rice_stats", [](uintptr_t indices, int64_t rows, int32_t k, int32_t max_r) {
    int64_t sum_gaps = 0, unary_bits[32] = {};
    const int status = dk_rice_stats(ptr<const int32_t>(indices), rows, k, max_r, &sum_gaps, unary_bits);
    return std::make_tuple(status, sum_gaps, std::vector<int64_t>(unary_bits, unary_bits + (max_r >= 0 && max_r <= 31 ? max_r + 1 : 0)));
  }, no_gil);
  m.def("rice_write", [](uintptr_t indices, int64_t rows, int32_t k, int32_t r, uintptr_t unary,
                         int64_t unary_bytes, uintptr_t remainders, int64_t remainder_bytes) {
    return dk_rice_write(ptr<const int32_t>(indices), rows, k, r, ptr<uint8_t>(unary), unary_bytes,
                         ptr<uint8_t>(remainders), remainder_bytes);
  }, no_gil);
  m.def("unpack_signs", [](uintptr_t packed, int64_t n, uintptr_t out, int32_t threads) {
    return dk_unpack_signs(ptr<const uint8_t>(packed), n, ptr<float>(out), threads);
  }, no_gil);
  m.def("status_string", [](int32_t status) { return std::string(dk_status_string(status)); });
  m.def("kernel_variant", []() { return std::string(dk_kernel_variant()); });
  m.def("cpu_features", []() {
    py::dict features;
    features["kernel_variant"] = std::string(dk_kernel_variant());
#if defined(__x86_64__) || defined(__i386__)
    features["avx2"] = dk::x86_features().avx2;
    features["fma"] = dk::x86_features().fma;
    features["avx512f"] = dk::x86_features().avx512f;
#endif
    features["threading"] = "thread pool";  // csrc/cpu/thread_pool.cpp (not OpenMP)
    return features;
  });
}

/* distro_kernels C ABI: the CPU kernels on raw buffers, for any trainer that can call C.
 *
 * Tensors are dense row-major. A tensor's geometry (SPEC section 1) is
 * (batch, chunks_m * cm, chunks_n * cn); 1-D tensors use batch = chunks_m = cm = 1.
 * Chunk c (row-major over batch, chunk row, chunk column) owns E = cm * cn coefficients;
 * coefficient (u, v) is at u * cn + v. All functions return DK_OK or an error status and
 * write nothing to caller-visible outputs they do not own on a validation error.
 */
#ifndef DISTRO_KERNELS_H
#define DISTRO_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dk_status {
  DK_OK = 0,
  DK_ERR_ARGUMENT = 1,    /* bad geometry, k, dtype, codec, ... */
  DK_ERR_INDEX_RANGE = 2, /* an index outside [0, E) */
  DK_ERR_INDEX_ORDER = 3, /* indices of a chunk not strictly ascending */
  DK_ERR_VALUE = 4,       /* a value not finite or with |v| >= 2^64 */
  DK_ERR_ALLOC = 5
};

enum dk_dtype { DK_F32 = 0, DK_BF16 = 1, DK_F16 = 2 };
enum dk_reduce { DK_REDUCE_MEAN = 0, DK_REDUCE_SUM_OVER_PEERS = 1 };
enum dk_value_codec { DK_VALUES_F32 = 0, DK_VALUES_SIGN = 1 };

#define DK_MAX_CHUNK 256

typedef struct dk_geometry {
  int64_t batch, chunks_m, chunks_n;
  int32_t cm, cn;
} dk_geometry;

/* The canonical float32 DCT-II basis C[u * c + i] of SPEC section 2. */
int dk_canonical_basis(int32_t c, float* out);

/* Forward chunked DCT: coeffs is (n_chunks, E) float32. Input dtype is a dk_dtype. */
int dk_dct(const void* x, int32_t dtype, const dk_geometry* g, float* coeffs, int32_t threads);

/* Inverse with SPEC 4.3's canonical folds (bit-exact): coeffs (n_chunks, E) -> x. */
int dk_idct(const float* coeffs, const dk_geometry* g, float* x, int32_t threads);

/* DCT + per-chunk top-k_eff by |X| (ties: smaller index); indices ascending per chunk. */
int dk_compress(const void* x, int32_t dtype, const dk_geometry* g, int32_t k_eff,
                int32_t* indices, float* values, int32_t threads);

/* Fused DeMo encode over n_tensors tensors (SPEC section 3), in place on the float32 states:
 * delta = beta * delta + lr * grad; select on DCT(delta); delta -= IDCT(selected).
 * Outputs are flat, tensor after tensor, min(k, E) entries per chunk. */
int dk_demo_step(int32_t n_tensors, float* const* deltas, const void* const* grads,
                 const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,
                 int32_t k, int32_t* indices, float* values, int32_t threads);

/* dk_demo_step with the momentum kept in the DCT domain (SPEC 3 allows it): states[t] holds
 * tensor t's chunk coefficients, (n_chunks, E) float32 as dk_dct writes them. Per chunk:
 * X = beta * S + lr * DCT(grad); select on X; S = X with the selected entries zeroed.
 * The values are the selected X; dk_idct of a state gives the momentum in the tensor's layout. */
int dk_demo_step_coeffs(int32_t n_tensors, float* const* states, const void* const* grads,
                        const int32_t* grad_dtypes, const dk_geometry* geoms, float beta, float lr,
                        int32_t k, int32_t* indices, float* values, int32_t threads);

/* SPEC section 4 decode of n_peers payloads for one tensor, in peer order. values[p] is
 * float32 (DK_VALUES_F32) or pack_signs bytes (DK_VALUES_SIGN). On a content error the
 * first offending peer is written to *bad_peer and out is left as it was (every chunk is
 * validated before any output is written). */
int dk_decompress(int32_t n_peers, const int32_t* const* indices, const void* const* values,
                  int32_t value_codec, const dk_geometry* g, int32_t k_eff, int32_t reduce,
                  int32_t apply_sign, float* out, int32_t threads, int32_t* bad_peer);

/* dk_decompress over n_tensors tensors in one parallel pass (a whole model's payloads).
 * indices and values hold n_tensors * n_peers pointers, tensor-major: [t * n_peers + p].
 * On a content error the lowest offending tensor, then peer, is reported. */
int dk_decompress_many(int32_t n_tensors, int32_t n_peers, const int32_t* const* indices,
                       const void* const* values, int32_t value_codec, const dk_geometry* geoms,
                       const int32_t* k_effs, int32_t reduce, int32_t apply_sign, float* const* outs,
                       int32_t threads, int32_t* bad_tensor, int32_t* bad_peer);

/* dk_decompress_many, then the optimizer's step on each tensor t while its decoded chunks
 * are in cache: params[t] = params[t] * keeps[t] + steps[t] * outs[t], each operation
 * rounded (keeps[t] == 1: params[t] + steps[t] * outs[t]), as dk_apply_update computes it.
 * params[t] has outs[t]'s layout and overlaps no other buffer. On a content error nothing
 * is written, params included; on DK_ERR_ALLOC (a thread's scratch), some chunks may be. */
int dk_decompress_many_apply(int32_t n_tensors, int32_t n_peers, const int32_t* const* indices,
                             const void* const* values, int32_t value_codec, const dk_geometry* geoms,
                             const int32_t* k_effs, int32_t reduce, int32_t apply_sign, float* const* outs,
                             float* const* params, const float* keeps, const float* steps, int32_t threads,
                             int32_t* bad_tensor, int32_t* bad_peer);

/* Sign bits, LSB-first: value i is bit i % 8 of byte i / 8; bit = signbit. */
int dk_pack_signs(const float* values, int64_t n, uint8_t* out, int32_t threads);
int dk_unpack_signs(const uint8_t* packed, int64_t n, float* out, int32_t threads);

/* Rice coding of a payload's chunk indices (docs/wire-format.md): rows chunks of k strictly
 * ascending indices; gap g_0 = i_0, g_j = i_j - i_{j-1} - 1. dk_rice_stats gives the sum of
 * the gaps and, for r in [0, max_r] (max_r <= 31), unary_bits[r] = rows * k + sum (g >> r).
 * dk_rice_write writes the unary stream (each gap: g >> r zero bits, then a one bit) and the
 * r-bit remainder stream, both LSB-first, into buffers of exactly ceil(unary_bits[r] / 8)
 * and ceil(rows * k * r / 8) bytes. DK_ERR_INDEX_ORDER: indices not ascending. */
int dk_rice_stats(const int32_t* indices, int64_t rows, int32_t k, int32_t max_r, int64_t* sum_gaps,
                  int64_t* unary_bits);
int dk_rice_write(const int32_t* indices, int64_t rows, int32_t k, int32_t r, uint8_t* unary,
                  int64_t unary_bytes, uint8_t* remainders, int64_t remainder_bytes);

/* The optimizer's passes (distro_kernels/optim/demo.py). dk_has_nonfinite: *found = 1 if
 * any of the n values (dtype) is an inf or NaN, else 0. dk_apply_update: p = p * keep (when
 * decay) + step * update, each operation rounded, none fused; for a sign update (+-1 or 0)
 * that is torch's p.mul_(keep); p.add_(update, alpha=step) bit for bit. */
int dk_has_nonfinite(const void* x, int32_t dtype, int64_t n, int32_t threads, int32_t* found);
int dk_apply_update(float* p, const float* update, int64_t n, float keep, int32_t decay, float step,
                    int32_t threads);

const char* dk_status_string(int32_t status);
/* "avx2" or "generic": which compiled kernel set this CPU runs. */
const char* dk_kernel_variant(void);

#ifdef __cplusplus
}
#endif

#endif /* DISTRO_KERNELS_H */

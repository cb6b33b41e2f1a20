/*
 * bnnpi: the C kernels of pi_backend (C99; NEON on ARM, portable C elsewhere).
 *
 * Conventions (shared with the JAX side, ARCHITECTURE.md):
 *   - A +-1 tensor is stored as bits: +1 <-> bit 1, -1 <-> bit 0, bit = (x >= 0),
 *     so sign(0) = +1 (and sign(-0.0) = +1; NaN gives bit 0).
 *   - Bits are packed along the LAST axis into uint64 words: element j of each
 *     group of 64 goes to bit j of one word (little bit order). A last axis of n
 *     elements takes bnn_words(n) = ceil(n / 64) words; the padding bits of the
 *     last word are written as 0 by every kernel here. Kernels that read packed
 *     data ignore padding bits, except the binary conv, which rejects packed
 *     weights with nonzero padding bits (BNN_ERR_PADDING).
 *     On a little-endian machine the bytes of a packed row equal the JAX side's
 *     uint8 packing (np.packbits(x >= 0, bitorder="little")), zero-padded to a
 *     multiple of 8 bytes.
 *   - Every buffer is contiguous, row-major (C order), without strides; tensors
 *     are NHWC (activations) and HWIO (conv weights), dense weights (n_in, n_out).
 *   - Sizes are int64_t. Every function returns BNN_OK (0) or a negative error
 *     code and never writes outside the buffers its sizes describe.
 *   - float16 values are passed as their IEEE binary16 bit patterns (uint16_t).
 */
#ifndef BNNPI_H
#define BNNPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BNN_ABI_VERSION 5

/* Error codes. */
#define BNN_OK 0
#define BNN_ERR_SIZE (-1)     /* a negative, zero-where-not-allowed or inconsistent size */
#define BNN_ERR_NULL (-2)     /* a NULL buffer where data is needed */
#define BNN_ERR_OVERFLOW (-3) /* sizes whose product does not fit */
#define BNN_ERR_NOMEM (-4)    /* scratch memory could not be allocated */
#define BNN_ERR_ARG (-5)      /* a bad non-size argument (bits, bias, momentum, ...) */
#define BNN_ERR_PADDING (-6)  /* packed weights with nonzero padding bits */

int bnn_abi_version(void);
const char *bnn_error_string(int code);

/* Popcount implementation used by the XNOR kernels (GEMM, binary conv); all give
 * identical results. 0 = automatic (the fastest one this CPU has), 1 = portable C
 * (SWAR), 2 = scalar hardware popcount (x86 POPCNT, or NEON vcnt on ARM),
 * 3 = x86 AVX2, 4 = x86 AVX-512BW (pshufb table lookups; CPU features are checked at
 * run time, the library is built for the baseline instruction set).
 * bnn_set_popcount_impl returns BNN_ERR_ARG when the choice is unavailable. It is a
 * process-wide setting: do not change it while another thread runs a kernel. */
int bnn_set_popcount_impl(int impl);
int bnn_popcount_impl(void); /* the one in use: 1 .. 4 */
int bnn_popcount_impl_available(int impl); /* 1 or 0; impl 1 .. 4 */
/* "portable", "x86-popcnt" or "neon" (2), "x86-avx2", "x86-avx512bw"; NULL for an impl
 * this build does not have. _name: of the one in use. */
const char *bnn_popcount_impl_name_of(int impl);
const char *bnn_popcount_impl_name(void);

/* Implementation of the float kernels (float x sign GEMMs, float16 conversions, Adam,
 * the batch-norm and sign-STE rows). 0 = automatic, 1 = portable C (4-lane vectors:
 * NEON, SSE or plain C), 3 = x86 AVX2 + F16C + FMA, 4 = x86 AVX-512F (+ AVX2, F16C,
 * FMA: AVX-512F GEMM blocks and batch-norm rows); checked at run time. All give
 * bit-identical results except bnn_t_matmul (real x^T dy), whose 3 and 4 use FMA (one
 * rounding per multiply-add; x * +-1 is exact, so the sign GEMMs are unaffected).
 * BNN_ERR_ARG when unavailable; process-wide, like bnn_set_popcount_impl. */
int bnn_set_float_impl(int impl);
int bnn_float_impl(void); /* the one in use: 1, 3 or 4 */
int bnn_float_impl_available(int impl); /* 1 or 0 */
/* "portable" / "neon" / "sse" (1), "x86-avx2" (3), "x86-avx512f" (4); NULL otherwise. */
const char *bnn_float_impl_name_of(int impl);

/* ---- packing (pack.c) ---------------------------------------------------- */
int64_t bnn_words(int64_t n);
/* x: (rows, n) float32 -> out: (rows, bnn_words(n)) words, bit = x >= 0. */
int bnn_pack(const float *x, int64_t rows, int64_t n, uint64_t *out);
/* packed: (rows, bnn_words(n)) -> out: (rows, n) float32 +-1. */
int bnn_unpack(const uint64_t *packed, int64_t rows, int64_t n, float *out);
/* w: (k, n) float32 -> out: (n, bnn_words(k)): sign(w)^T packed, i.e. pack(w.T). */
int bnn_pack_transposed(const float *w, int64_t k, int64_t n, uint64_t *out);
/* The same two for float16 x (bit patterns; bit = x >= 0, so -0.0 -> 1, NaN -> 0). */
int bnn_pack_f16(const uint16_t *x, int64_t rows, int64_t n, uint64_t *out);
int bnn_pack_f16_transposed(const uint16_t *w, int64_t k, int64_t n, uint64_t *out);
/* Conv weights for bnn_binary_conv2d: w (kh, kw, c_in, c_out) float32 HWIO ->
 * out: (c_out, kh * kw * bnn_words(c_in)), i.e. pack(w.transpose(3, 0, 1, 2)). */
int bnn_pack_conv_weights(const float *w, int64_t kh, int64_t kw, int64_t c_in,
                          int64_t c_out, uint64_t *out);

/* ---- binary GEMM by XNOR + popcount (gemm.c) ------------------------------ */
/* a: (m, bnn_words(k)), b: (n, bnn_words(k)), both packed +-1 rows of k elements.
 * y[i, j] = sum_t a[i, t] * b[j, t] = k - 2 * popcount(a_i XOR b_j) (padding bits
 * masked). y: (m, n), int32 or float32. k <= INT32_MAX. */
int bnn_xnor_gemm_i32(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                      int64_t k, int32_t *y);
int bnn_xnor_gemm_f32(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                      int64_t k, float *y);

/* ---- float x sign GEMMs (matmul.c) ---------------------------------------- */
/* Dense forward, first layer: y (m, n) = x (m, k) . sign(w), w (k, n) float32. */
int bnn_sign_matmul(const float *x, const float *w, int64_t m, int64_t k, int64_t n,
                    float *y);
/* Same with sign(w) packed along n: w_packed (k, bnn_words(n)) = pack(w). */
int bnn_sign_matmul_packed(const float *x, const uint64_t *w_packed, int64_t m,
                           int64_t k, int64_t n, float *y);
/* Dense backward to the input: dx (m, k) = dy (m, n) . sign(w)^T, w (k, n). */
int bnn_matmul_sign_t(const float *dy, const float *w, int64_t m, int64_t k, int64_t n,
                      float *dx);
int bnn_matmul_sign_t_packed(const float *dy, const uint64_t *w_packed, int64_t m,
                             int64_t k, int64_t n, float *dx);
/* Dense backward to the weights: dw (k, n) = sign(x)^T . dy with x_packed
 * (m, bnn_words(k)) and dy (m, n); the float variant uses the real x (m, k). */
int bnn_sign_t_matmul(const uint64_t *x_packed, const float *dy, int64_t m, int64_t k,
                      int64_t n, float *dw);
int bnn_t_matmul(const float *x, const float *dy, int64_t m, int64_t k, int64_t n,
                 float *dw);
/* One dense layer's whole weight update, fused (the training step's default path):
 * for each block of `rows` input rows [r0, r0 + rb) of the kernel (k, n), in order,
 *   dw = X[:, r0:r0+rb]^T . dy            (into dw_scratch, rows * n floats)
 *   g  = sign_scaled(dw, w[r0:r0+rb], c16)  (bnn_sign_scaled_grad, into g_scratch)
 *   Adam on w, adam_m, adam_v rows [r0, r0 + rb) with g (bnn_adam_f16_g16),
 * the same bits as those calls one after the other. X by x_kind: 0 = the real x float32
 * (m, k) (as bnn_t_matmul); 1 = uint8 pixels (m, k), float32(u) * float32(1 / 127.5) - 1
 * (converted a block at a time into x_scratch, m * rows floats); 2 = sign(x) packed,
 * uint64 (m, bnn_words(k)) (as bnn_sign_t_matmul; rows a multiple of 64). x_scratch
 * may be NULL unless x_kind is 1. c16: a non-negative float16 (bit 15 clear). */
int bnn_dense_weight_update(const void *x, int x_kind, const float *dy, int64_t m,
                            int64_t k, int64_t n, int64_t rows, uint16_t c16, uint16_t *w,
                            uint16_t *adam_m, uint16_t *adam_v, int64_t step, float lr,
                            float b1, float b2, float eps, float *dw_scratch,
                            uint16_t *g_scratch, float *x_scratch);

/* ---- convolutions (conv.c) ----------------------------------------------------
 * Geometry: x (batch, h, w, c_in) NHWC; kernel kh x kw; strides sh, sw; zero padding
 * pt, pb (top, bottom), pl, pr (left, right); output (batch, oh, ow, c_out) with
 * oh = (h + pt + pb - kh) / sh + 1, ow likewise. Padded positions contribute 0
 * (zero padding of the layer input, as on the JAX side), never sign(0) = +1. */
int bnn_conv_output_size(int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                         int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                         int64_t *oh, int64_t *ow);
/* Packed im2col: patches (batch * oh * ow, kh * kw * bnn_words(c_in)); tap (ky, kx)
 * of an output position owns words [(ky * kw + kx) * wc, ... + wc). Taps that fall in
 * the zero padding are all-zero words; valid (batch * oh * ow, kh * kw), may be NULL,
 * gets 1 for taps inside the input and 0 for padded ones. */
int bnn_im2col_packed(const uint64_t *x_packed, int64_t batch, int64_t h, int64_t w,
                      int64_t c_in, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, uint64_t *patches,
                      uint8_t *valid);
/* Binary conv: y = conv(x, sign(W)) with x +-1 packed, x_packed (batch, h, w,
 * bnn_words(c_in)) and w_packed from bnn_pack_conv_weights. Computed by XNOR-popcount
 * over packed im2col rows (blocks of up to 256 output positions). Zero padding: a padded tap is
 * all-zero words in the patch, so XOR with the weights counts popcount(w_tap) there;
 * that count (precomputed per output channel and tap) is subtracted again, and
 * y = K_valid - 2 * popcount over valid taps, K_valid = (valid taps) * c_in. */
int bnn_binary_conv2d_i32(const uint64_t *x_packed, const uint64_t *w_packed,
                          int64_t batch, int64_t h, int64_t w, int64_t c_in,
                          int64_t c_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pb, int64_t pl, int64_t pr, int32_t *y);
int bnn_binary_conv2d_f32(const uint64_t *x_packed, const uint64_t *w_packed,
                          int64_t batch, int64_t h, int64_t w, int64_t c_in,
                          int64_t c_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pb, int64_t pl, int64_t pr, float *y);
/* Inference after a binary conv, in one call: bits of y >= threshold[c_out] (int32 per
 * output channel; a folded batch norm + sign) packed along c_out, y the binary conv
 * above, -> (batch, oh, ow, words(c_out)) uint64, padding bits 0. pool = 1: first the 2x2
 * max pool (stride 2, floor) of y -> (batch, oh / 2, ow / 2, words(c_out)); pool = 0:
 * none. BNN_ERR_ARG for another pool. */
int bnn_binary_conv2d_sign(const uint64_t *x_packed, const uint64_t *w_packed,
                           const int32_t *threshold, int64_t batch, int64_t h, int64_t w,
                           int64_t c_in, int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int pool, uint64_t *y);
/* First-layer conv with real x: y = conv(x, sign(W)), x float32 (batch, h, w, c_in),
 * w_sign (kh, kw, c_in, bnn_words(c_out)) = pack(W) of the HWIO weights. */
int bnn_sign_conv2d(const float *x, const uint64_t *w_sign, int64_t batch, int64_t h,
                    int64_t w, int64_t c_in, int64_t c_out, int64_t kh, int64_t kw,
                    int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                    int64_t pr, float *y);
/* Backward to the input: dx (batch, h, w, c_in) = transposed conv of dy
 * (batch, oh, ow, c_out) with sign(W), w_sign = pack(W) as above. */
int bnn_conv2d_backward_input(const float *dy, const uint64_t *w_sign, int64_t batch,
                              int64_t h, int64_t w, int64_t c_in, int64_t c_out,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pb, int64_t pl, int64_t pr, float *dx);
/* Backward to the weights: dw_raw (kh, kw, c_in, c_out) = correlation of sign(x)
 * (x_packed (batch, h, w, bnn_words(c_in))) or of the real x (float variant) with dy. */
int bnn_conv2d_backward_weight_packed(const uint64_t *x_packed, const float *dy,
                                      int64_t batch, int64_t h, int64_t w, int64_t c_in,
                                      int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                                      int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                                      int64_t pr, float *dw);
int bnn_conv2d_backward_weight_f32(const float *x, const float *dy, int64_t batch,
                                   int64_t h, int64_t w, int64_t c_in, int64_t c_out,
                                   int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                   int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                                   float *dw);

/* ---- L1 batch norm (batchnorm.c) ------------------------------------------------
 * x: (n, c), statistics per channel over the n rows (n = batch, or batch*h*w).
 * Training forward: mean = mean(x); psi = mean|x - mean|; scale = psi + eps;
 * x_hat = (x - mean) / scale; y = x_hat + beta. Outputs y (n, c), mean (c), scale (c),
 * sign_bits (n, bnn_words(c)) = pack(x_hat), scale16 (c) = float16(scale),
 * m16 (c) = float16(mean|x_hat|). Sums are accumulated in double. When
 * running_mean and running_scale are not NULL they are updated in place:
 * r = momentum * r + (1 - momentum) * batch_stat. n >= 1, eps >= 0,
 * 0 <= momentum <= 1. */
int bnn_bn_l1_forward(const float *x, const float *beta, int64_t n, int64_t c, float eps,
                      float *y, float *mean, float *scale, uint64_t *sign_bits,
                      uint16_t *scale16, uint16_t *m16, float *running_mean,
                      float *running_scale, double momentum);
/* Evaluation: y = (x - mean) / scale + beta. */
int bnn_bn_eval(const float *x, const float *beta, const float *mean, const float *scale,
                int64_t n, int64_t c, float *y);
/* sign(bnn_bn_eval(x)) packed (bits (n, words(c))): the same bits as bnn_pack of
 * bnn_bn_eval's y, without writing y. */
int bnn_bn_eval_sign(const float *x, const float *beta, const float *mean,
                     const float *scale, int64_t n, int64_t c, uint64_t *bits);
/* Proposed backward: dy' = float16(dy) when dy_to_f16 (the default gradient
 * quantizer), else dy; g = dy' / scale16; s = +-1 from sign_bits;
 * dx = g - mean(g) - s * (mean(g * s) * m16); dbeta = sum(dy'). */
int bnn_bn_l1_backward(const float *dy, const uint64_t *sign_bits, const uint16_t *scale16,
                       const uint16_t *m16, int64_t n, int64_t c, int dy_to_f16, float *dx,
                       float *dbeta);

/* ---- activation and pooling (act.c) ---------------------------------------------- */
/* Sign with STE: y = +-1 (bit = x >= 0; y may be NULL), mask (rows, bnn_words(n)) =
 * pack(|x| <= clip). */
int bnn_sign_ste_forward(const float *x, int64_t rows, int64_t n, float clip, float *y,
                         uint64_t *mask);
/* dx = dy where the mask bit is set, else +0.0; dx may be dy (in place). */
int bnn_sign_ste_backward(const float *dy, const uint64_t *mask, int64_t rows, int64_t n,
                          float *dx);
/* 2x2 max pool, stride 2, VALID: x (b, h, w, c) -> y (b, h/2, w/2, c); an odd last
 * row / column is dropped. mask (b, 2*(h/2), 2*(w/2), bnn_words(c)): one bit per
 * input of the cropped region, exactly one set per window: the first maximum in
 * row-major window order (a window holding NaN: y = NaN, the last position). */
int bnn_max_pool2x2_forward(const float *x, int64_t b, int64_t h, int64_t w, int64_t c,
                            float *y, uint64_t *mask);
/* dx (b, h, w, c): dy routed to the masked input of each window, 0 elsewhere
 * (including a dropped odd row / column). */
int bnn_max_pool2x2_backward(const float *dy, const uint64_t *mask, int64_t b, int64_t h,
                             int64_t w, int64_t c, float *dx);

/* ---- gradient quantizer (po2.c) -------------------------------------------------
 * Power-of-two quantizer (METHOD.md), per tensor over n float32 values:
 *   b = -round(log2 max|g|) + bias; v = g * 2^b;
 *   e = clip(round(log2|v|), -2^(bits-1), 2^(bits-1) - 1); q = sign(v) 2^e 2^-b,
 * computed exactly in integer exponent arithmetic (as quantizers/gradient.py Po2):
 * nearest rounding in the log domain (up iff the mantissa >= sqrt 2), zeros flushed
 * (reference_zeros = 1: zeros give +2^(-2^(bits-1) - b)), NaN/inf unchanged and left
 * out of the max, a tensor without finite nonzero values scaled as if max|g| = 1.
 * random: NULL for nearest rounding, else n uniform uint32 draws for stochastic
 * rounding (round up iff (random[i] >> 9) < mantissa field). out may equal g.
 * 1 <= bits <= 8, -256 <= bias <= 256. */
int bnn_po2(const float *g, int64_t n, int bits, int bias, int reference_zeros,
            const uint32_t *random, float *out);

/* ---- float16 and Adam (half.c, adam.c) ------------------------------------------- */
/* IEEE binary16 <-> binary32, round to nearest even, subnormals, inf and NaN kept. */
int bnn_f32_to_f16(const float *x, int64_t n, uint16_t *out);
int bnn_f16_to_f32(const uint16_t *x, int64_t n, float *out);
/* One Adam step (as optax.adam, eps_root = 0) on n parameters stored as float16:
 *   m = (1 - b1) g + b1 m; v = (1 - b2) g^2 + b2 v;
 *   w = w - lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps),
 * computed in float32, stored back rounded to float16. step >= 1 (the count after
 * this update). g is float32, or float16 in the _g16 variant. */
int bnn_adam_f16(uint16_t *w, uint16_t *m, uint16_t *v, const float *g, int64_t n,
                 int64_t step, float lr, float b1, float b2, float eps);
int bnn_adam_f16_g16(uint16_t *w, uint16_t *m, uint16_t *v, const uint16_t *g, int64_t n,
                     int64_t step, float lr, float b1, float b2, float eps);
/* factored_adam's elementwise step (pi_backend/optimizers.py) on a kernel seen as
 * (np, ni, nj), all float16 bits: u = (g * f1) * f2, where f1 (f2) is read at
 * [p * nj + j] when f1_on_j (f2_on_j) is nonzero, else at [p * ni + i];
 *   m = float16(b1 m + one_b1 u);  w = float16(w + (m / correction) * (-lr)),
 * in float32, m read back as stored. */
int bnn_factored_adam_f16(uint16_t *w, uint16_t *m, const uint16_t *g, int64_t np,
                          int64_t ni, int64_t nj, const float *f1, int f1_on_j,
                          const float *f2, int f2_on_j, float b1, float one_b1,
                          float correction, float lr);
/* factored_adam's statistics (pi_backend/optimizers.py) of a kernel seen as (np, ni, nj),
 * g float16 bits (g16) or float32 (g32; the other NULL): with s = g * g + 1e-30f in
 * float32, si[p * nj + j] = the sum of s over i, in order of i, and sj[p * ni + i] = the
 * sum of s over j in this order: lane sums l_q over the j = q mod 8 below the last
 * multiple of 8 of nj, in order of j, then ((l0 + l1) + (l2 + l3)) + ((l4 + l5) +
 * (l6 + l7)), then the other j in order. */
int bnn_factored_square_sums(const uint16_t *g16, const float *g32, int64_t np,
                             int64_t ni, int64_t nj, float *si, float *sj);
/* The sign_scaled weight gradient in float16 bits: out[i] = c16 with the sign bit set
 * when !(dw[i] >= 0), or 0 when |w[i]| > 1 or NaN (w float16 bits: (w & 0x7fff) > 0x3c00). */
int bnn_sign_scaled_grad(const float *dw, const uint16_t *w, int64_t n, uint16_t c16,
                         uint16_t *out);

#ifdef __cplusplus
}
#endif
#endif /* BNNPI_H */

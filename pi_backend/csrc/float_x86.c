/*
 * x86 fast paths of the float kernels (AVX2 + F16C + FMA, AVX-512F), chosen at run time
 * (bnn_set_float_impl): the library is built for plain x86-64 and each function here
 * carries its own target attribute.
 *   - float16 <-> float32 with F16C (vcvtph2ps / vcvtps2ph, round to nearest even: the
 *     same bits as the portable bit manipulation of internal.h, NaN included: groups
 *     holding an inf or NaN float16 are converted by the portable code, as vcvtph2ps
 *     would quiet a signalling NaN);
 *   - Adam on float16 storage, 8 elements at a time, the same float32 operations in the
 *     same order as adam.c (mul, add, div, sqrt are IEEE exact roundings, no FMA), so
 *     the results are bit-identical (a NaN stays a NaN; its payload may differ);
 *   - +-1 floats from sign bits (bnn__unpack_row) with AVX2 compares / AVX-512 masks;
 *   - float16 sign bits (bnn_pack_f16, bnn_pack_f16_transposed) and the sign_scaled
 *     gradient (bnn_sign_scaled_grad) by AVX2 integer compares and bit operations only,
 *     the same bits as the portable loops;
 *   - the sign activation's straight-through estimator rows (AVX2);
 *   - the L1 batch-norm rows (AVX2, AVX-512F): the same float32 operations per element
 *     and the same double sums per channel in row order, bit-identical;
 *   - the register blocks of the float GEMM (sgemm.c) with 8-lane (AVX2) or 16-lane
 *     (AVX-512F) vectors and FMA: 4 rows x 16 or 32 columns, summed in the same order
 *     over K as the portable kernel. For the float x sign products x * (+-1) is exact, so
 *     FMA gives the portable kernel's bits; the real x^T dy (bnn_t_matmul) rounds once
 *     per multiply-add (as OpenBLAS does), a float32 rounding difference the tests allow.
 * valgrind hides AVX-512, so under valgrind the AVX2 level is the one that runs. The
 * AVX-512 paths also run emulated, on any AVX2 CPU, in a test build (x86_intrin.h).
 */
#include "internal.h"

#if BNN_HAVE_X86_SIMD
#include <cpuid.h>

#include "x86_intrin.h"

int bnn__x86_float_level(void) {
  unsigned a, b, c, d;
  int level = BNN__IMPL_PORTABLE;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2")) return level; /* also checks the OS saves YMM */
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C) || !(c & bit_FMA)) return level;
  level = BNN__IMPL_AVX2;
  if (BNN_CPU_HAS_AVX512("avx512f")) level = BNN__IMPL_AVX512;
  return level;
}

#define F16C_ATTR __attribute__((target("avx2,f16c")))

F16C_ATTR void bnn__x86_f32_to_f16(const float *x, int64_t n, uint16_t *out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(void *)(out + i), h);
  }
  for (; i < n; ++i) out[i] = bnn__f32_to_f16(x[i]);
}

F16C_ATTR void bnn__x86_f16_to_f32(const uint16_t *x, int64_t n, float *out) {
  int64_t i = 0;
  const __m128i expmask = _mm_set1_epi16(0x7c00);
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(x + i));
    /* vcvtph2ps quiets a signalling NaN; the portable conversion keeps its bits */
    if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, expmask), expmask))) {
      int k;
      for (k = 0; k < 8; ++k) out[i + k] = bnn__f16_to_f32(x[i + k]);
      continue;
    }
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = bnn__f16_to_f32(x[i]);
}

/* The sign bits of 64 float16 values (bit patterns) as one packed word: bit j set iff
 * row[j] <= 0x7c00 (+0 ... +inf) or row[j] == 0x8000 (-0.0), as pack.c's f16_word. */
__attribute__((target("avx2"))) uint64_t bnn__x86_f16_word64(const uint16_t *row) {
  const __m256i inf = _mm256_set1_epi16(0x7c00), negzero = _mm256_set1_epi16((short)0x8000);
  const __m256i zero = _mm256_setzero_si256();
  uint64_t word = 0;
  int q;
  for (q = 0; q < 4; ++q) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(row + 16 * q));
    /* as signed 16-bit: 0 <= x <= 0x7c00, or x == 0x8000 */
    const __m256i out_of_range = _mm256_or_si256(_mm256_cmpgt_epi16(x, inf),
                                                 _mm256_cmpgt_epi16(zero, x));
    const __m256i keep = _mm256_or_si256(_mm256_andnot_si256(out_of_range,
                                                             _mm256_set1_epi16(-1)),
                                         _mm256_cmpeq_epi16(x, negzero));
    /* 16-bit lanes -> bytes [k0..7, k0..7 | k8..15, k8..15] -> 16 bits in order */
    const uint32_t mm = (uint32_t)_mm256_movemask_epi8(_mm256_packs_epi16(keep, keep));
    word |= (uint64_t)((mm & 0xffu) | ((mm >> 8) & 0xff00u)) << (16 * q);
  }
  return word;
}

/* bnn_sign_scaled_grad, 16 elements at a time, elements [0, n - n % 16); returns how
 * many it did. Only comparisons and bit operations: the scalar loop's bits
 * (dw >= 0 ordered, so NaN gives the sign bit; |w| bits > 0x3c00 give 0). */
F16C_ATTR int64_t bnn__x86_sign_scaled(const float *dw, const uint16_t *w, int64_t n,
                                       uint16_t c16, uint16_t *out) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i sign = _mm256_set1_epi16((short)0x8000), c = _mm256_set1_epi16((short)c16);
  const __m256i abs_mask = _mm256_set1_epi16(0x7fff), one = _mm256_set1_epi16(0x3c00);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i ge0 = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(dw + i), zero,
                                                          _CMP_GE_OQ));
    const __m256i ge1 = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(dw + i + 8), zero,
                                                          _CMP_GE_OQ));
    /* 32-bit all-ones / zeros -> 16-bit, in element order */
    const __m256i ge = _mm256_permute4x64_epi64(_mm256_packs_epi32(ge0, ge1), 0xd8);
    const __m256i wa = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(w + i)),
                                        abs_mask);
    const __m256i drop = _mm256_cmpgt_epi16(wa, one); /* wa <= 0x7fff: signed is fine */
    const __m256i val = _mm256_or_si256(_mm256_andnot_si256(ge, sign), c);
    _mm256_storeu_si256((__m256i *)(void *)(out + i), _mm256_andnot_si256(drop, val));
  }
  return i;
}

static inline F16C_ATTR __m256 load_h8(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

static inline F16C_ATTR void store_h8(uint16_t *p, __m256 v) {
  _mm_storeu_si128((__m128i *)(void *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

/* Elements [0, n - n % 8); returns how many it did. */
F16C_ATTR int64_t bnn__x86_adam(uint16_t *w, uint16_t *m, uint16_t *v, const float *g32,
                                const uint16_t *g16, int64_t n, float lr, float b1, float b2,
                                float eps, float bc1, float bc2) {
  const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2);
  const __m256 vob1 = _mm256_set1_ps(1.0f - b1), vob2 = _mm256_set1_ps(1.0f - b2);
  const __m256 vbc1 = _mm256_set1_ps(bc1), vbc2 = _mm256_set1_ps(bc2);
  const __m256 veps = _mm256_set1_ps(eps), vlr = _mm256_set1_ps(lr);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = g32 ? _mm256_loadu_ps(g32 + i) : load_h8(g16 + i);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vob1, g), _mm256_mul_ps(vb1, load_h8(m + i)));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(vob2, _mm256_mul_ps(g, g)),
                                    _mm256_mul_ps(vb2, load_h8(v + i)));
    const __m256 upd = _mm256_div_ps(_mm256_div_ps(mi, vbc1),
                                     _mm256_add_ps(_mm256_sqrt_ps(_mm256_div_ps(vi, vbc2)), veps));
    const __m256 wi = _mm256_sub_ps(load_h8(w + i), _mm256_mul_ps(vlr, upd));
    store_h8(m + i, mi);
    store_h8(v + i, vi);
    store_h8(w + i, wi);
  }
  return i;
}

/* A row of factored_adam's step, 8 elements at a time, the operations of adam.c's loop
 * in the same order (no FMA): bit-identical. */
F16C_ATTR int64_t bnn__x86_factored_row(uint16_t *w, uint16_t *m, const uint16_t *g,
                                        int64_t n, const float *f1, float s1, const float *f2,
                                        float s2, float b1, float one_b1, float correction,
                                        float neg_lr) {
  const __m256 vb1 = _mm256_set1_ps(b1), vob1 = _mm256_set1_ps(one_b1);
  const __m256 vcorr = _mm256_set1_ps(correction), vnlr = _mm256_set1_ps(neg_lr);
  const __m256 vs1 = _mm256_set1_ps(s1), vs2 = _mm256_set1_ps(s2);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = f1 ? _mm256_loadu_ps(f1 + j) : vs1;
    const __m256 b = f2 ? _mm256_loadu_ps(f2 + j) : vs2;
    const __m256 u = _mm256_mul_ps(_mm256_mul_ps(load_h8(g + j), a), b);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, load_h8(m + j)), _mm256_mul_ps(vob1, u));
    store_h8(m + j, mi);
    store_h8(w + j, _mm256_add_ps(_mm256_mul_ps(_mm256_div_ps(load_h8(m + j), vcorr), vnlr),
                                  load_h8(w + j)));
  }
  return j;
}

/* A row of bnn_factored_square_sums (g16 or g32): lane q of the vector is adam.c's lane
 * sum q; the same operations in the same order (no FMA): bit-identical. */
F16C_ATTR int64_t bnn__x86_square_sums_row(const uint16_t *g16, const float *g32, int64_t n,
                                           float *col, float *lane) {
  const __m256 tiny = _mm256_set1_ps(1e-30f);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = g16 ? load_h8(g16 + j) : _mm256_loadu_ps(g32 + j);
    const __m256 v = _mm256_add_ps(_mm256_mul_ps(x, x), tiny);
    _mm256_storeu_ps(col + j, _mm256_add_ps(_mm256_loadu_ps(col + j), v));
    acc = _mm256_add_ps(acc, v);
  }
  _mm256_storeu_ps(lane, acc);
  return j;
}

/* bnn__unpack_row with vectors: +-1.0f from the bits of row (n elements). */
/* All ones in lane q where bit j + q of bits is set, else 0 (j a multiple of 8). */
static inline __attribute__((target("avx2"))) __m256i bit_lanes8(const uint64_t *bits,
                                                                 int64_t j) {
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i byte = _mm256_set1_epi32((int)((bits[j >> 6] >> (j & 63)) & 0xffu));
  return _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane), lane);
}

__attribute__((target("avx2"))) static void unpack_avx2(const uint64_t *row, int64_t n,
                                                        float *out) {
  const __m256 one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(out + j, _mm256_blendv_ps(mone, one, _mm256_castsi256_ps(bit_lanes8(row, j))));
  }
  for (; j < n; ++j) out[j] = bnn__get_bit(row, j) ? 1.0f : -1.0f;
}

BNN_AVX512_TARGET("avx512f") static void unpack_avx512(const uint64_t *row, int64_t n,
                                                       float *out) {
  const __m512 one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __mmask16 k = (__mmask16)((row[j >> 6] >> (j & 63)) & 0xffffu);
    _mm512_storeu_ps(out + j, _mm512_mask_blend_ps(k, mone, one));
  }
  for (; j < n; ++j) out[j] = bnn__get_bit(row, j) ? 1.0f : -1.0f;
}

void bnn__x86_unpack_row(int level, const uint64_t *row, int64_t n, float *out) {
  if (level >= BNN__IMPL_AVX512) {
    unpack_avx512(row, n, out);
  } else {
    unpack_avx2(row, n, out);
  }
}

/* ---- L1 batch norm rows (batchnorm.c), AVX-512F ------------------------------------ */
/* The same float32 operations per element as batchnorm.c, and the per-channel double
 * sums in the same (row) order, 16 channels at a time: bit-identical. */

#define BN_ATTR BNN_AVX512_TARGET("avx512f")

static inline BN_ATTR __mmask16 tail16(int64_t left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* acc[j .. j + 16) += (double)v over the lanes of k. */
static inline BN_ATTR void acc_pd(double *acc, __m512 v, __mmask16 k) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __mmask8 klo = (__mmask8)(k & 0xff), khi = (__mmask8)(k >> 8);
  _mm512_mask_storeu_pd(acc, klo, _mm512_add_pd(_mm512_maskz_loadu_pd(klo, acc), lo));
  _mm512_mask_storeu_pd(acc + 8, khi, _mm512_add_pd(_mm512_maskz_loadu_pd(khi, acc + 8), hi));
}

static inline BN_ATTR __m512 abs_ps(__m512 v) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

/* v where the bit of k is set, -v where not. */
static inline BN_ATTR __m512 flip_unless(__m512 v, __mmask16 k) {
  const __m512i u = _mm512_castps_si512(v);
  return _mm512_castsi512_ps(
      _mm512_mask_xor_epi32(u, (__mmask16)~k, u, _mm512_set1_epi32((int)0x80000000u)));
}

/* acc[j] += x[j] (mean == NULL) or |x[j] - mean[j]|, j < c. */
static BN_ATTR void bn512_sum_row(const float *x, const float *mean, int64_t c, double *acc) {
  int64_t j;
  for (j = 0; j < c; j += 16) {
    const __mmask16 k = tail16(c - j);
    __m512 v = _mm512_maskz_loadu_ps(k, x + j);
    if (mean) v = abs_ps(_mm512_sub_ps(v, _mm512_maskz_loadu_ps(k, mean + j)));
    acc_pd(acc + j, v, k);
  }
}

/* x_hat = (x - mean) / scale; its sign bits into bits (whole words written); acc += |x_hat|;
 * y = x_hat + beta. */
static BN_ATTR void bn512_forward_row(const float *x, const float *mean, const float *scale,
                                      const float *beta, int64_t c, double *acc, float *y,
                                      uint64_t *bits) {
  int64_t j0, j;
  for (j0 = 0; j0 < c; j0 += 64) {
    uint64_t word = 0;
    for (j = j0; j < c && j < j0 + 64; j += 16) {
      const __mmask16 k = tail16(c - j);
      const __m512 xh = _mm512_div_ps(
          _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), _mm512_maskz_loadu_ps(k, mean + j)),
          _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), k, scale + j));
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(k, xh, _mm512_setzero_ps(), _CMP_GE_OQ);
      word |= (uint64_t)ge << (j - j0);
      acc_pd(acc + j, abs_ps(xh), k);
      _mm512_mask_storeu_ps(y + j, k, _mm512_add_ps(xh, _mm512_maskz_loadu_ps(k, beta + j)));
    }
    bits[j0 >> 6] = word;
  }
}

static inline BN_ATTR __mmask16 bits16(const uint64_t *bits, int64_t j) {
  return (__mmask16)((bits[j >> 6] >> (j & 63)) & 0xffffu);
}

/* Backward sums: g = d / scl; acc[j] += g, acc[c + j] += (bit ? g : -g), acc[2c + j] += d. */
static BN_ATTR void bn512_backward_sums(const float *d, const uint64_t *bits, const float *scl,
                                        int64_t c, double *acc) {
  int64_t j;
  for (j = 0; j < c; j += 16) {
    const __mmask16 k = tail16(c - j);
    const __m512 dv = _mm512_maskz_loadu_ps(k, d + j);
    const __m512 g = _mm512_div_ps(dv, _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), k, scl + j));
    acc_pd(acc + j, g, k);
    acc_pd(acc + c + j, flip_unless(g, bits16(bits, j)), k);
    acc_pd(acc + 2 * c + j, dv, k);
  }
}

/* dx = (d / scl - mg) - (bit ? kk : -kk). */
static BN_ATTR void bn512_backward_dx(const float *d, const uint64_t *bits, const float *scl,
                                      const float *mg, const float *kk, int64_t c, float *dx) {
  int64_t j;
  for (j = 0; j < c; j += 16) {
    const __mmask16 k = tail16(c - j);
    const __m512 g = _mm512_div_ps(_mm512_maskz_loadu_ps(k, d + j),
                                   _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), k, scl + j));
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(g, _mm512_maskz_loadu_ps(k, mg + j)),
                                   flip_unless(_mm512_maskz_loadu_ps(k, kk + j), bits16(bits, j)));
    _mm512_mask_storeu_ps(dx + j, k, r);
  }
}

/* ---- the sign activation's straight-through estimator rows (act.c), AVX2 ----------- */
/* Elements [0, n - n % 8) of a row (returned); act.c does the rest. The same bits as
 * act.c: mask bit |x| <= clip (0 for NaN), y = +1 where x >= 0 else -1 (NaN: -1), and
 * dx = dy where the mask bit is set, else +0.0. Mask bits are ORed into their words,
 * which the caller has cleared. */

__attribute__((target("avx2"))) int64_t bnn__x86_ste_forward_row(const float *x, int64_t n,
                                                                 float clip, float *y,
                                                                 uint64_t *mask) {
  const __m256 vclip = _mm256_set1_ps(clip), one = _mm256_set1_ps(1.0f);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t j;
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    const __m256 in = _mm256_cmp_ps(_mm256_and_ps(v, absmask), vclip, _CMP_LE_OQ);
    mask[j >> 6] |= (uint64_t)(unsigned)_mm256_movemask_ps(in) << (j & 63);
    if (y) {
      const __m256 ge = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ);
      _mm256_storeu_ps(y + j, _mm256_blendv_ps(_mm256_set1_ps(-1.0f), one, ge));
    }
  }
  return j;
}

__attribute__((target("avx2"))) int64_t bnn__x86_ste_backward_row(const float *dy,
                                                                  const uint64_t *mask,
                                                                  int64_t n, float *dx) {
  int64_t j;
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 set = _mm256_castsi256_ps(bit_lanes8(mask, j));
    _mm256_storeu_ps(dx + j, _mm256_and_ps(_mm256_loadu_ps(dy + j), set));
  }
  return j;
}

/* ---- L1 batch norm rows (batchnorm.c), AVX2 ----------------------------------------- */
/* The same, 8 channels at a time, for channels [0, c - c % 8) (returned); batchnorm.c
 * does the rest. Sign bits are ORed into their words, which the caller has cleared.
 * Both sets are called through the bnn__x86_bn_* rows below. */

#define BN2_ATTR __attribute__((target("avx2")))

/* acc[j .. j + 8) += (double)v */
static inline BN2_ATTR void acc_pd8(double *acc, __m256 v) {
  _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc),
                                      _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
  _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4),
                                          _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}

static inline BN2_ATTR __m256 abs8(__m256 v) {
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
}

/* v where bit j + lane of bits is set, -v where not (j a multiple of 8). */
static inline BN2_ATTR __m256 flip_unless8(__m256 v, const uint64_t *bits, int64_t j) {
  return _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_andnot_si256(
                              bit_lanes8(bits, j), _mm256_set1_epi32((int)0x80000000u))));
}

static BN2_ATTR int64_t bn8_sum_row(const float *x, const float *mean, int64_t c,
                                    double *acc) {
  int64_t j;
  for (j = 0; j + 8 <= c; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    if (mean) v = abs8(_mm256_sub_ps(v, _mm256_loadu_ps(mean + j)));
    acc_pd8(acc + j, v);
  }
  return j;
}

static BN2_ATTR int64_t bn8_forward_row(const float *x, const float *mean,
                                        const float *scale, const float *beta, int64_t c,
                                        double *acc, float *y, uint64_t *bits) {
  int64_t j;
  for (j = 0; j + 8 <= c; j += 8) {
    const __m256 xh = _mm256_div_ps(
        _mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(mean + j)),
        _mm256_loadu_ps(scale + j));
    const unsigned ge = (unsigned)_mm256_movemask_ps(
        _mm256_cmp_ps(xh, _mm256_setzero_ps(), _CMP_GE_OQ));
    bits[j >> 6] |= (uint64_t)ge << (j & 63);
    acc_pd8(acc + j, abs8(xh));
    _mm256_storeu_ps(y + j, _mm256_add_ps(xh, _mm256_loadu_ps(beta + j)));
  }
  return j;
}

static BN2_ATTR int64_t bn8_backward_sums(const float *d, const uint64_t *bits,
                                          const float *scl, int64_t c, double *acc) {
  int64_t j;
  for (j = 0; j + 8 <= c; j += 8) {
    const __m256 dv = _mm256_loadu_ps(d + j);
    const __m256 g = _mm256_div_ps(dv, _mm256_loadu_ps(scl + j));
    acc_pd8(acc + j, g);
    acc_pd8(acc + c + j, flip_unless8(g, bits, j));
    acc_pd8(acc + 2 * c + j, dv);
  }
  return j;
}

static BN2_ATTR int64_t bn8_backward_dx(const float *d, const uint64_t *bits,
                                        const float *scl, const float *mg, const float *kk,
                                        int64_t c, float *dx) {
  int64_t j;
  for (j = 0; j + 8 <= c; j += 8) {
    const __m256 g = _mm256_div_ps(_mm256_loadu_ps(d + j), _mm256_loadu_ps(scl + j));
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(g, _mm256_loadu_ps(mg + j)),
                                   flip_unless8(_mm256_loadu_ps(kk + j), bits, j));
    _mm256_storeu_ps(dx + j, r);
  }
  return j;
}

/* The batch-norm rows at `level` (BNN__IMPL_AVX2 or BNN__IMPL_AVX512): channels
 * [0, returned) done, all of them with AVX-512F, up to the last multiple of 8 with AVX2. */
int64_t bnn__x86_bn_sum_row(int level, const float *x, const float *mean, int64_t c,
                            double *acc) {
  if (level < BNN__IMPL_AVX512) return bn8_sum_row(x, mean, c, acc);
  bn512_sum_row(x, mean, c, acc);
  return c;
}

int64_t bnn__x86_bn_forward_row(int level, const float *x, const float *mean,
                                const float *scale, const float *beta, int64_t c,
                                double *acc, float *y, uint64_t *bits) {
  if (level < BNN__IMPL_AVX512) return bn8_forward_row(x, mean, scale, beta, c, acc, y, bits);
  bn512_forward_row(x, mean, scale, beta, c, acc, y, bits);
  return c;
}

int64_t bnn__x86_bn_backward_sums(int level, const float *d, const uint64_t *bits,
                                  const float *scl, int64_t c, double *acc) {
  if (level < BNN__IMPL_AVX512) return bn8_backward_sums(d, bits, scl, c, acc);
  bn512_backward_sums(d, bits, scl, c, acc);
  return c;
}

int64_t bnn__x86_bn_backward_dx(int level, const float *d, const uint64_t *bits,
                                const float *scl, const float *mg, const float *kk,
                                int64_t c, float *dx) {
  if (level < BNN__IMPL_AVX512) return bn8_backward_dx(d, bits, scl, mg, kk, c, dx);
  bn512_backward_dx(d, bits, scl, mg, kk, c, dx);
  return c;
}

/* ---- float GEMM register blocks ------------------------------------------------- */
/* C[0..4, 0..NR) (+)= sum over p of A[i][p] * B[p][j], A[i][p] = A[i * si + p * sp]. */

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8)
#define SG_UNROLL _Pragma("GCC unroll 8")
#else
#define SG_UNROLL
#endif

/* C[0..R, 0..8 NV) (+)= sum over p of A[r][p] * B[p][j] (A[r][p] = A[r * si + p * sp]),
 * R <= 6 rows by NV <= 2 vectors of 8 columns, the last vector's columns under `mask`
 * when `masked` (a last strip narrower than 8: nothing outside the mask is read or
 * written). Instantiated with constant R, NV, masked below: 6 x 2 holds 12
 * accumulators, enough to keep both FMA units busy through their latency (4 x 2, with
 * 8, ran at 65% of OpenBLAS on an AMD Zen 3), and the 2 vectors of B and a broadcast
 * fit the other 4 of the 16 registers. */
__attribute__((target("avx2,fma"), always_inline)) static inline void sg_block(
    const int R, const int NV, const int masked, __m256i mask, int64_t K, const float *A,
    int64_t si, int64_t sp, const float *B, int64_t ldb, float *C, int64_t ldc,
    int accumulate) {
  __m256 acc[6][2];
  int64_t p;
  int r, v;
  SG_UNROLL for (r = 0; r < R; ++r) {
    SG_UNROLL for (v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  }
  for (p = 0; p < K; ++p) {
    const float *b = B + p * ldb;
    __m256 bv[2];
    SG_UNROLL for (v = 0; v < NV; ++v) {
      bv[v] = masked && v == NV - 1 ? _mm256_maskload_ps(b + 8 * v, mask)
                                    : _mm256_loadu_ps(b + 8 * v);
    }
    SG_UNROLL for (r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(A + r * si + p * sp);
      SG_UNROLL for (v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  SG_UNROLL for (r = 0; r < R; ++r) {
    SG_UNROLL for (v = 0; v < NV; ++v) {
      float *c = C + r * ldc + 8 * v;
      if (masked && v == NV - 1) {
        const __m256 x = accumulate ? _mm256_add_ps(acc[r][v], _mm256_maskload_ps(c, mask))
                                    : acc[r][v];
        _mm256_maskstore_ps(c, mask, x);
      } else {
        _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(acc[r][v], _mm256_loadu_ps(c))
                                       : acc[r][v]);
      }
    }
  }
}

typedef void (*sg_fn)(__m256i, int64_t, const float *, int64_t, int64_t, const float *,
                      int64_t, float *, int64_t, int);

#define SG_KERNEL(R, NV, MASKED)                                                          \
  __attribute__((target("avx2,fma"))) static void sg_##R##_##NV##_##MASKED(             \
      __m256i mask, int64_t K, const float *A, int64_t si, int64_t sp, const float *B,  \
      int64_t ldb, float *C, int64_t ldc, int accumulate) {                             \
    sg_block(R, NV, MASKED, mask, K, A, si, sp, B, ldb, C, ldc, accumulate);            \
  }
#define SG_KERNELS(R) SG_KERNEL(R, 2, 0) SG_KERNEL(R, 2, 1) SG_KERNEL(R, 1, 0) SG_KERNEL(R, 1, 1)
SG_KERNELS(1)
SG_KERNELS(2)
SG_KERNELS(3)
SG_KERNELS(4)
SG_KERNELS(5)
SG_KERNELS(6)
#define SG_ROW(R) {sg_##R##_2_0, sg_##R##_2_1, sg_##R##_1_0, sg_##R##_1_1}
/* [rows - 1][strip]: strips of 16 columns, 9..15, 8, 1..7 */
static const sg_fn SG_KERNELS_OF[6][4] = {SG_ROW(1), SG_ROW(2), SG_ROW(3),
                                           SG_ROW(4), SG_ROW(5), SG_ROW(6)};

/* Rows [r0, r1) x columns [c0, c1) of C by the AVX2 blocks: 6 rows at a time, strips of
 * 16 columns, the last strip narrower (masked when not a multiple of 8). */
__attribute__((target("avx2,fma"))) static void sg_region(
    int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t K, const float *A, int64_t si,
    int64_t sp, const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {
  int64_t i, j;
  for (i = r0; i < r1; i += 6) {
    const int rows = r1 - i < 6 ? (int)(r1 - i) : 6;
    for (j = c0; j < c1; j += 16) {
      const int cols = c1 - j < 16 ? (int)(c1 - j) : 16, tail = cols % 8;
      const int strip = cols == 16 ? 0 : cols > 8 ? 1 : cols == 8 ? 2 : 3;
      const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lanes);
      SG_KERNELS_OF[rows - 1][strip](mask, K, A + i * si, si, sp, B + j, ldb,
                                     C + i * ldc + j, ldc, accumulate);
    }
  }
}

BNN_AVX512_TARGET("avx512f,fma") static void block_4x32_avx512(
    int64_t K, const float *A, int64_t si, int64_t sp, const float *B, int64_t ldb, float *C,
    int64_t ldc, int accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00;
  const float *a0 = A, *a1 = A + si, *a2 = A + 2 * si, *a3 = A + 3 * si;
  int64_t p;
  for (p = 0; p < K; ++p) {
    const float *b = B + p * ldb;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    __m512 a = _mm512_set1_ps(a0[p * sp]);
    c00 = _mm512_fmadd_ps(a, b0, c00);
    c01 = _mm512_fmadd_ps(a, b1, c01);
    a = _mm512_set1_ps(a1[p * sp]);
    c10 = _mm512_fmadd_ps(a, b0, c10);
    c11 = _mm512_fmadd_ps(a, b1, c11);
    a = _mm512_set1_ps(a2[p * sp]);
    c20 = _mm512_fmadd_ps(a, b0, c20);
    c21 = _mm512_fmadd_ps(a, b1, c21);
    a = _mm512_set1_ps(a3[p * sp]);
    c30 = _mm512_fmadd_ps(a, b0, c30);
    c31 = _mm512_fmadd_ps(a, b1, c31);
  }
  if (accumulate) {
    c00 = _mm512_add_ps(c00, _mm512_loadu_ps(C));
    c01 = _mm512_add_ps(c01, _mm512_loadu_ps(C + 16));
    c10 = _mm512_add_ps(c10, _mm512_loadu_ps(C + ldc));
    c11 = _mm512_add_ps(c11, _mm512_loadu_ps(C + ldc + 16));
    c20 = _mm512_add_ps(c20, _mm512_loadu_ps(C + 2 * ldc));
    c21 = _mm512_add_ps(c21, _mm512_loadu_ps(C + 2 * ldc + 16));
    c30 = _mm512_add_ps(c30, _mm512_loadu_ps(C + 3 * ldc));
    c31 = _mm512_add_ps(c31, _mm512_loadu_ps(C + 3 * ldc + 16));
  }
  _mm512_storeu_ps(C, c00);
  _mm512_storeu_ps(C + 16, c01);
  _mm512_storeu_ps(C + ldc, c10);
  _mm512_storeu_ps(C + ldc + 16, c11);
  _mm512_storeu_ps(C + 2 * ldc, c20);
  _mm512_storeu_ps(C + 2 * ldc + 16, c21);
  _mm512_storeu_ps(C + 3 * ldc, c30);
  _mm512_storeu_ps(C + 3 * ldc + 16, c31);
}

/* All of C with the vector blocks: at AVX-512 the 4 x 32 blocks where they fit, the
 * AVX2 blocks elsewhere. Each element's sum runs over p in order from 0, as in sgemm.c. */
void bnn__x86_sgemm(int level, int64_t M, int64_t N, int64_t K, const float *A, int64_t si,
                    int64_t sp, const float *B, int64_t ldb, float *C, int64_t ldc,
                    int accumulate) {
  int64_t i, j, m4 = 0, j32 = 0;
  if (level >= BNN__IMPL_AVX512) {
    m4 = M - M % 4;
    j32 = N - N % 32;
    for (i = 0; i < m4 && j32 > 0; i += 4) {
      for (j = 0; j < j32; j += 32) {
        block_4x32_avx512(K, A + i * si, si, sp, B + j, ldb, C + i * ldc + j, ldc,
                          accumulate);
      }
    }
    if (j32 == 0) m4 = 0;
  }
  /* the rest: columns [j32, N) of rows [0, m4), and every column of rows [m4, M) */
  if (j32 < N) sg_region(0, m4, j32, N, K, A, si, sp, B, ldb, C, ldc, accumulate);
  sg_region(m4, M, 0, N, K, A, si, sp, B, ldb, C, ldc, accumulate);
}

#else
/* ISO C forbids an empty translation unit. */
typedef int bnn__float_x86_unused;
#endif

/*
 * The one module that owns the bit layout (bnnpi.h): +1 <-> bit 1, -1 <-> bit 0,
 * bit = (x >= 0), packed along the last axis into uint64 words, element j of a group
 * of 64 in bit j, padding bits 0.
 */
#include "internal.h"

int64_t bnn_words(int64_t n) { return n < 0 ? 0 : bnn__words(n); }

/* Bits of 4 consecutive values, bit q = (x[q] >= 0): NaN gives 0, -0.0 gives 1. */
#if defined(__ARM_NEON)
#include <arm_neon.h>
static inline uint64_t nibble4(const float *x) {
  static const uint32_t weights[4] = {1u, 2u, 4u, 8u};
  uint32x4_t m = vandq_u32(vcgeq_f32(vld1q_f32(x), vdupq_n_f32(0.0f)), vld1q_u32(weights));
  uint32x2_t s = vadd_u32(vget_low_u32(m), vget_high_u32(m));
  return vget_lane_u32(vpadd_u32(s, s), 0);
}
#elif defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
static inline uint64_t nibble4(const float *x) {
  return (uint64_t)_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x), _mm_setzero_ps()));
}
#else
static inline uint64_t nibble4(const float *x) {
  return (uint64_t)((x[0] >= 0.0f) | (x[1] >= 0.0f) << 1 | (x[2] >= 0.0f) << 2 |
                    (x[3] >= 0.0f) << 3);
}
#endif

void bnn__pack_row(const float *x, int64_t n, uint64_t *out) {
  int64_t full = n / 64, wi;
  int r = (int)(n % 64), j;
  for (wi = 0; wi < full; ++wi) {
    const float *xs = x + wi * 64;
    uint64_t w0 = 0, w1 = 0;  /* two independent chains */
    for (j = 0; j < 64; j += 8) {
      w0 |= nibble4(xs + j) << j;
      w1 |= nibble4(xs + j + 4) << (j + 4);
    }
    out[wi] = w0 | w1;
  }
  if (r) {
    const float *xs = x + full * 64;
    uint64_t word = 0;
    for (j = 0; j + 4 <= r; j += 4) word |= nibble4(xs + j) << j;
    for (; j < r; ++j) word |= (uint64_t)(xs[j] >= 0.0f) << j;
    out[full] = word;
  }
}

void bnn__unpack_row(const uint64_t *row, int64_t n, float *out) {
  int64_t wi, words = bnn__words(n);
#if BNN_HAVE_X86_SIMD
  const int level = bnn__float_level();
  if (level >= BNN__IMPL_AVX2) {
    bnn__x86_unpack_row(level, row, n, out);
    return;
  }
#endif
  for (wi = 0; wi < words; ++wi) {
    uint64_t word = row[wi];
    int64_t base = wi * 64;
    int j, cnt = (int)(n - base < 64 ? n - base : 64);
    /* branch-free (random signs defeat branch prediction): +-1.0f differ only in the
     * sign bit, 1.0f = 0x3f800000, -1.0f = 0xbf800000 */
    for (j = 0; j < cnt; ++j) {
      uint32_t u = UINT32_C(0xbf800000) ^ ((uint32_t)((word >> j) & 1u) << 31);
      memcpy(out + base + j, &u, sizeof u);
    }
  }
}

int bnn_pack(const float *x, int64_t rows, int64_t n, uint64_t *out) {
  int64_t total, wn, r;
  int err;
  if (rows < 0 || n < 0) return BNN_ERR_SIZE;
  wn = bnn__words(n);
  if ((err = bnn__count(&total, sizeof(float), rows, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), rows, wn, 1, 1)) != BNN_OK) return err;
  if (total == 0) return BNN_OK;
  if (!x || !out) return BNN_ERR_NULL;
  for (r = 0; r < rows; ++r) bnn__pack_row(x + r * n, n, out + r * wn);
  return BNN_OK;
}

int bnn_unpack(const uint64_t *packed, int64_t rows, int64_t n, float *out) {
  int64_t total, wn, r;
  int err;
  if (rows < 0 || n < 0) return BNN_ERR_SIZE;
  wn = bnn__words(n);
  if ((err = bnn__count(&total, sizeof(float), rows, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), rows, wn, 1, 1)) != BNN_OK) return err;
  if (total == 0) return BNN_OK;
  if (!packed || !out) return BNN_ERR_NULL;
  for (r = 0; r < rows; ++r) bnn__unpack_row(packed + r * wn, n, out + r * n);
  return BNN_OK;
}

int bnn_pack_transposed(const float *w, int64_t k, int64_t n, uint64_t *out) {
  int64_t total, wk, i, p;
  int err;
  if (k < 0 || n < 0) return BNN_ERR_SIZE;
  wk = bnn__words(k);
  if ((err = bnn__count(&total, sizeof(float), k, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), n, wk, 1, 1)) != BNN_OK) return err;
  if (total == 0) return BNN_OK;
  if (!w || !out) return BNN_ERR_NULL;
  memset(out, 0, (size_t)total * sizeof(uint64_t));
  for (p = 0; p < k; ++p) {           /* row p of w is column p of w^T */
    const float *wp = w + p * n;
    for (i = 0; i < n; ++i) bnn__or_bit(out + i * wk, p, wp[i] >= 0.0f);
  }
  return BNN_OK;
}

/* bit = (w >= 0) on float16 bit patterns: +0 .. +inf and -0.0 (NaN: 0). */
static inline uint64_t f16_nonneg(uint16_t u) { return (uint64_t)(u <= 0x7c00u || u == 0x8000u); }

/* Word wi of the packed row of n float16 values. */
static inline uint64_t f16_word(const uint16_t *row, int64_t n, int64_t wi, int avx2) {
  const int64_t base = wi * 64;
  const int cnt = (int)(n - base < 64 ? n - base : 64);
  uint64_t word = 0;
  int j;
#if BNN_HAVE_X86_SIMD
  if (avx2 && cnt == 64) return bnn__x86_f16_word64(row + base);
#else
  (void)avx2;
#endif
  for (j = 0; j < cnt; ++j) word |= f16_nonneg(row[base + j]) << j;
  return word;
}

static int f16_avx2(void) {
#if BNN_HAVE_X86_SIMD
  return bnn__float_level() >= BNN__IMPL_AVX2;
#else
  return 0;
#endif
}

int bnn_pack_f16(const uint16_t *x, int64_t rows, int64_t n, uint64_t *out) {
  int64_t total, wn, r, wi;
  int err, avx2;
  if (rows < 0 || n < 0) return BNN_ERR_SIZE;
  wn = bnn__words(n);
  if ((err = bnn__count(&total, sizeof(uint16_t), rows, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), rows, wn, 1, 1)) != BNN_OK) return err;
  if (total == 0) return BNN_OK;
  if (!x || !out) return BNN_ERR_NULL;
  avx2 = f16_avx2();
  for (r = 0; r < rows; ++r) {
    for (wi = 0; wi < wn; ++wi) out[r * wn + wi] = f16_word(x + r * n, n, wi, avx2);
  }
  return BNN_OK;
}

int bnn_pack_f16_transposed(const uint16_t *w, int64_t k, int64_t n, uint64_t *out) {
  int64_t total, wk, wn, p0, wj, r, cc;
  uint64_t t[64];
  int err, avx2;
  if (k < 0 || n < 0) return BNN_ERR_SIZE;
  wk = bnn__words(k);
  wn = bnn__words(n);
  if ((err = bnn__count(&total, sizeof(uint16_t), k, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), n, wk, 1, 1)) != BNN_OK) return err;
  if (total == 0) return BNN_OK;
  if (!w || !out) return BNN_ERR_NULL;
  /* blocks of 64 rows x 64 columns: pack the rows, transpose the 64 x 64 bits */
  avx2 = f16_avx2();
  for (p0 = 0; p0 < k; p0 += 64) {
    const int64_t rows = k - p0 < 64 ? k - p0 : 64;
    for (wj = 0; wj < wn; ++wj) {
      const int64_t cols = n - wj * 64 < 64 ? n - wj * 64 : 64;
      for (r = 0; r < 64; ++r) t[r] = r < rows ? f16_word(w + (p0 + r) * n, n, wj, avx2) : 0;
      bnn__transpose64(t);
      for (cc = 0; cc < cols; ++cc) out[(wj * 64 + cc) * wk + p0 / 64] = t[cc];
    }
  }
  return BNN_OK;
}

int bnn_pack_conv_weights(const float *w, int64_t kh, int64_t kw, int64_t c_in,
                          int64_t c_out, uint64_t *out) {
  int64_t total, wc, taps, t, ci, co, pw;
  int err;
  if (kh < 1 || kw < 1 || c_in < 1 || c_out < 1) return BNN_ERR_SIZE;
  wc = bnn__words(c_in);
  if ((err = bnn__count(&total, sizeof(float), kh, kw, c_in, c_out)) != BNN_OK) return err;
  if ((err = bnn__count(&total, sizeof(uint64_t), c_out, kh, kw, wc)) != BNN_OK) return err;
  if (!w || !out) return BNN_ERR_NULL;
  taps = kh * kw;
  pw = taps * wc;
  memset(out, 0, (size_t)total * sizeof(uint64_t));
  for (t = 0; t < taps; ++t) {
    for (ci = 0; ci < c_in; ++ci) {
      const float *src = w + (t * c_in + ci) * c_out;
      for (co = 0; co < c_out; ++co) bnn__or_bit(out + co * pw + t * wc, ci, src[co] >= 0.0f);
    }
  }
  return BNN_OK;
}

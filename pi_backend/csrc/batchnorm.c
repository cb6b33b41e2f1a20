/*
 * L1 batch norm (beta only), statistics per channel over the rows of x (n, c).
 * The equations are bnn/ops/batch_norm.py's (METHOD.md): see bnnpi.h. Per-channel
 * sums are accumulated in double, in row order; everything per element is float32
 * in the same order of operations as the JAX code.
 */
#include <stdlib.h>

#include "internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

/* The row kernels of float_x86.c (bit-identical) at an AVX2 or AVX-512 float level
 * (x86_level; 0 otherwise): they do the first channels of a row (X86_DONE: how many),
 * the loops here the rest. */
#if BNN_HAVE_X86_SIMD
#define X86_DONE(call) (call)
static int x86_level(void) {
  const int level = bnn__float_level();
  return level >= BNN__IMPL_AVX2 ? level : 0;
}
#else
#define X86_DONE(call) 0
static int x86_level(void) { return 0; }
#endif

static int check_nc(int64_t n, int64_t c) {
  int64_t t;
  int err;
  if (n < 1 || c < 1) return BNN_ERR_SIZE;
  if ((err = bnn__count(&t, sizeof(float), n, c, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), n, bnn__words(c), 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(double), c, 2, 1, 1)) != BNN_OK) return err;
  return BNN_OK;
}

int bnn_bn_l1_forward(const float *x, const float *beta, int64_t n, int64_t c, float eps,
                      float *y, float *mean, float *scale, uint64_t *sign_bits,
                      uint16_t *scale16, uint16_t *m16, float *running_mean,
                      float *running_scale, double momentum) {
  const int64_t wc = bnn__words(c);
  const int x86 = x86_level();
  int64_t i, j;
  double *acc;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!(eps >= 0.0f) || !(momentum >= 0.0 && momentum <= 1.0)) return BNN_ERR_ARG;
  if (!x || !beta || !y || !mean || !scale || !sign_bits || !scale16 || !m16) {
    return BNN_ERR_NULL;
  }
  if ((running_mean == NULL) != (running_scale == NULL)) return BNN_ERR_NULL;
  acc = (double *)calloc((size_t)c, sizeof(double));
  if (!acc) return BNN_ERR_NOMEM;

  /* mean */
  for (i = 0; i < n; ++i) {
    const float *xi = x + i * c;
    for (j = x86 ? X86_DONE(bnn__x86_bn_sum_row(x86, xi, NULL, c, acc)) : 0; j < c; ++j) {
      acc[j] += xi[j];
    }
  }
  for (j = 0; j < c; ++j) mean[j] = (float)(acc[j] / (double)n);
  /* scale = mean|x - mean| + eps */
  memset(acc, 0, (size_t)c * sizeof(double));
  for (i = 0; i < n; ++i) {
    const float *xi = x + i * c;
    for (j = x86 ? X86_DONE(bnn__x86_bn_sum_row(x86, xi, mean, c, acc)) : 0; j < c; ++j) {
      float d = xi[j] - mean[j];
      acc[j] += bnn__abs_f32(d);
    }
  }
  for (j = 0; j < c; ++j) scale[j] = (float)(acc[j] / (double)n) + eps;
  /* x_hat, its sign bits, y and m = mean|x_hat| */
  memset(acc, 0, (size_t)c * sizeof(double));
  memset(sign_bits, 0, (size_t)(n * wc) * sizeof(uint64_t));
  for (i = 0; i < n; ++i) {
    const float *xi = x + i * c;
    float *yi = y + i * c;
    uint64_t *bits = sign_bits + i * wc;
    j = x86 ? X86_DONE(bnn__x86_bn_forward_row(x86, xi, mean, scale, beta, c, acc, yi, bits))
            : 0;
    while (j < c) {  /* a word of sign bits at a time, in a register */
      const int64_t j0 = j - j % 64, j1 = c - j0 < 64 ? c : j0 + 64;
      uint64_t word = bits[j0 >> 6];  /* 0, or the vector rows' bits */
      for (; j < j1; ++j) {
        float xh = (xi[j] - mean[j]) / scale[j];
        word |= (uint64_t)(xh >= 0.0f) << (j - j0);
        acc[j] += bnn__abs_f32(xh);
        yi[j] = xh + beta[j];
      }
      bits[j0 >> 6] = word;
    }
  }
  for (j = 0; j < c; ++j) {
    scale16[j] = bnn__f32_to_f16(scale[j]);
    m16[j] = bnn__f32_to_f16((float)(acc[j] / (double)n));
  }
  if (running_mean) {
    const float keep = (float)momentum, take = (float)(1.0 - momentum);
    for (j = 0; j < c; ++j) {
      running_mean[j] = keep * running_mean[j] + take * mean[j];
      running_scale[j] = keep * running_scale[j] + take * scale[j];
    }
  }
  free(acc);
  return BNN_OK;
}

/* y[j] = (x[j] - mean[j]) / scale[j] + beta[j] for j < c. Each operation is correctly
 * rounded float32 at every width (and the vector units use the scalar unit's denormal
 * mode: SSE2's MXCSR, AArch64's FPCR; armv7 NEON flushes denormals, so it is not used),
 * so the vector loops give the scalar loop's bits. */
static void bn_eval_row(const float *x, const float *beta, const float *mean,
                        const float *scale, int64_t c, float *y) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 4 <= c; j += 4) {
    __m128 v = _mm_sub_ps(_mm_loadu_ps(x + j), _mm_loadu_ps(mean + j));
    v = _mm_add_ps(_mm_div_ps(v, _mm_loadu_ps(scale + j)), _mm_loadu_ps(beta + j));
    _mm_storeu_ps(y + j, v);
  }
#elif defined(__aarch64__) && defined(__ARM_NEON)
  for (; j + 4 <= c; j += 4) {
    float32x4_t v = vsubq_f32(vld1q_f32(x + j), vld1q_f32(mean + j));
    v = vaddq_f32(vdivq_f32(v, vld1q_f32(scale + j)), vld1q_f32(beta + j));
    vst1q_f32(y + j, v);
  }
#endif
  for (; j < c; ++j) y[j] = (x[j] - mean[j]) / scale[j] + beta[j];
}

int bnn_bn_eval(const float *x, const float *beta, const float *mean, const float *scale,
                int64_t n, int64_t c, float *y) {
  int64_t i;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!x || !beta || !mean || !scale || !y) return BNN_ERR_NULL;
  for (i = 0; i < n; ++i) bn_eval_row(x + i * c, beta, mean, scale, c, y + i * c);
  return BNN_OK;
}

int bnn_bn_eval_sign(const float *x, const float *beta, const float *mean,
                     const float *scale, int64_t n, int64_t c, uint64_t *bits) {
  const int64_t wc = bnn__words(c);
  float y[64];  /* one word's values at a time: nothing the size of x is written */
  int64_t i, j0;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!x || !beta || !mean || !scale || !bits) return BNN_ERR_NULL;
  for (i = 0; i < n; ++i) {
    for (j0 = 0; j0 < c; j0 += 64) {
      const int64_t cnt = c - j0 < 64 ? c - j0 : 64;
      bn_eval_row(x + i * c + j0, beta + j0, mean + j0, scale + j0, cnt, y);
      bnn__pack_row(y, cnt, bits + i * wc + j0 / 64);
    }
  }
  return BNN_OK;
}

int bnn_bn_l1_backward(const float *dy, const uint64_t *sign_bits, const uint16_t *scale16,
                       const uint16_t *m16, int64_t n, int64_t c, int dy_to_f16, float *dx,
                       float *dbeta) {
  const int64_t wc = bnn__words(c);
  const int x86 = x86_level();
  int64_t i, j;
  double *acc;
  float *scl, *mg, *k, *row;
  uint16_t *row16;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!dy || !sign_bits || !scale16 || !m16 || !dx || !dbeta) return BNN_ERR_NULL;
  acc = (double *)calloc((size_t)(3 * c), sizeof(double));
  scl = (float *)malloc((size_t)(4 * c) * sizeof(float));
  row16 = (uint16_t *)malloc((size_t)c * sizeof(uint16_t));
  if (!acc || !scl || !row16) {
    free(acc);
    free(scl);
    free(row16);
    return BNN_ERR_NOMEM;
  }
  mg = scl + c;
  k = scl + 2 * c;
  row = scl + 3 * c; /* a row of dy rounded to float16 (dy_to_f16) */
  for (j = 0; j < c; ++j) scl[j] = bnn__f16_to_f32(scale16[j]);
  /* sums of g = dy' / scale, g * s and dy' */
  for (i = 0; i < n; ++i) {
    const float *dyi = dy + i * c;
    const uint64_t *bits = sign_bits + i * wc;
    if (dy_to_f16) {
      bnn__round_f16_buf(dyi, c, row, row16);
      dyi = row;
    }
    for (j = x86 ? X86_DONE(bnn__x86_bn_backward_sums(x86, dyi, bits, scl, c, acc)) : 0;
         j < c; ++j) {
      float d = dyi[j];
      float g = d / scl[j];
      acc[j] += g;
      acc[c + j] += bnn__flip_unless(g, bnn__get_bit(bits, j));
      acc[2 * c + j] += d;
    }
  }
  for (j = 0; j < c; ++j) {
    mg[j] = (float)(acc[j] / (double)n);                               /* mean(g) */
    k[j] = (float)(acc[c + j] / (double)n) * bnn__f16_to_f32(m16[j]);  /* mean(g s) m */
    dbeta[j] = (float)acc[2 * c + j];
  }
  for (i = 0; i < n; ++i) {
    const float *dyi = dy + i * c;
    const uint64_t *bits = sign_bits + i * wc;
    float *dxi = dx + i * c;
    if (dy_to_f16) {
      bnn__round_f16_buf(dyi, c, row, row16);
      dyi = row;
    }
    for (j = x86 ? X86_DONE(bnn__x86_bn_backward_dx(x86, dyi, bits, scl, mg, k, c, dxi)) : 0;
         j < c; ++j) {
      float d = dyi[j];
      float g = d / scl[j];
      dxi[j] = (g - mg[j]) - bnn__flip_unless(k[j], bnn__get_bit(bits, j));
    }
  }
  free(acc);
  free(scl);
  free(row16);
  return BNN_OK;
}

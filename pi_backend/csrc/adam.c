/*
 * Adam with float16 storage (weights and both moments), as optax.adam with
 * eps_root = 0: float32 arithmetic per element, stored back rounded to nearest even.
 */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
/* aarch64: float16 <-> float32 by NEON (fcvtl / fcvtn, round to nearest even under the
 * default FPCR: the same bits as the portable conversion), the same float32 operations
 * in the same order as the loop below (vdivq / vsqrtq are IEEE exact roundings). */
#include <arm_neon.h>
#define BNN_HAVE_F16_NEON 1

static inline float32x4_t load_h4(const uint16_t *p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

static inline void store_h4(uint16_t *p, float32x4_t x) {
  vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(x)));
}

static int64_t adam_neon(uint16_t *w, uint16_t *m, uint16_t *v, const float *g32,
                         const uint16_t *g16, int64_t n, float lr, float b1, float b2,
                         float eps, float bc1, float bc2) {
  const float32x4_t vb1 = vdupq_n_f32(b1), vb2 = vdupq_n_f32(b2);
  const float32x4_t vob1 = vdupq_n_f32(1.0f - b1), vob2 = vdupq_n_f32(1.0f - b2);
  const float32x4_t vbc1 = vdupq_n_f32(bc1), vbc2 = vdupq_n_f32(bc2);
  const float32x4_t veps = vdupq_n_f32(eps), vlr = vdupq_n_f32(lr);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = g32 ? vld1q_f32(g32 + i) : load_h4(g16 + i);
    const float32x4_t mi = vaddq_f32(vmulq_f32(vob1, g), vmulq_f32(vb1, load_h4(m + i)));
    const float32x4_t vi = vaddq_f32(vmulq_f32(vob2, vmulq_f32(g, g)),
                                     vmulq_f32(vb2, load_h4(v + i)));
    const float32x4_t upd = vdivq_f32(vdivq_f32(mi, vbc1),
                                      vaddq_f32(vsqrtq_f32(vdivq_f32(vi, vbc2)), veps));
    const float32x4_t wi = vsubq_f32(load_h4(w + i), vmulq_f32(vlr, upd));
    store_h4(m + i, mi);
    store_h4(v + i, vi);
    store_h4(w + i, wi);
  }
  return i;
}
#else
#define BNN_HAVE_F16_NEON 0
#endif

static int adam_impl(uint16_t *w, uint16_t *m, uint16_t *v, const float *g32,
                     const uint16_t *g16, int64_t n, int64_t step, float lr, float b1,
                     float b2, float eps) {
  float bc1, bc2, one_b1, one_b2;
  int64_t i;
  if (n < 0) return BNN_ERR_SIZE;
  if (!bnn__fits(n, sizeof(float))) return BNN_ERR_OVERFLOW;
  if (step < 1 || !(b1 >= 0.0f && b1 < 1.0f) || !(b2 >= 0.0f && b2 < 1.0f) ||
      !(eps >= 0.0f) || !(lr == lr)) {
    return BNN_ERR_ARG;
  }
  if (n == 0) return BNN_OK;
  if (!w || !m || !v || (!g32 && !g16)) return BNN_ERR_NULL;
  bc1 = (float)(1.0 - pow((double)b1, (double)step));
  bc2 = (float)(1.0 - pow((double)b2, (double)step));
  one_b1 = 1.0f - b1;
  one_b2 = 1.0f - b2;
  i = 0;
#if BNN_HAVE_X86_SIMD
  if (bnn__float_level() >= BNN__IMPL_AVX2) {
    i = bnn__x86_adam(w, m, v, g32, g16, n, lr, b1, b2, eps, bc1, bc2);
  }
#elif BNN_HAVE_F16_NEON
  i = adam_neon(w, m, v, g32, g16, n, lr, b1, b2, eps, bc1, bc2);
#endif
  for (; i < n; ++i) {
    const float g = g32 ? g32[i] : bnn__f16_to_f32(g16[i]);
    float mi = one_b1 * g + b1 * bnn__f16_to_f32(m[i]);
    float vi = one_b2 * (g * g) + b2 * bnn__f16_to_f32(v[i]);
    float upd = (mi / bc1) / (sqrtf(vi / bc2) + eps);
    float wi = bnn__f16_to_f32(w[i]) - lr * upd;
    m[i] = bnn__f32_to_f16(mi);
    v[i] = bnn__f32_to_f16(vi);
    w[i] = bnn__f32_to_f16(wi);
  }
  return BNN_OK;
}

int bnn_adam_f16(uint16_t *w, uint16_t *m, uint16_t *v, const float *g, int64_t n,
                 int64_t step, float lr, float b1, float b2, float eps) {
  if (!g && n > 0) return BNN_ERR_NULL;
  return adam_impl(w, m, v, g, NULL, n, step, lr, b1, b2, eps);
}

int bnn_adam_f16_g16(uint16_t *w, uint16_t *m, uint16_t *v, const uint16_t *g, int64_t n,
                     int64_t step, float lr, float b1, float b2, float eps) {
  if (!g && n > 0) return BNN_ERR_NULL;
  return adam_impl(w, m, v, NULL, g, n, step, lr, b1, b2, eps);
}

#if BNN_HAVE_F16_NEON
static int64_t factored_row_neon(uint16_t *w, uint16_t *m, const uint16_t *g, int64_t n,
                                 const float *f1, float s1, const float *f2, float s2,
                                 float b1, float one_b1, float correction, float neg_lr) {
  const float32x4_t vb1 = vdupq_n_f32(b1), vob1 = vdupq_n_f32(one_b1);
  const float32x4_t vcorr = vdupq_n_f32(correction), vnlr = vdupq_n_f32(neg_lr);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float32x4_t a = f1 ? vld1q_f32(f1 + j) : vdupq_n_f32(s1);
    const float32x4_t b = f2 ? vld1q_f32(f2 + j) : vdupq_n_f32(s2);
    const float32x4_t u = vmulq_f32(vmulq_f32(load_h4(g + j), a), b);
    store_h4(m + j, vaddq_f32(vmulq_f32(vb1, load_h4(m + j)), vmulq_f32(vob1, u)));
    store_h4(w + j, vaddq_f32(vmulq_f32(vdivq_f32(load_h4(m + j), vcorr), vnlr),
                              load_h4(w + j)));
  }
  return j;
}
#endif

int bnn_factored_adam_f16(uint16_t *w, uint16_t *m, const uint16_t *g, int64_t np,
                          int64_t ni, int64_t nj, const float *f1, int f1_on_j,
                          const float *f2, int f2_on_j, float b1, float one_b1,
                          float correction, float lr) {
  int64_t p, i, j, total;
  int rc;
  if (np < 0 || ni < 0 || nj < 0) return BNN_ERR_SIZE;
  if ((rc = bnn__count(&total, sizeof(float), np, ni, nj, 1)) != BNN_OK) return rc;
  if ((rc = bnn__count(&total, sizeof(float), np, ni, 1, 1)) != BNN_OK) return rc;
  if ((rc = bnn__count(&total, sizeof(float), np, nj, 1, 1)) != BNN_OK) return rc;
  if (!(correction > 0.0f) || !(lr == lr) || !(b1 == b1) || !(one_b1 == one_b1)) {
    return BNN_ERR_ARG;
  }
  if (np == 0 || ni == 0 || nj == 0) return BNN_OK;
  if (!w || !m || !g || !f1 || !f2) return BNN_ERR_NULL;
  for (p = 0; p < np; ++p) {
    for (i = 0; i < ni; ++i) {
      const int64_t row = (p * ni + i) * nj;
      const float *r1 = f1_on_j ? f1 + p * nj : NULL, *r2 = f2_on_j ? f2 + p * nj : NULL;
      const float s1 = f1_on_j ? 0.0f : f1[p * ni + i], s2 = f2_on_j ? 0.0f : f2[p * ni + i];
      j = 0;
#if BNN_HAVE_X86_SIMD
      if (bnn__float_level() >= BNN__IMPL_AVX2) {
        j = bnn__x86_factored_row(w + row, m + row, g + row, nj, r1, s1, r2, s2, b1, one_b1,
                                  correction, -lr);
      }
#elif BNN_HAVE_F16_NEON
      j = factored_row_neon(w + row, m + row, g + row, nj, r1, s1, r2, s2, b1, one_b1,
                            correction, -lr);
#endif
      for (; j < nj; ++j) {
        const float a = r1 ? r1[j] : s1, b = r2 ? r2[j] : s2;
        const float u = (bnn__f16_to_f32(g[row + j]) * a) * b;
        m[row + j] = bnn__f32_to_f16(b1 * bnn__f16_to_f32(m[row + j]) + one_b1 * u);
        w[row + j] = bnn__f32_to_f16((bnn__f16_to_f32(m[row + j]) / correction) * -lr +
                                     bnn__f16_to_f32(w[row + j]));
      }
    }
  }
  return BNN_OK;
}

/* factored_adam's statistics: see bnnpi.h. The x86 rows do the lanes' part 8 at a time;
 * the portable loop converts a float16 row into a scratch row first (the bulk
 * conversion is faster than one element at a time). */
int bnn_factored_square_sums(const uint16_t *g16, const float *g32, int64_t np,
                             int64_t ni, int64_t nj, float *si, float *sj) {
  enum { LANES = 8 };
  float *scratch = NULL, lane[LANES];
  int64_t p, i, j, q, total;
  const int64_t nj8 = nj - nj % LANES;
  int rc;
  if (np < 0 || ni < 0 || nj < 0) return BNN_ERR_SIZE;
  if ((rc = bnn__count(&total, sizeof(float), np, ni, nj, 1)) != BNN_OK) return rc;
  if (np == 0 || (ni == 0 && nj == 0)) return BNN_OK;
  if ((nj > 0 && !si) || (ni > 0 && !sj)) return BNN_ERR_NULL;
  if (ni == 0 || nj == 0) { /* sums of nothing (and no pointer arithmetic on NULL) */
    for (p = 0; p < np * nj; ++p) si[p] = 0.0f;
    for (p = 0; p < np * ni; ++p) sj[p] = 0.0f;
    return BNN_OK;
  }
  if (!g16 && !g32) return BNN_ERR_NULL;
  if (g16 && !(scratch = (float *)malloc((size_t)nj * sizeof(float)))) return BNN_ERR_NOMEM;
  for (p = 0; p < np; ++p) {
    float *col = si + p * nj;
    for (j = 0; j < nj; ++j) col[j] = 0.0f;
    for (i = 0; i < ni; ++i) {
      const int64_t row = (p * ni + i) * nj;
      const float *x = g16 ? scratch : g32 + row;
      float t;
      for (q = 0; q < LANES; ++q) lane[q] = 0.0f;
      j = 0;
#if BNN_HAVE_X86_SIMD
      if (bnn__float_level() >= BNN__IMPL_AVX2) {
        j = bnn__x86_square_sums_row(g16 ? g16 + row : NULL, g16 ? NULL : g32 + row, nj, col,
                                     lane);
      }
#endif
      if (g16) bnn_f16_to_f32(g16 + row + j, nj - j, scratch + j);
      for (; j < nj8; j += LANES) {
        for (q = 0; q < LANES; ++q) {
          const float v = x[j + q] * x[j + q] + 1e-30f;
          col[j + q] += v;
          lane[q] += v;
        }
      }
      t = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
      for (; j < nj; ++j) {
        const float v = x[j] * x[j] + 1e-30f;
        col[j] += v;
        t += v;
      }
      sj[p * ni + i] = t;
    }
  }
  free(scratch);
  return BNN_OK;
}

/* The sign_scaled weight gradient on float16 bit patterns (pi_backend.quant): c16 with
 * the sign of dw (dw >= 0: +, else -, NaN included), 0 where the latent weight is
 * outside [-1, 1] (|w| > 1.0 = 0x3c00, or NaN). Branch-free. */
int bnn_sign_scaled_grad(const float *dw, const uint16_t *w, int64_t n, uint16_t c16,
                         uint16_t *out) {
  int64_t i;
  if (n < 0) return BNN_ERR_SIZE;
  if (!bnn__fits(n, sizeof(float))) return BNN_ERR_OVERFLOW;
  if (n == 0) return BNN_OK;
  if (!dw || !w || !out) return BNN_ERR_NULL;
  i = 0;
#if BNN_HAVE_X86_SIMD
  if (bnn__float_level() >= BNN__IMPL_AVX2) i = bnn__x86_sign_scaled(dw, w, n, c16, out);
#endif
  for (; i < n; ++i) {
    const uint32_t neg = (uint32_t)!(dw[i] >= 0.0f);
    const uint32_t keep = (uint32_t)((w[i] & 0x7fffu) <= 0x3c00u);
    out[i] = (uint16_t)(((neg << 15) | c16) & (0u - keep));
  }
  return BNN_OK;
}

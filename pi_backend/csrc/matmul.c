/*
 * GEMMs with one float operand and one +-1 operand (sign(W), or sign(X) given packed):
 * the first binary layer's forward (real x), and the backward of every dense layer.
 * The +-1 operand is expanded into floats one panel of KC rows at a time (a small
 * scratch buffer; never a float copy of the whole matrix), and each panel goes through
 * the register-blocked float GEMM of sgemm.c. Sums differ from BLAS only by rounding.
 */
#include <stdlib.h>

#include "internal.h"

enum { KC = 64 };  /* rows of the +-1 operand expanded per panel (at most 64: sign_rows_t,
                      and a multiple of 64: t_matmul_impl) */

static int check_mkn(int64_t m, int64_t k, int64_t n) {
  int64_t t;
  int err;
  if (m < 0 || k < 0 || n < 0) return BNN_ERR_SIZE;
  if ((err = bnn__count(&t, sizeof(float), m, k, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), k, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), m, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), KC, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), KC, m, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), m, bnn__words(k), 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), k, bnn__words(n), 1, 1)) != BNN_OK) return err;
  return BNN_OK;
}

static float *scratch(int64_t a, int64_t b) {
  return (float *)malloc((size_t)(a * b) * sizeof(float));
}

/* Rows [p0, p0 + pb) of sign(W) as +-1 floats, dst (pb, n); exactly one of w (float
 * (k, n)) and wp (packed (k, words(n))) is set. */
static void sign_rows(const float *w, const uint64_t *wp, int64_t p0, int64_t pb, int64_t n,
                      float *dst) {
  int64_t pp, j, wn = bnn__words(n);
  for (pp = 0; pp < pb; ++pp) {
    float *d = dst + pp * n;
    if (w) {
      const float *src = w + (p0 + pp) * n;
      for (j = 0; j < n; ++j) d[j] = bnn__sign_f32(src[j]);
    } else {
      bnn__unpack_row(wp + (p0 + pp) * wn, n, d);
    }
  }
}

/* The same rows transposed: dst (n, pb); pb <= 64. */
static void sign_rows_t(const float *w, const uint64_t *wp, int64_t p0, int64_t pb,
                        int64_t n, float *dst) {
  int64_t pp, j, wn = bnn__words(n);
  if (!w) {  /* packed: a 64 x 64 bit transpose per word column, then unpack each row */
    uint64_t t[64];
    int64_t wj;
    for (wj = 0; wj < wn; ++wj) {
      const int64_t cols = n - wj * 64 < 64 ? n - wj * 64 : 64;
      for (pp = 0; pp < 64; ++pp) t[pp] = pp < pb ? wp[(p0 + pp) * wn + wj] : 0;
      bnn__transpose64(t);
      for (j = 0; j < cols; ++j) bnn__unpack_row(&t[j], pb, dst + (wj * 64 + j) * pb);
    }
    return;
  }
  for (pp = 0; pp < pb; ++pp) {
    if (w) {
      const float *src = w + (p0 + pp) * n;
      for (j = 0; j < n; ++j) dst[j * pb + pp] = bnn__sign_f32(src[j]);
    } else {
      const uint64_t *row = wp + (p0 + pp) * wn;
      for (j = 0; j < n; ++j) dst[j * pb + pp] = bnn__get_bit(row, j) ? 1.0f : -1.0f;
    }
  }
}

/* y (m, n) = x (m, k) . sign(W) */
static int sign_matmul_impl(const float *x, const float *w, const uint64_t *wp, int64_t m,
                            int64_t k, int64_t n, float *y) {
  int64_t p0;
  float *tmp;
  int err = check_mkn(m, k, n);
  if (err != BNN_OK) return err;
  if (m == 0 || n == 0) return BNN_OK;
  if (!y || (k > 0 && (!x || (!w && !wp)))) return BNN_ERR_NULL;
  if (k == 0) {
    memset(y, 0, (size_t)(m * n) * sizeof(float));
    return BNN_OK;
  }
  if (!(tmp = scratch(k < KC ? k : KC, n))) return BNN_ERR_NOMEM;
  for (p0 = 0; p0 < k; p0 += KC) {
    int64_t pb = k - p0 < KC ? k - p0 : KC;
    sign_rows(w, wp, p0, pb, n, tmp);
    bnn__sgemm(m, n, pb, x + p0, k, tmp, n, y, n, p0 > 0);
  }
  free(tmp);
  return BNN_OK;
}

int bnn_sign_matmul(const float *x, const float *w, int64_t m, int64_t k, int64_t n,
                    float *y) {
  if (!w && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return sign_matmul_impl(x, w, NULL, m, k, n, y);
}

int bnn_sign_matmul_packed(const float *x, const uint64_t *w_packed, int64_t m,
                           int64_t k, int64_t n, float *y) {
  if (!w_packed && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return sign_matmul_impl(x, NULL, w_packed, m, k, n, y);
}

/* dx (m, k) = dy (m, n) . sign(W)^T */
static int matmul_sign_t_impl(const float *dy, const float *w, const uint64_t *wp,
                              int64_t m, int64_t k, int64_t n, float *dx) {
  int64_t p0;
  float *tmp;
  int err = check_mkn(m, k, n);
  if (err != BNN_OK) return err;
  if (m == 0 || k == 0) return BNN_OK;
  if (!dx || (n > 0 && (!dy || (!w && !wp)))) return BNN_ERR_NULL;
  if (n == 0) {
    memset(dx, 0, (size_t)(m * k) * sizeof(float));
    return BNN_OK;
  }
  if (!(tmp = scratch(n, k < KC ? k : KC))) return BNN_ERR_NOMEM;
  for (p0 = 0; p0 < k; p0 += KC) {
    int64_t pb = k - p0 < KC ? k - p0 : KC;
    sign_rows_t(w, wp, p0, pb, n, tmp);
    bnn__sgemm(m, pb, n, dy, n, tmp, pb, dx + p0, k, 0);
  }
  free(tmp);
  return BNN_OK;
}

int bnn_matmul_sign_t(const float *dy, const float *w, int64_t m, int64_t k, int64_t n,
                      float *dx) {
  if (!w && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return matmul_sign_t_impl(dy, w, NULL, m, k, n, dx);
}

int bnn_matmul_sign_t_packed(const float *dy, const uint64_t *w_packed, int64_t m,
                             int64_t k, int64_t n, float *dx) {
  if (!w_packed && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return matmul_sign_t_impl(dy, NULL, w_packed, m, k, n, dx);
}

/* dw (k, n) = X^T . dy, X = sign(x) from xp (m, words(k)) (expanded a panel of columns
 * at a time) or the real x (m, k). */
static int t_matmul_impl(const float *x, const uint64_t *xp, const float *dy, int64_t m,
                         int64_t k, int64_t n, float *dw) {
  int64_t p0, i, wk = bnn__words(k);
  float *tmp;
  int err = check_mkn(m, k, n);
  if (err != BNN_OK) return err;
  if (k == 0 || n == 0) return BNN_OK;
  if (!dw || (m > 0 && (!dy || (!x && !xp)))) return BNN_ERR_NULL;
  if (m == 0) {
    memset(dw, 0, (size_t)(k * n) * sizeof(float));
    return BNN_OK;
  }
  if (x) {  /* X^T . dy straight from x (m, k), read as the transpose of a (k, m) */
    bnn__sgemm_tn(k, n, m, x, k, dy, n, dw, n, 0);
    return BNN_OK;
  }
  if (!(tmp = scratch(k < KC ? k : KC, m))) return BNN_ERR_NOMEM;
  for (p0 = 0; p0 < k; p0 += KC) {  /* sign(x) panels (m, pb), i.e. X^T transposed */
    int64_t pb = k - p0 < KC ? k - p0 : KC;
    for (i = 0; i < m; ++i) {  /* p0 is a multiple of 64 (KC): whole words */
      bnn__unpack_row(xp + i * wk + p0 / 64, pb, tmp + i * pb);
    }
    bnn__sgemm_tn(pb, n, m, tmp, pb, dy, n, dw + p0 * n, n, 0);
  }
  free(tmp);
  return BNN_OK;
}

int bnn_sign_t_matmul(const uint64_t *x_packed, const float *dy, int64_t m, int64_t k,
                      int64_t n, float *dw) {
  if (!x_packed && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return t_matmul_impl(NULL, x_packed, dy, m, k, n, dw);
}

int bnn_t_matmul(const float *x, const float *dy, int64_t m, int64_t k, int64_t n,
                 float *dw) {
  if (!x && k > 0 && m > 0 && n > 0) return BNN_ERR_NULL;
  return t_matmul_impl(x, NULL, dy, m, k, n, dw);
}

/* ---- fused dense weight update (bnn_dense_weight_update) ------------------------- */

/* Rows [r0, r0 + rb) of dw = sign(x)^T . dy from the whole packed x (m, wk words), r0 a
 * multiple of 64: the panels (and sums) of bnn_sign_t_matmul on that slice of words. */
static void sign_t_cols(const uint64_t *xp, int64_t wk, int64_t r0, int64_t rb,
                        const float *dy, int64_t m, int64_t n, float *dw, float *tmp) {
  int64_t p0, i;
  for (p0 = 0; p0 < rb; p0 += KC) {
    int64_t pb = rb - p0 < KC ? rb - p0 : KC;
    for (i = 0; i < m; ++i) bnn__unpack_row(xp + i * wk + (r0 + p0) / 64, pb, tmp + i * pb);
    bnn__sgemm_tn(pb, n, m, tmp, pb, dy, n, dw + p0 * n, n, 0);
  }
}

int bnn_dense_weight_update(const void *x, int x_kind, const float *dy, int64_t m,
                            int64_t k, int64_t n, int64_t rows, uint16_t c16, uint16_t *w,
                            uint16_t *adam_m, uint16_t *adam_v, int64_t step, float lr,
                            float b1, float b2, float eps, float *dw_scratch,
                            uint16_t *g_scratch, float *x_scratch) {
  int64_t r0, t, i, j;
  float *tmp = NULL;
  int err = check_mkn(m, k, n);
  if (err != BNN_OK) return err;
  if (x_kind < 0 || x_kind > 2) return BNN_ERR_ARG;
  if (rows < 1 || (x_kind == 2 && rows % 64 != 0)) return BNN_ERR_SIZE;
  if (rows > k && k > 0) rows = k;
  if ((err = bnn__count(&t, sizeof(float), rows, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), rows, m, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), k, n, 1, 1)) != BNN_OK) return err;
  if (step < 1 || !(b1 >= 0.0f && b1 < 1.0f) || !(b2 >= 0.0f && b2 < 1.0f) ||
      !(eps >= 0.0f) || !(lr == lr) || (c16 & 0x8000u)) {
    return BNN_ERR_ARG;
  }
  if (k == 0 || n == 0) return BNN_OK;
  if (!w || !adam_m || !adam_v || !dw_scratch || !g_scratch) return BNN_ERR_NULL;
  if (m > 0 && (!x || !dy || (x_kind == 1 && !x_scratch))) return BNN_ERR_NULL;
  if (m > 0 && x_kind == 2 && !(tmp = scratch(rows < KC ? rows : KC, m))) {
    return BNN_ERR_NOMEM;
  }
  for (r0 = 0; r0 < k; r0 += rows) {
    const int64_t rb = k - r0 < rows ? k - r0 : rows;
    uint16_t *wb = w + r0 * n, *mb = adam_m + r0 * n, *vb = adam_v + r0 * n;
    if (m == 0) {
      memset(dw_scratch, 0, (size_t)(rb * n) * sizeof(float));
    } else if (x_kind == 0) {  /* real x float32 (m, k): columns [r0, r0 + rb) in place */
      bnn__sgemm_tn(rb, n, m, (const float *)x + r0, k, dy, n, dw_scratch, n, 0);
    } else if (x_kind == 1) {  /* uint8 pixels: float32(u) * float32(1 / 127.5) - 1 */
      const uint8_t *xu = (const uint8_t *)x;
      const float scale = (float)(1.0 / 127.5);
      for (i = 0; i < m; ++i) {
        const uint8_t *src = xu + i * k + r0;
        float *dst = x_scratch + i * rb;
        for (j = 0; j < rb; ++j) {
          float v = (float)src[j] * scale;
          dst[j] = v - 1.0f;
        }
      }
      bnn__sgemm_tn(rb, n, m, x_scratch, rb, dy, n, dw_scratch, n, 0);
    } else {
      sign_t_cols((const uint64_t *)x, bnn__words(k), r0, rb, dy, m, n, dw_scratch, tmp);
    }
    if ((err = bnn_sign_scaled_grad(dw_scratch, wb, rb * n, c16, g_scratch)) != BNN_OK ||
        (err = bnn_adam_f16_g16(wb, mb, vb, g_scratch, rb * n, step, lr, b1, b2, eps)) !=
            BNN_OK) {
      break;
    }
  }
  free(tmp);
  return err;
}

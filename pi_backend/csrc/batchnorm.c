/*
 * L1 batch norm (beta only), statistics per channel over the rows of x (n, c).
 * The equations are bnn/ops/batch_norm.py's (METHOD.md): see bnnpi.h. Per-channel
 * sums are accumulated in double, in row order; everything per element is float32
 * in the same order of operations as the JAX code.
 */
#include <stdlib.h>

#include "internal.h"

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
    for (j = 0; j < c; ++j) acc[j] += xi[j];
  }
  for (j = 0; j < c; ++j) mean[j] = (float)(acc[j] / (double)n);
  /* scale = mean|x - mean| + eps */
  memset(acc, 0, (size_t)c * sizeof(double));
  for (i = 0; i < n; ++i) {
    const float *xi = x + i * c;
    for (j = 0; j < c; ++j) {
      float d = xi[j] - mean[j];
      acc[j] += d < 0.0f ? -d : d;
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
    for (j = 0; j < c; ++j) {
      float xh = (xi[j] - mean[j]) / scale[j];
      bnn__or_bit(bits, j, xh >= 0.0f);
      acc[j] += xh < 0.0f ? -xh : xh;
      yi[j] = xh + beta[j];
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

int bnn_bn_eval(const float *x, const float *beta, const float *mean, const float *scale,
                int64_t n, int64_t c, float *y) {
  int64_t i, j;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!x || !beta || !mean || !scale || !y) return BNN_ERR_NULL;
  for (i = 0; i < n; ++i) {
    const float *xi = x + i * c;
    float *yi = y + i * c;
    for (j = 0; j < c; ++j) yi[j] = (xi[j] - mean[j]) / scale[j] + beta[j];
  }
  return BNN_OK;
}

int bnn_bn_l1_backward(const float *dy, const uint64_t *sign_bits, const uint16_t *scale16,
                       const uint16_t *m16, int64_t n, int64_t c, int dy_to_f16, float *dx,
                       float *dbeta) {
  const int64_t wc = bnn__words(c);
  int64_t i, j;
  double *acc;
  float *scl, *mg, *k;
  int err = check_nc(n, c);
  if (err != BNN_OK) return err;
  if (!dy || !sign_bits || !scale16 || !m16 || !dx || !dbeta) return BNN_ERR_NULL;
  acc = (double *)calloc((size_t)(3 * c), sizeof(double));
  scl = (float *)malloc((size_t)(3 * c) * sizeof(float));
  if (!acc || !scl) {
    free(acc);
    free(scl);
    return BNN_ERR_NOMEM;
  }
  mg = scl + c;
  k = scl + 2 * c;
  for (j = 0; j < c; ++j) scl[j] = bnn__f16_to_f32(scale16[j]);
  /* sums of g = dy' / scale, g * s and dy' */
  for (i = 0; i < n; ++i) {
    const float *dyi = dy + i * c;
    const uint64_t *bits = sign_bits + i * wc;
    for (j = 0; j < c; ++j) {
      float d = dy_to_f16 ? bnn__round_f16(dyi[j]) : dyi[j];
      float g = d / scl[j];
      acc[j] += g;
      acc[c + j] += bnn__get_bit(bits, j) ? g : -g;
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
    for (j = 0; j < c; ++j) {
      float d = dy_to_f16 ? bnn__round_f16(dyi[j]) : dyi[j];
      float g = d / scl[j];
      dxi[j] = (g - mg[j]) - (bnn__get_bit(bits, j) ? k[j] : -k[j]);
    }
  }
  free(acc);
  free(scl);
  return BNN_OK;
}

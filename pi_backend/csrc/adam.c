/*
 * Adam with float16 storage (weights and both moments), as optax.adam with
 * eps_root = 0: float32 arithmetic per element, stored back rounded to nearest even.
 */
#include <math.h>

#include "internal.h"

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
  for (i = 0; i < n; ++i) {
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

/* IEEE binary16 conversions over buffers (bit manipulation, internal.h). */
#include "internal.h"

int bnn_f32_to_f16(const float *x, int64_t n, uint16_t *out) {
  int64_t i;
  if (n < 0) return BNN_ERR_SIZE;
  if (!bnn__fits(n, sizeof(float))) return BNN_ERR_OVERFLOW;
  if (n == 0) return BNN_OK;
  if (!x || !out) return BNN_ERR_NULL;
#if BNN_HAVE_X86_SIMD
  if (bnn__float_level() >= BNN__IMPL_AVX2) {
    bnn__x86_f32_to_f16(x, n, out);
    return BNN_OK;
  }
#endif
  for (i = 0; i < n; ++i) out[i] = bnn__f32_to_f16(x[i]);
  return BNN_OK;
}

int bnn_f16_to_f32(const uint16_t *x, int64_t n, float *out) {
  int64_t i;
  if (n < 0) return BNN_ERR_SIZE;
  if (!bnn__fits(n, sizeof(float))) return BNN_ERR_OVERFLOW;
  if (n == 0) return BNN_OK;
  if (!x || !out) return BNN_ERR_NULL;
#if BNN_HAVE_X86_SIMD
  if (bnn__float_level() >= BNN__IMPL_AVX2) {
    bnn__x86_f16_to_f32(x, n, out);
    return BNN_OK;
  }
#endif
  for (i = 0; i < n; ++i) out[i] = bnn__f16_to_f32(x[i]);
  return BNN_OK;
}

void bnn__round_f16_buf(const float *x, int64_t n, float *out, uint16_t *tmp) {
  int64_t i;
#if BNN_HAVE_X86_SIMD
  if (bnn__float_level() >= BNN__IMPL_AVX2) {
    bnn__x86_f32_to_f16(x, n, tmp);
    bnn__x86_f16_to_f32(tmp, n, out);
    return;
  }
#endif
  (void)tmp;
  for (i = 0; i < n; ++i) out[i] = bnn__round_f16(x[i]);
}

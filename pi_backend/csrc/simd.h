/*
 * A 4-lane float vector for the float kernels: NEON (aarch64, armv7 with NEON), SSE
 * (x86-64 always has it; 32-bit x86 when the compiler targets it), or plain C. Only
 * load, store, splat, add and mul: products and sums are rounded separately (no FMA),
 * as with -ffp-contract=off.
 */
#ifndef BNNPI_SIMD_H
#define BNNPI_SIMD_H

#if defined(__ARM_NEON)
#include <arm_neon.h>
typedef float32x4_t bnn_v4;
static inline bnn_v4 bnn_v4_load(const float *p) { return vld1q_f32(p); }
static inline void bnn_v4_store(float *p, bnn_v4 v) { vst1q_f32(p, v); }
static inline bnn_v4 bnn_v4_splat(float x) { return vdupq_n_f32(x); }
static inline bnn_v4 bnn_v4_add(bnn_v4 a, bnn_v4 b) { return vaddq_f32(a, b); }
static inline bnn_v4 bnn_v4_mul(bnn_v4 a, bnn_v4 b) { return vmulq_f32(a, b); }
#define BNN_SIMD_NAME "neon"
#elif defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
typedef __m128 bnn_v4;
static inline bnn_v4 bnn_v4_load(const float *p) { return _mm_loadu_ps(p); }
static inline void bnn_v4_store(float *p, bnn_v4 v) { _mm_storeu_ps(p, v); }
static inline bnn_v4 bnn_v4_splat(float x) { return _mm_set1_ps(x); }
static inline bnn_v4 bnn_v4_add(bnn_v4 a, bnn_v4 b) { return _mm_add_ps(a, b); }
static inline bnn_v4 bnn_v4_mul(bnn_v4 a, bnn_v4 b) { return _mm_mul_ps(a, b); }
#define BNN_SIMD_NAME "sse"
#else
typedef struct { float v[4]; } bnn_v4;
static inline bnn_v4 bnn_v4_load(const float *p) {
  bnn_v4 r;
  r.v[0] = p[0]; r.v[1] = p[1]; r.v[2] = p[2]; r.v[3] = p[3];
  return r;
}
static inline void bnn_v4_store(float *p, bnn_v4 a) {
  p[0] = a.v[0]; p[1] = a.v[1]; p[2] = a.v[2]; p[3] = a.v[3];
}
static inline bnn_v4 bnn_v4_splat(float x) {
  bnn_v4 r;
  r.v[0] = x; r.v[1] = x; r.v[2] = x; r.v[3] = x;
  return r;
}
static inline bnn_v4 bnn_v4_add(bnn_v4 a, bnn_v4 b) {
  bnn_v4 r;
  r.v[0] = a.v[0] + b.v[0]; r.v[1] = a.v[1] + b.v[1];
  r.v[2] = a.v[2] + b.v[2]; r.v[3] = a.v[3] + b.v[3];
  return r;
}
static inline bnn_v4 bnn_v4_mul(bnn_v4 a, bnn_v4 b) {
  bnn_v4 r;
  r.v[0] = a.v[0] * b.v[0]; r.v[1] = a.v[1] * b.v[1];
  r.v[2] = a.v[2] * b.v[2]; r.v[3] = a.v[3] * b.v[3];
  return r;
}
#define BNN_SIMD_NAME "portable"
#endif

#endif /* BNNPI_SIMD_H */

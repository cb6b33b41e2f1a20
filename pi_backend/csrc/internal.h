/*
 * Helpers shared by the kernels: size checks, the bit layout (owned by pack.c; the
 * inline accessors below are the only other place that knows it), popcount and
 * float16 conversions. Not part of the public API.
 */
#ifndef BNNPI_INTERNAL_H
#define BNNPI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bnnpi.h"

/* ---- sizes --------------------------------------------------------------------- */

/* *out = a * b for a, b >= 0; 0 on overflow (of int64 or of the address space). */
static inline int bnn__mul(int64_t a, int64_t b, int64_t *out) {
  if (a < 0 || b < 0) return 0;
  if (a != 0 && b > INT64_MAX / a) return 0;
  *out = a * b;
  return 1;
}

/* Whether count elements of elem bytes can exist in this address space. */
static inline int bnn__fits(int64_t count, size_t elem) {
  return count >= 0 && (uint64_t)count <= (uint64_t)(PTRDIFF_MAX / (ptrdiff_t)elem);
}

/* Product of up to 4 non-negative sizes into *out, checked against elem-byte elements;
 * returns BNN_OK or BNN_ERR_OVERFLOW. */
static inline int bnn__count(int64_t *out, size_t elem, int64_t a, int64_t b, int64_t c,
                             int64_t d) {
  int64_t t;
  if (!bnn__mul(a, b, &t) || !bnn__mul(t, c, &t) || !bnn__mul(t, d, &t)) {
    return BNN_ERR_OVERFLOW;
  }
  if (!bnn__fits(t, elem)) return BNN_ERR_OVERFLOW;
  *out = t;
  return BNN_OK;
}

/* ---- bit layout ---------------------------------------------------------------- */
/* Element j of a row lives in word j / 64, bit j % 64; bit 1 <-> +1. */

static inline int64_t bnn__words(int64_t n) { return n / 64 + (n % 64 != 0); }

/* The bits of the last word that hold elements (all ones when n % 64 == 0). */
static inline uint64_t bnn__tail_mask(int64_t n) {
  int r = (int)(n % 64);
  return r ? ((UINT64_C(1) << r) - 1) : ~UINT64_C(0);
}

static inline int bnn__get_bit(const uint64_t *row, int64_t j) {
  return (int)((row[j >> 6] >> (j & 63)) & 1u);
}

static inline void bnn__set_bit(uint64_t *row, int64_t j) {
  row[j >> 6] |= UINT64_C(1) << (j & 63);
}

/* ORs bit (0 or 1) into element j, without a branch (random signs defeat prediction). */
static inline void bnn__or_bit(uint64_t *row, int64_t j, int bit) {
  row[j >> 6] |= (uint64_t)(bit & 1) << (j & 63);
}

/* Packs one row of n values into bnn__words(n) words, bit = (x >= 0). */
void bnn__pack_row(const float *x, int64_t n, uint64_t *out);
/* Unpacks one row of n elements into +-1 floats. */
void bnn__unpack_row(const uint64_t *row, int64_t n, float *out);

/* Transposes a 64 x 64 bit matrix in place: afterwards bit r of a[c] is what bit c of
 * a[r] was (bit 0 = column 0). */
static inline void bnn__transpose64(uint64_t a[64]) {
  uint64_t msk = UINT64_C(0x00000000ffffffff), t;
  int j, k;
  for (j = 32; j; j >>= 1, msk ^= msk << j) {
    for (k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      t = ((a[k] >> j) ^ a[k | j]) & msk;
      a[k | j] ^= t;
      a[k] ^= t << j;
    }
  }
}

/* ---- popcount ------------------------------------------------------------------ */

static inline uint64_t bnn__popcount64(uint64_t x) {
  x = x - ((x >> 1) & UINT64_C(0x5555555555555555));
  x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
  x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
  return (x * UINT64_C(0x0101010101010101)) >> 56;
}

/* Popcount implementations (bnn_set_popcount_impl). */
#define BNN__IMPL_PORTABLE 1
#define BNN__IMPL_SCALAR_HW 2 /* x86 POPCNT or NEON */
#define BNN__IMPL_AVX2 3
#define BNN__IMPL_AVX512 4

#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
#define BNN_HAVE_X86_SIMD 1
#else
#define BNN_HAVE_X86_SIMD 0
#endif

/* The popcount GEMM shared by the binary GEMM and the binary conv:
 *   c[i, j] = popcount(a_i XOR b_j) over `words` words (all bits: padding bits must be 0
 * in both, or equal), a_i = a + i * words, b_j = b + j * words. A plan holds b in the
 * layout of the implementation chosen when it was made (bnn_set_popcount_impl), so that
 * a b used for many calls (the conv weights) is rearranged once. */
#define BNN__OUT_COUNT 0 /* int32 c */
#define BNN__OUT_I32 1   /* int32 kbits - 2 c */
#define BNN__OUT_F32 2   /* float32 kbits - 2 c */

typedef struct {
  int impl;
  int64_t n, words;
  const uint64_t *b;    /* the caller's b (row kernels) */
  const uint8_t *panel; /* b rearranged (x86 SIMD kernels), inside mem */
  void *mem;
} bnn__xplan;

/* BNN_OK, or BNN_ERR_NOMEM / BNN_ERR_OVERFLOW (nothing to free then). b stays in use by
 * the plan until bnn__xplan_free. n >= 0, words >= 1; m_hint: the number of rows of a
 * the plan will see in all (small: the automatic choice may pick a kernel without a
 * rearranged b). */
int bnn__xplan_init(bnn__xplan *plan, const uint64_t *b, int64_t n, int64_t words,
                    int64_t m_hint);
/* y (m, n) as mode says; row i starts at element i * ldy of y (4-byte elements). */
void bnn__xplan_run(const bnn__xplan *plan, const uint64_t *a, int64_t m, int mode,
                    int64_t kbits, void *y, int64_t ldy);
void bnn__xplan_free(bnn__xplan *plan);

#if BNN_HAVE_X86_SIMD
/* xgemm_x86.c; impl is BNN__IMPL_AVX2 or BNN__IMPL_AVX512, available on this CPU. */
int64_t bnn__x86_panel_bytes(int impl, int64_t n, int64_t words); /* -1: overflow */
void bnn__x86_panel_prep(int impl, const uint64_t *b, int64_t n, int64_t words,
                         uint8_t *panel);
void bnn__x86_run(int impl, const uint8_t *panel, int64_t n, int64_t words,
                  const uint64_t *a, int64_t m, int mode, int64_t kbits, void *y,
                  int64_t ldy);
#endif

/* ---- float GEMM (sgemm.c) ---------------------------------------------------------- */

/* C (M x N) = A (M x K) . B (K x N), or C += when accumulate; row-major, leading
 * dimensions lda, ldb, ldc. K may be 0 (C = 0, or unchanged when accumulating). */
void bnn__sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate);
/* The same with A given transposed: At (K x M), leading dimension ldat. */
void bnn__sgemm_tn(int64_t M, int64_t N, int64_t K, const float *At, int64_t ldat,
                   const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate);

/* ---- float kernel fast paths (bnn_set_float_impl; float_x86.c) ------------------ */

/* The level in use: BNN__IMPL_PORTABLE, or on x86 BNN__IMPL_AVX2 (AVX2 + F16C) or
 * BNN__IMPL_AVX512 (AVX-512F as well). */
int bnn__float_level(void);

#if BNN_HAVE_X86_SIMD
int bnn__x86_float_level(void); /* the best this CPU has */
void bnn__x86_f32_to_f16(const float *x, int64_t n, uint16_t *out);
void bnn__x86_f16_to_f32(const uint16_t *x, int64_t n, float *out);
int64_t bnn__x86_adam(uint16_t *w, uint16_t *m, uint16_t *v, const float *g32,
                      const uint16_t *g16, int64_t n, float lr, float b1, float b2, float eps,
                      float bc1, float bc2);
/* one row of bnn_factored_adam_f16: f1 / f2 the row's factors when the pointer is not
 * NULL, else the scalars s1 / s2; elements [0, n - n % 8), returns how many */
int64_t bnn__x86_factored_row(uint16_t *w, uint16_t *m, const uint16_t *g, int64_t n,
                              const float *f1, float s1, const float *f2, float s2,
                              float b1, float one_b1, float correction, float neg_lr);
/* one row of bnn_factored_square_sums: adds to col[j] and sets lane[0..7], for the
 * elements [0, n - n % 8); returns how many */
int64_t bnn__x86_square_sums_row(const uint16_t *g16, const float *g32, int64_t n,
                                 float *col, float *lane);
void bnn__x86_unpack_row(int level, const uint64_t *row, int64_t n, float *out);
uint64_t bnn__x86_f16_word64(const uint16_t *row); /* AVX2 */
int64_t bnn__x86_sign_scaled(const float *dw, const uint16_t *w, int64_t n, uint16_t c16,
                             uint16_t *out);
/* batch-norm rows at level BNN__IMPL_AVX2 or BNN__IMPL_AVX512: channels [0, returned)
 * (all with AVX-512F, up to the last multiple of 8 with AVX2) */
int64_t bnn__x86_bn_sum_row(int level, const float *x, const float *mean, int64_t c,
                            double *acc);
int64_t bnn__x86_bn_forward_row(int level, const float *x, const float *mean,
                                const float *scale, const float *beta, int64_t c,
                                double *acc, float *y, uint64_t *bits);
int64_t bnn__x86_bn_backward_sums(int level, const float *d, const uint64_t *bits,
                                  const float *scl, int64_t c, double *acc);
int64_t bnn__x86_bn_backward_dx(int level, const float *d, const uint64_t *bits,
                                const float *scl, const float *mg, const float *kk,
                                int64_t c, float *dx);
/* sign STE rows (act.c), AVX2: elements [0, n - n % 8), returned */
int64_t bnn__x86_ste_forward_row(const float *x, int64_t n, float clip, float *y,
                                 uint64_t *mask);
int64_t bnn__x86_ste_backward_row(const float *dy, const uint64_t *mask, int64_t n, float *dx);
/* sgemm.c's C (+)= A . B, all of it, at AVX2 or AVX-512 (float_x86.c) */
void bnn__x86_sgemm(int level, int64_t M, int64_t N, int64_t K, const float *A, int64_t si,
                    int64_t sp, const float *B, int64_t ldb, float *C, int64_t ldc,
                    int accumulate);
#endif

/* ---- float16 (IEEE binary16), bit manipulation only ------------------------------ */

static inline uint32_t bnn__f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float bnn__f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* float32 -> float16, round to nearest even; overflow -> inf; NaN stays NaN (quiet). */
static inline uint16_t bnn__f32_to_f16(float f) {
  uint32_t x = bnn__f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  int32_t e;
  uint32_t h, rem;
  if (exp == 0xffu) {                       /* inf or NaN */
    return (uint16_t)(sign | 0x7c00u | (mant ? (0x200u | (mant >> 13)) : 0u));
  }
  e = (int32_t)exp - 127 + 15;              /* the binary16 biased exponent */
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {                             /* binary16 subnormal or zero */
    uint32_t shift, halfway;
    if (e < -10) return (uint16_t)sign;     /* below half the smallest subnormal */
    mant |= 0x800000u;                      /* the implicit leading one */
    shift = (uint32_t)(14 - e);             /* 14 .. 24 */
    h = mant >> shift;
    rem = mant & ((1u << shift) - 1u);
    halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) h++;
    return (uint16_t)(sign | h);            /* a carry gives the smallest normal */
  }
  h = sign | ((uint32_t)e << 10) | (mant >> 13);
  rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  /* may carry up to inf */
  return (uint16_t)h;
}

/* float16 -> float32, exact. */
static inline float bnn__f16_to_f32(uint16_t hv) {
  uint32_t h = hv;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    int32_t e = -14;
    if (mant == 0) return bnn__f32_from_bits(sign);
    while (!(mant & 0x400u)) {              /* normalise the subnormal */
      mant <<= 1;
      e--;
    }
    mant &= 0x3ffu;
    return bnn__f32_from_bits(sign | ((uint32_t)(e + 127) << 23) | (mant << 13));
  }
  if (exp == 31) return bnn__f32_from_bits(sign | 0x7f800000u | (mant << 13));
  return bnn__f32_from_bits(sign | ((exp - 15u + 127u) << 23) | (mant << 13));
}

/* +1.0f when x >= 0 (so also for -0.0f), else -1.0f (NaN included), without a branch. */
static inline float bnn__sign_f32(float x) {
  uint32_t u = UINT32_C(0xbf800000) ^ ((uint32_t)(x >= 0.0f) << 31);
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* x when bit is 1, -x when bit is 0 (a sign flip, exact), without a branch. */
static inline float bnn__flip_unless(float x, int bit) {
  return bnn__f32_from_bits(bnn__f32_bits(x) ^ ((uint32_t)(~bit & 1) << 31));
}

/* |x| (clears the sign bit; NaN stays NaN). */
static inline float bnn__abs_f32(float x) {
  return bnn__f32_from_bits(bnn__f32_bits(x) & UINT32_C(0x7fffffff));
}

static inline float bnn__round_f16(float f) { return bnn__f16_to_f32(bnn__f32_to_f16(f)); }

/* out[i] = bnn__round_f16(x[i]) for n elements (half.c; fast paths); tmp: n scratch. */
void bnn__round_f16_buf(const float *x, int64_t n, float *out, uint16_t *tmp);

#endif /* BNNPI_INTERNAL_H */

/*
 * The float32 GEMM that the float-times-sign kernels (matmul.c, conv.c) run on, after
 * expanding a panel of signs into floats: C (+)= A . B, all row-major with leading
 * dimensions. Register blocks of 4 rows x 8 columns of C (8 four-lane accumulators)
 * over the whole K; edges in scalar C. Products and sums are rounded separately. On
 * x86 with AVX2 the whole of C goes to float_x86.c's blocks (6 x 16 with FMA, masked
 * edges), in the same order over K.
 */
#include "internal.h"
#include "simd.h"

#define MR 4
#define NR 8

/* A[i][p] is A[i * si + p * sp]: (si, sp) = (lda, 1) for A, (1, lda) for A^T stored. */
static void block_4x8(int64_t K, const float *A, int64_t si, int64_t sp, const float *B,
                      int64_t ldb, float *C, int64_t ldc, int accumulate) {
  bnn_v4 c00 = bnn_v4_splat(0.0f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00;
  const float *a0 = A, *a1 = A + si, *a2 = A + 2 * si, *a3 = A + 3 * si;
  int64_t p;
  for (p = 0; p < K; ++p) {
    const float *b = B + p * ldb;
    const bnn_v4 b0 = bnn_v4_load(b), b1 = bnn_v4_load(b + 4);
    bnn_v4 a = bnn_v4_splat(a0[p * sp]);
    c00 = bnn_v4_add(c00, bnn_v4_mul(a, b0));
    c01 = bnn_v4_add(c01, bnn_v4_mul(a, b1));
    a = bnn_v4_splat(a1[p * sp]);
    c10 = bnn_v4_add(c10, bnn_v4_mul(a, b0));
    c11 = bnn_v4_add(c11, bnn_v4_mul(a, b1));
    a = bnn_v4_splat(a2[p * sp]);
    c20 = bnn_v4_add(c20, bnn_v4_mul(a, b0));
    c21 = bnn_v4_add(c21, bnn_v4_mul(a, b1));
    a = bnn_v4_splat(a3[p * sp]);
    c30 = bnn_v4_add(c30, bnn_v4_mul(a, b0));
    c31 = bnn_v4_add(c31, bnn_v4_mul(a, b1));
  }
  if (accumulate) {
    c00 = bnn_v4_add(c00, bnn_v4_load(C));
    c01 = bnn_v4_add(c01, bnn_v4_load(C + 4));
    c10 = bnn_v4_add(c10, bnn_v4_load(C + ldc));
    c11 = bnn_v4_add(c11, bnn_v4_load(C + ldc + 4));
    c20 = bnn_v4_add(c20, bnn_v4_load(C + 2 * ldc));
    c21 = bnn_v4_add(c21, bnn_v4_load(C + 2 * ldc + 4));
    c30 = bnn_v4_add(c30, bnn_v4_load(C + 3 * ldc));
    c31 = bnn_v4_add(c31, bnn_v4_load(C + 3 * ldc + 4));
  }
  bnn_v4_store(C, c00);
  bnn_v4_store(C + 4, c01);
  bnn_v4_store(C + ldc, c10);
  bnn_v4_store(C + ldc + 4, c11);
  bnn_v4_store(C + 2 * ldc, c20);
  bnn_v4_store(C + 2 * ldc + 4, c21);
  bnn_v4_store(C + 3 * ldc, c30);
  bnn_v4_store(C + 3 * ldc + 4, c31);
}

/* One row of C, four columns at a time (the rows below the last full block of 4). */
static void row_block(int64_t N, int64_t K, const float *a, int64_t sp, const float *B,
                      int64_t ldb, float *c, int accumulate) {
  int64_t j = 0, p;
  for (; j + 4 <= N; j += 4) {
    bnn_v4 acc = bnn_v4_splat(0.0f);
    for (p = 0; p < K; ++p) {
      acc = bnn_v4_add(acc, bnn_v4_mul(bnn_v4_splat(a[p * sp]), bnn_v4_load(B + p * ldb + j)));
    }
    if (accumulate) acc = bnn_v4_add(acc, bnn_v4_load(c + j));
    bnn_v4_store(c + j, acc);
  }
  for (; j < N; ++j) {
    float s = 0.0f;
    for (p = 0; p < K; ++p) s += a[p * sp] * B[p * ldb + j];
    c[j] = accumulate ? c[j] + s : s;
  }
}

/* ---- the float implementation in use (bnn_set_float_impl) ------------------------ */

static int float_available(int impl) {
  if (impl == BNN__IMPL_PORTABLE) return 1;
#if BNN_HAVE_X86_SIMD
  if (impl == BNN__IMPL_AVX2 || impl == BNN__IMPL_AVX512) return bnn__x86_float_level() >= impl;
#endif
  return 0;
}

static int g_float = 0; /* 0: not chosen yet */

int bnn_float_impl_available(int impl) { return float_available(impl); }

int bnn_set_float_impl(int impl) {
  if (impl == 0) {
    impl = BNN__IMPL_PORTABLE;
#if BNN_HAVE_X86_SIMD
    impl = bnn__x86_float_level();
#endif
  } else if (!float_available(impl)) {
    return BNN_ERR_ARG;
  }
  g_float = impl;
  return BNN_OK;
}

int bnn_float_impl(void) {
  if (!g_float) bnn_set_float_impl(0);
  return g_float;
}

int bnn__float_level(void) { return bnn_float_impl(); }

const char *bnn_float_impl_name_of(int impl) {
  switch (impl) {
    case BNN__IMPL_PORTABLE: return BNN_SIMD_NAME;
    case BNN__IMPL_AVX2: return BNN_HAVE_X86_SIMD ? "x86-avx2" : NULL;
    case BNN__IMPL_AVX512: return BNN_HAVE_X86_SIMD ? "x86-avx512f" : NULL;
    default: return NULL;
  }
}

static void sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t si, int64_t sp,
                  const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {
  int64_t i = 0, j, ii;
#if BNN_HAVE_X86_SIMD
  {
    const int level = bnn__float_level();
    if (level >= BNN__IMPL_AVX2) { /* every row and column, by the vector blocks */
      bnn__x86_sgemm(level, M, N, K, A, si, sp, B, ldb, C, ldc, accumulate);
      return;
    }
  }
#endif
  for (; i + MR <= M; i += MR) {
    const float *Ai = A + i * si;
    float *Ci = C + i * ldc;
    for (j = 0; j + NR <= N; j += NR) {
      block_4x8(K, Ai, si, sp, B + j, ldb, Ci + j, ldc, accumulate);
    }
    if (j < N) {
      for (ii = 0; ii < MR; ++ii) {
        row_block(N - j, K, Ai + ii * si, sp, B + j, ldb, Ci + ii * ldc + j, accumulate);
      }
    }
  }
  for (; i < M; ++i) row_block(N, K, A + i * si, sp, B, ldb, C + i * ldc, accumulate);
}

void bnn__sgemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {
  sgemm(M, N, K, A, lda, 1, B, ldb, C, ldc, accumulate);
}

void bnn__sgemm_tn(int64_t M, int64_t N, int64_t K, const float *At, int64_t ldat,
                   const float *B, int64_t ldb, float *C, int64_t ldc, int accumulate) {
  sgemm(M, N, K, At, 1, ldat, B, ldb, C, ldc, accumulate);
}

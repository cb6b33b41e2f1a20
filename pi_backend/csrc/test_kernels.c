/*
 * A few kernels against hand-computed values, with no Python: the check that runs
 * on a cross build (e.g. under qemu-aarch64) and under the sanitizers.
 * make -C pi_backend test  /  make -C pi_backend SANITIZE=1 test
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnnpi.h"

static int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                            \
    }                                                                        \
  } while (0)

static void test_pack(void) {
  const float x[6] = {1.0f, -1.0f, 0.0f, -0.0f, -2.0f, 3.0f};
  float back[6], big[65], bigback[65];
  uint64_t p[1], q[2];
  int i;
  CHECK(bnn_words(0) == 0 && bnn_words(1) == 1 && bnn_words(64) == 1 && bnn_words(65) == 2);
  CHECK(bnn_pack(x, 1, 6, p) == BNN_OK);
  CHECK(p[0] == 0x2Du); /* bits 0, 2, 3, 5: x >= 0, sign(0) = sign(-0) = +1 */
  CHECK(bnn_unpack(p, 1, 6, back) == BNN_OK);
  CHECK(back[0] == 1.0f && back[1] == -1.0f && back[2] == 1.0f && back[3] == 1.0f &&
        back[4] == -1.0f && back[5] == 1.0f);
  for (i = 0; i < 65; ++i) big[i] = (i % 3 == 0) ? -1.0f : 0.5f;
  CHECK(bnn_pack(big, 1, 65, q) == BNN_OK);
  CHECK(q[1] == 1u); /* element 64 is +1 (64 % 3 != 0); the padding bits are 0 */
  CHECK(bnn_unpack(q, 1, 65, bigback) == BNN_OK);
  for (i = 0; i < 65; ++i) CHECK(bigback[i] == (big[i] >= 0.0f ? 1.0f : -1.0f));
  CHECK(bnn_pack(x, -1, 6, p) == BNN_ERR_SIZE);
  CHECK(bnn_pack(NULL, 1, 6, p) == BNN_ERR_NULL);
  CHECK(bnn_pack(NULL, 0, 6, NULL) == BNN_OK);
}

static void test_gemm(void) {
  const float a[3] = {1.0f, -1.0f, 1.0f};
  const float b[6] = {1.0f, 1.0f, 1.0f, -1.0f, 1.0f, -1.0f};
  float ones[65], neg[65], yf[2];
  uint64_t pa[1], pb[2], qa[2], qb[2];
  int32_t y[2];
  int i;
  bnn_pack(a, 1, 3, pa);
  bnn_pack(b, 2, 3, pb);
  CHECK(bnn_xnor_gemm_i32(pa, pb, 1, 2, 3, y) == BNN_OK);
  CHECK(y[0] == 1 && y[1] == -3);
  CHECK(bnn_xnor_gemm_f32(pa, pb, 1, 2, 3, yf) == BNN_OK);
  CHECK(yf[0] == 1.0f && yf[1] == -3.0f);
  pa[0] |= UINT64_C(1) << 40; /* garbage in a padding bit must not count */
  CHECK(bnn_xnor_gemm_i32(pa, pb, 1, 2, 3, y) == BNN_OK && y[0] == 1 && y[1] == -3);
  for (i = 0; i < 65; ++i) {
    ones[i] = 1.0f;
    neg[i] = -1.0f;
  }
  bnn_pack(ones, 1, 65, qa);
  bnn_pack(neg, 1, 65, qb);
  CHECK(bnn_xnor_gemm_i32(qa, qb, 1, 1, 65, y) == BNN_OK && y[0] == -65);
  CHECK(bnn_xnor_gemm_i32(qa, qa, 1, 1, 65, y) == BNN_OK && y[0] == 65);
  CHECK(bnn_xnor_gemm_i32(qa, qb, 1, 1, (int64_t)INT32_MAX + 1, y) == BNN_ERR_SIZE);
}

/* Every available popcount implementation agrees with the portable one on
 * pseudo-random rows of many lengths and shapes (register-block remainders, several
 * blocks of b rows, sweeps of several pairs of blocks then a partial one (n = 330),
 * rows past the 16-bit counters of the SIMD kernels). */
static void test_popcount_impls(void) {
  enum { MMAX = 11, NMAX = 330, WMAX = 5, KMAX = 300 };
  static const int dims[][2] = {{3, 7}, {11, 150}, {9, 64}, {5, 33}, {1, 129}, {8, 65},
                                {7, 330}};
  static uint64_t a[MMAX * WMAX], b[NMAX * WMAX];
  static int32_t y1[MMAX * NMAX], y2[MMAX * NMAX];
  uint64_t s = UINT64_C(0x9E3779B97F4A7C15);
  size_t d;
  int k, i, impl, tested = 0;
  for (i = 0; i < MMAX * WMAX; ++i) a[i] = (s = s * 6364136223846793005u + 1442695040888963407u);
  for (i = 0; i < NMAX * WMAX; ++i) b[i] = (s = s * 6364136223846793005u + 1442695040888963407u);
  CHECK(bnn_popcount_impl_available(1) == 1 && bnn_popcount_impl_available(5) == 0);
  CHECK(strcmp(bnn_popcount_impl_name_of(1), "portable") == 0 &&
        bnn_popcount_impl_name_of(5) == NULL);
  for (impl = 2; impl <= 4; ++impl) {
    if (!bnn_popcount_impl_available(impl)) {
      CHECK(bnn_set_popcount_impl(impl) == BNN_ERR_ARG);
      continue;
    }
    tested++;
    for (d = 0; d < sizeof dims / sizeof dims[0]; ++d) {
      const int m = dims[d][0], n = dims[d][1];
      for (k = 1; k <= KMAX; k += 13) {  /* rows are bnn_words(k) <= 5 words apart */
        CHECK(bnn_set_popcount_impl(1) == BNN_OK);
        CHECK(bnn_xnor_gemm_i32(a, b, m, n, k, y1) == BNN_OK);
        for (i = 0; i < m * n; ++i) CHECK(y1[i] >= -k && y1[i] <= k && (y1[i] - k) % 2 == 0);
        CHECK(bnn_set_popcount_impl(impl) == BNN_OK && bnn_popcount_impl() == impl);
        CHECK(bnn_xnor_gemm_i32(a, b, m, n, k, y2) == BNN_OK);
        if (memcmp(y1, y2, (size_t)(m * n) * sizeof(int32_t)) != 0) {
          fprintf(stderr, "  impl %d (%s), m %d, n %d, k %d differs from portable\n", impl,
                  bnn_popcount_impl_name(), m, n, k);
          failures++;
        }
      }
    }
  }
  { /* long rows: NEON flushes 16-bit counters every 4095 steps, the SIMD kernels every
     * 8184 bytes; a row equal to another gives exactly k, its complement -k (every
     * counter at its maximum) */
    const int64_t k = 600000, wk = bnn_words(k);
    uint64_t *la = (uint64_t *)malloc((size_t)(2 * wk) * sizeof(uint64_t));
    uint64_t *lb = (uint64_t *)malloc((size_t)(3 * wk) * sizeof(uint64_t));
    int32_t l1[6], l2[6];
    int64_t t;
    CHECK(la && lb);
    if (la && lb) {
      for (t = 0; t < 2 * wk; ++t) la[t] = (s = s * 6364136223846793005u + 1442695040888963407u);
      for (t = 0; t < 3 * wk; ++t) lb[t] = (s = s * 6364136223846793005u + 1442695040888963407u);
      memcpy(lb + 2 * wk, la, (size_t)wk * sizeof(uint64_t));  /* b_2 == a_0 */
      for (t = 0; t < wk; ++t) lb[wk + t] = ~la[t];              /* b_1 == -a_0 */
      CHECK(k % 64 == 0); /* (no padding bits to clear in b_1) */
      CHECK(bnn_set_popcount_impl(1) == BNN_OK);
      CHECK(bnn_xnor_gemm_i32(la, lb, 2, 3, k, l1) == BNN_OK);
      CHECK(l1[2] == k && l1[1] == -k);
      for (impl = 2; impl <= 4; ++impl) {
        if (bnn_set_popcount_impl(impl) != BNN_OK) continue;
        CHECK(bnn_xnor_gemm_i32(la, lb, 2, 3, k, l2) == BNN_OK);
        CHECK(memcmp(l1, l2, sizeof l1) == 0);
      }
    }
    free(la);
    free(lb);
  }
  CHECK(bnn_set_popcount_impl(0) == BNN_OK);
  CHECK(bnn_set_popcount_impl(7) == BNN_ERR_ARG);
  printf("popcount: %s (%d hardware implementation(s) checked against portable)\n",
         bnn_popcount_impl_name(), tested);
}

static void test_half(void) {
  const float in[7] = {1.0f, 65504.0f, 65520.0f, 5.9604645e-08f /* 2^-24 */,
                       2.9802322e-08f /* 2^-25: tie, to even 0 */,
                       4.4703484e-08f /* 1.5 * 2^-25 */, -2.0f};
  const uint16_t want[7] = {0x3C00, 0x7BFF, 0x7C00, 0x0001, 0x0000, 0x0001, 0xC000};
  uint16_t h[7];
  float back[7];
  int i;
  CHECK(bnn_f32_to_f16(in, 7, h) == BNN_OK);
  for (i = 0; i < 7; ++i) CHECK(h[i] == want[i]);
  CHECK(bnn_f16_to_f32(h, 7, back) == BNN_OK);
  CHECK(back[0] == 1.0f && back[1] == 65504.0f && isinf(back[2]) && back[3] == in[3] &&
        back[4] == 0.0f && back[6] == -2.0f);
}

static void test_po2(void) {
  /* max|g| = 3 -> R = 2 (1.5 >= sqrt 2), b = 8 - 2 = 6; v = 48, -6.4, 0, 192;
   * e = 6, 3, -, clip(8) = 7 -> q = 1, -0.125, 0, 2 */
  const float g[4] = {0.75f, -0.1f, 0.0f, 3.0f};
  float q[4];
  CHECK(bnn_po2(g, 4, 4, 8, 0, NULL, q) == BNN_OK);
  CHECK(q[0] == 1.0f && q[1] == -0.125f && q[2] == 0.0f && q[3] == 2.0f);
  CHECK(bnn_po2(g, 4, 4, 8, 1, NULL, q) == BNN_OK);
  CHECK(q[2] == ldexpf(1.0f, -8 - 6)); /* reference zeros: +2^(-8 - b) */
  CHECK(bnn_po2(g, 4, 0, 8, 0, NULL, q) == BNN_ERR_ARG);
}

static void test_conv(void) {
  /* x 1x2x2x1 = [[+1, -1], [-1, +1]]; w 3x3x1x1: +1 at the centre, -1 elsewhere;
   * SAME padding 1. At (0, 0) the valid taps are the centre (+1 * +1), right and
   * down (-1 * -1 each) and the diagonal (+1 * -1): y = 2. By symmetry y = 2 at
   * (1, 1); at (0, 1): centre -1*+1, left +1*-1, diagonal -1*-1, down +1*-1: -2. */
  const float x[4] = {1.0f, -1.0f, -1.0f, 1.0f};
  float w[9], yf[4];
  uint64_t xp[4], wp[9];
  int32_t y[4];
  int i;
  for (i = 0; i < 9; ++i) w[i] = i == 4 ? 1.0f : -1.0f;
  CHECK(bnn_pack(x, 4, 1, xp) == BNN_OK);
  CHECK(bnn_pack_conv_weights(w, 3, 3, 1, 1, wp) == BNN_OK);
  CHECK(bnn_binary_conv2d_i32(xp, wp, 1, 2, 2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, y) == BNN_OK);
  CHECK(y[0] == 2 && y[1] == -2 && y[2] == -2 && y[3] == 2);
  /* the first-layer float conv agrees */
  CHECK(bnn_pack(w, 9, 1, wp) == BNN_OK); /* (3, 3, 1, words(1)) */
  CHECK(bnn_sign_conv2d(x, wp, 1, 2, 2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, yf) == BNN_OK);
  CHECK(yf[0] == 2.0f && yf[1] == -2.0f && yf[2] == -2.0f && yf[3] == 2.0f);
  CHECK(bnn_binary_conv2d_i32(xp, wp, 1, 2, 2, 1, 1, 3, 3, 1, 1, 0, 0, 0, 0, y) ==
        BNN_ERR_SIZE); /* kernel larger than the unpadded input */
  wp[0] |= 2u;       /* a padding bit (c_in = 1) */
  CHECK(bnn_binary_conv2d_i32(xp, wp, 1, 2, 2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, y) ==
        BNN_ERR_PADDING);
}

static void test_batch_norm(void) {
  /* one channel, x = [1, 3]: mean 2, psi 1, scale 1 (eps 0), x_hat = [-1, 1], m = 1.
   * dy = [1, 0]: g = [1, 0], mean g = 0.5, mean(g s) = -0.5:
   * dx = g - 0.5 - s * (-0.5) = [0, 0]; dbeta = 1. */
  const float x[2] = {1.0f, 3.0f}, beta[1] = {0.25f}, dy[2] = {1.0f, 0.0f};
  float y[2], mean[1], scale[1], dx[2], dbeta[1], rm[1] = {0.0f}, rs[1] = {1.0f};
  uint64_t bits[2];
  uint16_t s16[1], m16[1];
  CHECK(bnn_bn_l1_forward(x, beta, 2, 1, 0.0f, y, mean, scale, bits, s16, m16, rm, rs,
                          0.9) == BNN_OK);
  CHECK(mean[0] == 2.0f && scale[0] == 1.0f && y[0] == -0.75f && y[1] == 1.25f);
  CHECK(bits[0] == 0u && bits[1] == 1u && s16[0] == 0x3C00 && m16[0] == 0x3C00);
  CHECK(fabsf(rm[0] - 0.2f) < 1e-6f && fabsf(rs[0] - 1.0f) < 1e-6f);
  CHECK(bnn_bn_l1_backward(dy, bits, s16, m16, 2, 1, 1, dx, dbeta) == BNN_OK);
  CHECK(dx[0] == 0.0f && dx[1] == 0.0f && dbeta[0] == 1.0f);
  CHECK(bnn_bn_l1_forward(x, beta, 0, 1, 0.0f, y, mean, scale, bits, s16, m16, NULL, NULL,
                          0.9) == BNN_ERR_SIZE);
}

static void test_pool_and_sign(void) {
  /* 2x2 window [[1, 3], [3, 2]]: max 3, first in row-major order is (0, 1). */
  const float x[4] = {1.0f, 3.0f, 3.0f, 2.0f}, dyp[1] = {5.0f};
  const float s[5] = {0.5f, -1.0f, 1.5f, -2.0f, 0.0f}, dys[5] = {1, 2, 3, 4, 5};
  float y[1], dx[4], ys[5], dxs[5];
  uint64_t mask[4], m[1];
  CHECK(bnn_max_pool2x2_forward(x, 1, 2, 2, 1, y, mask) == BNN_OK);
  CHECK(y[0] == 3.0f && mask[0] == 0 && mask[1] == 1 && mask[2] == 0 && mask[3] == 0);
  CHECK(bnn_max_pool2x2_backward(dyp, mask, 1, 2, 2, 1, dx) == BNN_OK);
  CHECK(dx[0] == 0.0f && dx[1] == 5.0f && dx[2] == 0.0f && dx[3] == 0.0f);
  CHECK(bnn_sign_ste_forward(s, 1, 5, 1.0f, ys, m) == BNN_OK);
  CHECK(m[0] == 0x13u && ys[0] == 1.0f && ys[1] == -1.0f && ys[4] == 1.0f);
  CHECK(bnn_sign_ste_backward(dys, m, 1, 5, dxs) == BNN_OK);
  CHECK(dxs[0] == 1.0f && dxs[1] == 2.0f && dxs[2] == 0.0f && dxs[3] == 0.0f && dxs[4] == 5.0f);
}

static void test_adam(void) {
  /* w = 1, g = 0.5, step 1: m = 0.05, v = 0.00025, m_hat = 0.5, v_hat = 0.25,
   * update ~ 1, w = 1 - 0.001 = 0.999 -> nearest float16 0.99902344 (0x3BFE). */
  uint16_t w[1] = {0x3C00}, m[1] = {0}, v[1] = {0};
  const float g[1] = {0.5f};
  float back;
  CHECK(bnn_adam_f16(w, m, v, g, 1, 1, 1e-3f, 0.9f, 0.999f, 1e-8f) == BNN_OK);
  CHECK(w[0] == 0x3BFE);
  bnn_f16_to_f32(m, 1, &back);
  CHECK(fabsf(back - 0.05f) < 1e-4f);
  CHECK(bnn_adam_f16(w, m, v, g, 1, 0, 1e-3f, 0.9f, 0.999f, 1e-8f) == BNN_ERR_ARG);
}


/* ---- randomized cross-checks against naive loops (exercise the SIMD paths) ---------- */

static uint64_t rng_state = UINT64_C(0x853c49e6748fea9b);

static float rnd(void) { /* uniform in [-1, 1), with exact zeros now and then */
  uint32_t r;
  rng_state = rng_state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
  r = (uint32_t)(rng_state >> 33);
  if (r % 17 == 0) return 0.0f;
  return (float)r / 1073741824.0f - 1.0f;
}

static float *rnd_array(int64_t n) {
  float *a = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  int64_t i;
  for (i = 0; i < n; ++i) a[i] = rnd();
  return a;
}

static float sgn(float v) { return v >= 0.0f ? 1.0f : -1.0f; }

static int close_arrays(const float *got, const double *want, int64_t n, double tol) {
  int64_t i;
  for (i = 0; i < n; ++i) {
    if (fabs((double)got[i] - want[i]) > tol) {
      fprintf(stderr, "  element %ld: got %.7g, want %.7g\n", (long)i, got[i], want[i]);
      return 0;
    }
  }
  return 1;
}

static void test_pack_random(void) {
  int64_t n, j;
  for (n = 1; n <= 200; n += 3) {
    float *x = rnd_array(n), *back = (float *)malloc((size_t)n * sizeof(float));
    uint64_t *p = (uint64_t *)calloc((size_t)bnn_words(n), sizeof(uint64_t));
    int ok = 1;
    if (n > 5) {
      x[1] = -0.0f;
      x[2] = NAN;
    }
    CHECK(bnn_pack(x, 1, n, p) == BNN_OK);
    for (j = 0; j < n; ++j) ok &= (int)((p[j / 64] >> (j % 64)) & 1u) == (x[j] >= 0.0f);
    if (n % 64) ok &= (p[n / 64] >> (n % 64)) == 0;
    CHECK(ok);
    CHECK(bnn_unpack(p, 1, n, back) == BNN_OK);
    for (j = 0; j < n; ++j) ok &= back[j] == sgn(x[j]);
    CHECK(ok);
    free(x);
    free(back);
    free(p);
  }
}

/* bnn_bn_eval against the scalar expression (the same float32 operations: equal bits,
 * vector loops included), and bnn_bn_eval_sign against the signs of that. */
static void test_bn_eval_random(void) {
  int64_t c, i, j;
  for (c = 1; c <= 140; c += 11) {
    const int64_t n = 3, wc = bnn_words(c);
    float *x = rnd_array(n * c), *beta = rnd_array(c), *mean = rnd_array(c);
    float *scale = rnd_array(c), *y = (float *)malloc((size_t)(n * c) * sizeof(float));
    uint64_t *bits = (uint64_t *)malloc((size_t)(n * wc) * sizeof(uint64_t));
    int ok = 1;
    for (j = 0; j < c; ++j) {
      scale[j] = 0.25f + fabsf(scale[j]);
      if (j % 3 == 0) beta[j] = 0.0f;
      if (j % 4 == 0) x[j] = mean[j];  /* y = beta: +-0 where beta = 0 */
    }
    CHECK(bnn_bn_eval(x, beta, mean, scale, n, c, y) == BNN_OK);
    CHECK(bnn_bn_eval_sign(x, beta, mean, scale, n, c, bits) == BNN_OK);
    for (i = 0; i < n; ++i) {
      for (j = 0; j < c; ++j) {
        const float want = (x[i * c + j] - mean[j]) / scale[j] + beta[j];
        ok &= memcmp(&want, &y[i * c + j], sizeof want) == 0;
        ok &= (int)((bits[i * wc + j / 64] >> (j % 64)) & 1u) == (want >= 0.0f);
      }
      if (c % 64) ok &= (bits[i * wc + wc - 1] >> (c % 64)) == 0;
    }
    CHECK(ok);
    CHECK(bnn_bn_eval_sign(x, beta, mean, scale, 0, c, bits) == BNN_ERR_SIZE);
    CHECK(bnn_bn_eval_sign(x, beta, NULL, scale, n, c, bits) == BNN_ERR_NULL);
    free(x);
    free(beta);
    free(mean);
    free(scale);
    free(y);
    free(bits);
  }
}

static void test_dense_random(void) {
  static const int64_t dims[][3] = {{1, 1, 1}, {5, 7, 3}, {9, 65, 13}, {4, 130, 64}, {13, 64, 9}};
  size_t d;
  for (d = 0; d < sizeof dims / sizeof dims[0]; ++d) {
    const int64_t m = dims[d][0], k = dims[d][1], n = dims[d][2];
    float *x = rnd_array(m * k), *w = rnd_array(k * n), *dy = rnd_array(m * n);
    float *y = (float *)malloc((size_t)(m * n) * sizeof(float));
    float *dx = (float *)malloc((size_t)(m * k) * sizeof(float));
    float *dw = (float *)malloc((size_t)(k * n) * sizeof(float));
    double *want = (double *)malloc((size_t)(m * n + m * k + 2 * k * n) * sizeof(double));
    uint64_t *xp = (uint64_t *)malloc((size_t)(m * bnn_words(k)) * sizeof(uint64_t));
    uint64_t *wp = (uint64_t *)malloc((size_t)(k * bnn_words(n)) * sizeof(uint64_t));
    int64_t i, j, p;
    bnn_pack(x, m, k, xp);
    bnn_pack(w, k, n, wp);
    for (i = 0; i < m; ++i) {    /* y = x . sign(w) */
      for (j = 0; j < n; ++j) {
        double s = 0.0;
        for (p = 0; p < k; ++p) s += (double)x[i * k + p] * sgn(w[p * n + j]);
        want[i * n + j] = s;
      }
    }
    CHECK(bnn_sign_matmul(x, w, m, k, n, y) == BNN_OK && close_arrays(y, want, m * n, 1e-4));
    CHECK(bnn_sign_matmul_packed(x, wp, m, k, n, y) == BNN_OK &&
          close_arrays(y, want, m * n, 1e-4));
    for (i = 0; i < m; ++i) {    /* dx = dy . sign(w)^T */
      for (p = 0; p < k; ++p) {
        double s = 0.0;
        for (j = 0; j < n; ++j) s += (double)dy[i * n + j] * sgn(w[p * n + j]);
        want[i * k + p] = s;
      }
    }
    CHECK(bnn_matmul_sign_t(dy, w, m, k, n, dx) == BNN_OK && close_arrays(dx, want, m * k, 1e-4));
    CHECK(bnn_matmul_sign_t_packed(dy, wp, m, k, n, dx) == BNN_OK &&
          close_arrays(dx, want, m * k, 1e-4));
    for (p = 0; p < k; ++p) {    /* dw = sign(x)^T . dy and x^T . dy */
      for (j = 0; j < n; ++j) {
        double s = 0.0, t = 0.0;
        for (i = 0; i < m; ++i) {
          s += (double)sgn(x[i * k + p]) * dy[i * n + j];
          t += (double)x[i * k + p] * dy[i * n + j];
        }
        want[p * n + j] = s;
        want[k * n + p * n + j] = t;
      }
    }
    CHECK(bnn_sign_t_matmul(xp, dy, m, k, n, dw) == BNN_OK && close_arrays(dw, want, k * n, 1e-4));
    CHECK(bnn_t_matmul(x, dy, m, k, n, dw) == BNN_OK &&
          close_arrays(dw, want + k * n, k * n, 1e-4));
    free(x); free(w); free(dy); free(y); free(dx); free(dw); free(want); free(xp); free(wp);
  }
}

/* Direct convolution loops: y (b, oh, ow, co) = sum x[iy, ix, ci] * v(w), zero padding. */
static void test_conv_random(void) {
  /* b, h, w, c, co, kh, kw, sh, sw, pt, pb, pl, pr */
  static const int64_t cases[][13] = {{2, 5, 6, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1},
                                      {1, 7, 5, 65, 9, 3, 2, 2, 1, 0, 2, 1, 0},
                                      {1, 4, 4, 70, 66, 1, 1, 1, 1, 0, 0, 0, 0},
                                      {2, 6, 7, 8, 5, 5, 5, 3, 2, 2, 2, 2, 2}};
  size_t cs;
  for (cs = 0; cs < sizeof cases / sizeof cases[0]; ++cs) {
    const int64_t *a = cases[cs];
    const int64_t b = a[0], h = a[1], w = a[2], c = a[3], co = a[4], kh = a[5], kw = a[6];
    const int64_t sh = a[7], sw = a[8], pt = a[9], pl = a[11];
    int64_t oh, ow, n, oy, ox, ky, kx, ci, o, i;
    float *x, *wt, *dy, *y, *dx, *dw;
    double *want_y, *want_yb, *want_dx, *want_dw, *want_dwb;
    uint64_t *xp, *wc, *ws;
    int32_t *yi;
    CHECK(bnn_conv_output_size(h, w, kh, kw, sh, sw, a[9], a[10], a[11], a[12], &oh, &ow) ==
          BNN_OK);
    x = rnd_array(b * h * w * c);
    wt = rnd_array(kh * kw * c * co);
    dy = rnd_array(b * oh * ow * co);
    y = (float *)malloc((size_t)(b * oh * ow * co) * sizeof(float));
    dx = (float *)malloc((size_t)(b * h * w * c) * sizeof(float));
    dw = (float *)malloc((size_t)(kh * kw * c * co) * sizeof(float));
    yi = (int32_t *)malloc((size_t)(b * oh * ow * co) * sizeof(int32_t));
    want_y = (double *)calloc((size_t)(b * oh * ow * co), sizeof(double));
    want_yb = (double *)calloc((size_t)(b * oh * ow * co), sizeof(double));
    want_dx = (double *)calloc((size_t)(b * h * w * c), sizeof(double));
    want_dw = (double *)calloc((size_t)(kh * kw * c * co), sizeof(double));
    want_dwb = (double *)calloc((size_t)(kh * kw * c * co), sizeof(double));
    xp = (uint64_t *)malloc((size_t)(b * h * w * bnn_words(c)) * sizeof(uint64_t));
    wc = (uint64_t *)malloc((size_t)(co * kh * kw * bnn_words(c)) * sizeof(uint64_t));
    ws = (uint64_t *)malloc((size_t)(kh * kw * c * bnn_words(co)) * sizeof(uint64_t));
    bnn_pack(x, b * h * w, c, xp);
    CHECK(bnn_pack_conv_weights(wt, kh, kw, c, co, wc) == BNN_OK);
    bnn_pack(wt, kh * kw * c, co, ws);
    for (n = 0; n < b; ++n) for (oy = 0; oy < oh; ++oy) for (ox = 0; ox < ow; ++ox)
      for (ky = 0; ky < kh; ++ky) for (kx = 0; kx < kw; ++kx) {
        const int64_t iy = oy * sh - pt + ky, ix = ox * sw - pl + kx;
        if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
        for (ci = 0; ci < c; ++ci) for (o = 0; o < co; ++o) {
          const int64_t xi = ((n * h + iy) * w + ix) * c + ci;
          const int64_t wi = ((ky * kw + kx) * c + ci) * co + o;
          const int64_t yo = ((n * oh + oy) * ow + ox) * co + o;
          const double sw_ = sgn(wt[wi]);
          want_y[yo] += x[xi] * sw_;
          want_yb[yo] += sgn(x[xi]) * sw_;
          want_dx[xi] += dy[yo] * sw_;
          want_dw[wi] += (double)x[xi] * dy[yo];
          want_dwb[wi] += sgn(x[xi]) * (double)dy[yo];
        }
      }
    CHECK(bnn_binary_conv2d_i32(xp, wc, b, h, w, c, co, kh, kw, sh, sw, a[9], a[10], a[11],
                                a[12], yi) == BNN_OK);
    for (i = 0; i < b * oh * ow * co; ++i) y[i] = (float)yi[i];
    CHECK(close_arrays(y, want_yb, b * oh * ow * co, 0.0));
    CHECK(bnn_binary_conv2d_f32(xp, wc, b, h, w, c, co, kh, kw, sh, sw, a[9], a[10], a[11],
                                a[12], y) == BNN_OK &&
          close_arrays(y, want_yb, b * oh * ow * co, 0.0));
    CHECK(bnn_sign_conv2d(x, ws, b, h, w, c, co, kh, kw, sh, sw, a[9], a[10], a[11], a[12],
                          y) == BNN_OK && close_arrays(y, want_y, b * oh * ow * co, 1e-3));
    CHECK(bnn_conv2d_backward_input(dy, ws, b, h, w, c, co, kh, kw, sh, sw, a[9], a[10],
                                    a[11], a[12], dx) == BNN_OK &&
          close_arrays(dx, want_dx, b * h * w * c, 1e-3));
    CHECK(bnn_conv2d_backward_weight_f32(x, dy, b, h, w, c, co, kh, kw, sh, sw, a[9], a[10],
                                         a[11], a[12], dw) == BNN_OK &&
          close_arrays(dw, want_dw, kh * kw * c * co, 1e-3));
    CHECK(bnn_conv2d_backward_weight_packed(xp, dy, b, h, w, c, co, kh, kw, sh, sw, a[9],
                                            a[10], a[11], a[12], dw) == BNN_OK &&
          close_arrays(dw, want_dwb, kh * kw * c * co, 1e-3));
    free(x); free(wt); free(dy); free(y); free(dx); free(dw); free(yi);
    free(want_y); free(want_yb); free(want_dx); free(want_dw); free(want_dwb);
    free(xp); free(wc); free(ws);
  }
}

int main(void) {
  CHECK(bnn_abi_version() == BNN_ABI_VERSION);
  test_pack();
  test_gemm();
  test_popcount_impls();
  test_half();
  test_po2();
  test_conv();
  test_batch_norm();
  test_pool_and_sign();
  test_adam();
  test_pack_random();
  test_bn_eval_random();
  test_dense_random();
  test_conv_random();
  if (failures) {
    fprintf(stderr, "test_kernels: %d check(s) failed\n", failures);
    return 1;
  }
  printf("test_kernels: all checks passed\n");
  return 0;
}

/*
 * One training step of a small binary MLP and of a binary conv block, as the Python side
 * runs it (proposed method), with every popcount implementation this CPU has: the
 * sequence of kernel calls that the memory checkers run (valgrind memcheck, in
 * tests/pi_backend/test_sanitizers.py). Odd sizes, so that padding bits and remainders
 * are exercised. Checks every return code and a few invariants; prints a checksum.
 *   make -C pi_backend step && valgrind --error-exitcode=1 pi_backend/build/train_step
 */
#include <stdio.h>
#include <stdlib.h>

#include "bnnpi.h"

static int failures = 0;

#define OK(call)                                                                \
  do {                                                                          \
    int rc_ = (call);                                                           \
    if (rc_ != BNN_OK) {                                                        \
      fprintf(stderr, "%s:%d: %s returned %d (%s)\n", __FILE__, __LINE__, #call, \
              rc_, bnn_error_string(rc_));                                      \
      failures++;                                                               \
    }                                                                           \
  } while (0)

static uint64_t rng = UINT64_C(0x2545F4914F6CDD1D);

static float *randn(int64_t n) {
  float *a = (float *)malloc((size_t)n * sizeof(float));
  int64_t i;
  for (i = 0; i < n; ++i) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    a[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  return a;
}

static void *alloc(int64_t n, size_t elem) { return calloc((size_t)n, elem); }

static double sum(const float *a, int64_t n) {
  double s = 0.0;
  int64_t i;
  for (i = 0; i < n; ++i) s += a[i];
  return s;
}

/* A dense binary layer's weights as the trainer keeps them: latent float16 W (k, n) and
 * its Adam moments; packed sign(W) for the forward (pack_transposed) and backward. */
typedef struct {
  int64_t k, n;
  uint16_t *w16, *m16, *v16;
  float *w;
  uint64_t *wt, *wp; /* pack(W^T) (n, words(k)); pack(W) (k, words(n)) */
} dense;

static void dense_init(dense *d, int64_t k, int64_t n) {
  d->k = k;
  d->n = n;
  d->w = randn(k * n);
  d->w16 = (uint16_t *)alloc(k * n, sizeof(uint16_t));
  d->m16 = (uint16_t *)alloc(k * n, sizeof(uint16_t));
  d->v16 = (uint16_t *)alloc(k * n, sizeof(uint16_t));
  d->wt = (uint64_t *)alloc(n * bnn_words(k), sizeof(uint64_t));
  d->wp = (uint64_t *)alloc(k * bnn_words(n), sizeof(uint64_t));
  OK(bnn_f32_to_f16(d->w, k * n, d->w16));
}

static void dense_pack(dense *d) {
  OK(bnn_f16_to_f32(d->w16, d->k * d->n, d->w));
  OK(bnn_pack_transposed(d->w, d->k, d->n, d->wt));
  OK(bnn_pack(d->w, d->k, d->n, d->wp));
}

/* Adam on the po2-quantized gradient g (k * n floats, overwritten). */
static void dense_update(dense *d, float *g, int64_t step, const uint32_t *random) {
  OK(bnn_po2(g, d->k * d->n, 4, 8, 0, random, g));
  OK(bnn_adam_f16(d->w16, d->m16, d->v16, g, d->k * d->n, step, 1e-3f, 0.9f, 0.999f, 1e-8f));
}

static void dense_free(dense *d) {
  free(d->w); free(d->w16); free(d->m16); free(d->v16); free(d->wt); free(d->wp);
}

/* Batch norm + sign of one hidden layer: forward keeps the packed bits, backward. */
typedef struct {
  int64_t rows, c;
  float *beta, *mean, *scale, *rm, *rs, *y;
  uint64_t *bits, *mask;
  uint16_t *s16, *m16;
} bn_sign;

static void bn_init(bn_sign *b, int64_t rows, int64_t c) {
  int64_t i;
  b->rows = rows;
  b->c = c;
  b->beta = (float *)alloc(c, sizeof(float));
  b->mean = (float *)alloc(c, sizeof(float));
  b->scale = (float *)alloc(c, sizeof(float));
  b->rm = (float *)alloc(c, sizeof(float));
  b->rs = (float *)alloc(c, sizeof(float));
  for (i = 0; i < c; ++i) b->rs[i] = 1.0f;
  b->y = (float *)alloc(rows * c, sizeof(float));
  b->bits = (uint64_t *)alloc(rows * bnn_words(c), sizeof(uint64_t));
  b->mask = (uint64_t *)alloc(rows * bnn_words(c), sizeof(uint64_t));
  b->s16 = (uint16_t *)alloc(c, sizeof(uint16_t));
  b->m16 = (uint16_t *)alloc(c, sizeof(uint16_t));
}

/* x (rows, c) -> a (rows, c) +-1 and its packing ap (rows, words(c)). */
static void bn_forward(bn_sign *b, const float *x, float *a, uint64_t *ap) {
  OK(bnn_bn_l1_forward(x, b->beta, b->rows, b->c, 1e-5f, b->y, b->mean, b->scale, b->bits,
                       b->s16, b->m16, b->rm, b->rs, 0.9));
  OK(bnn_sign_ste_forward(b->y, b->rows, b->c, 1.0f, a, b->mask));
  OK(bnn_pack(a, b->rows, b->c, ap));
}

/* da (rows, c) -> dx (rows, c); dbeta into b->beta's gradient buffer g (c). */
static void bn_backward(bn_sign *b, const float *da, float *tmp, float *dx, float *dbeta) {
  OK(bnn_sign_ste_backward(da, b->mask, b->rows, b->c, tmp));
  OK(bnn_bn_l1_backward(tmp, b->bits, b->s16, b->m16, b->rows, b->c, 1, dx, dbeta));
}

static void bn_free(bn_sign *b) {
  free(b->beta); free(b->mean); free(b->scale); free(b->rm); free(b->rs); free(b->y);
  free(b->bits); free(b->mask); free(b->s16); free(b->m16);
}

/* MLP 100 -> 70 -> 70 -> 10 at batch 13: first layer real x . sign(W1), then XNOR. */
static double mlp_step(int64_t step) {
  enum { B = 13, D0 = 100, D1 = 70, D2 = 70, D3 = 10 };
  dense l1, l2, l3;
  bn_sign n1, n2;
  float *x = randn(B * D0), *dlogits = randn(B * D3);
  float *h1 = (float *)alloc(B * D1, sizeof(float)), *a1 = (float *)alloc(B * D1, sizeof(float));
  float *h2 = (float *)alloc(B * D2, sizeof(float)), *a2 = (float *)alloc(B * D2, sizeof(float));
  float *logits = (float *)alloc(B * D3, sizeof(float));
  int32_t *logits_i = (int32_t *)alloc(B * D3, sizeof(int32_t));
  uint64_t *a1p = (uint64_t *)alloc(B * bnn_words(D1), sizeof(uint64_t));
  uint64_t *a2p = (uint64_t *)alloc(B * bnn_words(D2), sizeof(uint64_t));
  float *g1 = (float *)alloc(D0 * D1, sizeof(float)), *g2 = (float *)alloc(D1 * D2, sizeof(float));
  float *g3 = (float *)alloc(D2 * D3, sizeof(float));
  float *da2 = (float *)alloc(B * D2, sizeof(float)), *dh2 = (float *)alloc(B * D2, sizeof(float));
  float *da1 = (float *)alloc(B * D1, sizeof(float)), *dh1 = (float *)alloc(B * D1, sizeof(float));
  float *tmp = (float *)alloc(B * D2, sizeof(float)), *dbeta = (float *)alloc(D2, sizeof(float));
  uint32_t *random = (uint32_t *)alloc(D0 * D1, sizeof(uint32_t));
  double check;
  int64_t i;
  for (i = 0; i < D0 * D1; ++i) random[i] = (uint32_t)(i * 2654435761u);
  dense_init(&l1, D0, D1);
  dense_init(&l2, D1, D2);
  dense_init(&l3, D2, D3);
  bn_init(&n1, B, D1);
  bn_init(&n2, B, D2);
  dense_pack(&l1);
  dense_pack(&l2);
  dense_pack(&l3);
  /* forward */
  OK(bnn_sign_matmul_packed(x, l1.wp, B, D0, D1, h1));
  bn_forward(&n1, h1, a1, a1p);
  OK(bnn_xnor_gemm_f32(a1p, l2.wt, B, D2, D1, h2));
  bn_forward(&n2, h2, a2, a2p);
  OK(bnn_xnor_gemm_f32(a2p, l3.wt, B, D3, D2, logits));
  OK(bnn_xnor_gemm_i32(a2p, l3.wt, B, D3, D2, logits_i));
  for (i = 0; i < B * D3; ++i) {
    if ((float)logits_i[i] != logits[i]) failures++;
  }
  /* backward */
  OK(bnn_sign_t_matmul(a2p, dlogits, B, D2, D3, g3));
  OK(bnn_matmul_sign_t_packed(dlogits, l3.wp, B, D2, D3, da2));
  bn_backward(&n2, da2, tmp, dh2, dbeta);
  OK(bnn_sign_t_matmul(a1p, dh2, B, D1, D2, g2));
  OK(bnn_matmul_sign_t(dh2, l2.w, B, D1, D2, da1));
  bn_backward(&n1, da1, tmp, dh1, dbeta);
  OK(bnn_t_matmul(x, dh1, B, D0, D1, g1));
  check = sum(logits, B * D3) + sum(g1, D0 * D1) + sum(g2, D1 * D2) + sum(g3, D2 * D3);
  /* update: stochastic po2 for the first layer, nearest for the others */
  dense_update(&l1, g1, step, random);
  dense_update(&l2, g2, step, NULL);
  dense_update(&l3, g3, step, NULL);
  dense_pack(&l1);
  dense_free(&l1); dense_free(&l2); dense_free(&l3);
  bn_free(&n1); bn_free(&n2);
  free(x); free(dlogits); free(h1); free(a1); free(h2); free(a2); free(logits); free(logits_i);
  free(a1p); free(a2p); free(g1); free(g2); free(g3); free(da2); free(dh2); free(da1);
  free(dh1); free(tmp); free(dbeta); free(random);
  return check;
}

/* Conv block at batch 2: first-layer conv (real x, 3 channels) -> BN -> sign -> binary
 * conv 3x3 SAME (70 -> 66 channels: padding bits, border taps) -> 2x2 max pool; and
 * back. */
static double conv_step(void) {
  enum { B = 2, H = 7, W = 6, C0 = 3, C1 = 70, C2 = 66 };
  float *x = randn(B * H * W * C0), *w1 = randn(3 * 3 * C0 * C1), *w2 = randn(3 * 3 * C1 * C2);
  float *h1 = (float *)alloc(B * H * W * C1, sizeof(float));
  float *a1 = (float *)alloc(B * H * W * C1, sizeof(float));
  float *h2 = (float *)alloc(B * H * W * C2, sizeof(float));
  int32_t *h2i = (int32_t *)alloc(B * H * W * C2, sizeof(int32_t));
  float *p = (float *)alloc(B * (H / 2) * (W / 2) * C2, sizeof(float));
  float *dp = randn(B * (H / 2) * (W / 2) * C2);
  float *dh2 = (float *)alloc(B * H * W * C2, sizeof(float));
  float *da1 = (float *)alloc(B * H * W * C1, sizeof(float));
  float *dh1 = (float *)alloc(B * H * W * C1, sizeof(float));
  float *tmp = (float *)alloc(B * H * W * C1, sizeof(float));
  float *dbeta = (float *)alloc(C1, sizeof(float));
  float *dw1 = (float *)alloc(3 * 3 * C0 * C1, sizeof(float));
  float *dw2 = (float *)alloc(3 * 3 * C1 * C2, sizeof(float));
  uint64_t *w1s = (uint64_t *)alloc(3 * 3 * C0 * bnn_words(C1), sizeof(uint64_t));
  uint64_t *w2s = (uint64_t *)alloc(3 * 3 * C1 * bnn_words(C2), sizeof(uint64_t));
  uint64_t *w2c = (uint64_t *)alloc(C2 * 9 * bnn_words(C1), sizeof(uint64_t));
  uint64_t *a1p = (uint64_t *)alloc(B * H * W * bnn_words(C1), sizeof(uint64_t));
  uint64_t *pmask = (uint64_t *)alloc(B * H * W * bnn_words(C2), sizeof(uint64_t));
  uint64_t *patches = (uint64_t *)alloc(B * H * W * 9 * bnn_words(C1), sizeof(uint64_t));
  uint8_t *valid = (uint8_t *)alloc(B * H * W * 9, 1);
  bn_sign n1;
  int64_t oh, ow, i;
  double check;
  bn_init(&n1, B * H * W, C1);
  OK(bnn_conv_output_size(H, W, 3, 3, 1, 1, 1, 1, 1, 1, &oh, &ow));
  if (oh != H || ow != W) failures++;
  OK(bnn_pack(w1, 3 * 3 * C0, C1, w1s));
  OK(bnn_pack(w2, 3 * 3 * C1, C2, w2s));
  OK(bnn_pack_conv_weights(w2, 3, 3, C1, C2, w2c));
  /* forward */
  OK(bnn_sign_conv2d(x, w1s, B, H, W, C0, C1, 3, 3, 1, 1, 1, 1, 1, 1, h1));
  bn_forward(&n1, h1, a1, a1p);
  OK(bnn_im2col_packed(a1p, B, H, W, C1, 3, 3, 1, 1, 1, 1, 1, 1, patches, valid));
  OK(bnn_binary_conv2d_f32(a1p, w2c, B, H, W, C1, C2, 3, 3, 1, 1, 1, 1, 1, 1, h2));
  OK(bnn_binary_conv2d_i32(a1p, w2c, B, H, W, C1, C2, 3, 3, 1, 1, 1, 1, 1, 1, h2i));
  for (i = 0; i < B * H * W * C2; ++i) {
    if ((float)h2i[i] != h2[i]) failures++;
  }
  OK(bnn_max_pool2x2_forward(h2, B, H, W, C2, p, pmask));
  /* backward */
  OK(bnn_max_pool2x2_backward(dp, pmask, B, H, W, C2, dh2));
  OK(bnn_conv2d_backward_weight_packed(a1p, dh2, B, H, W, C1, C2, 3, 3, 1, 1, 1, 1, 1, 1, dw2));
  OK(bnn_conv2d_backward_input(dh2, w2s, B, H, W, C1, C2, 3, 3, 1, 1, 1, 1, 1, 1, da1));
  bn_backward(&n1, da1, tmp, dh1, dbeta);
  OK(bnn_conv2d_backward_weight_f32(x, dh1, B, H, W, C0, C1, 3, 3, 1, 1, 1, 1, 1, 1, dw1));
  check = sum(h2, B * H * W * C2) + sum(p, B * (H / 2) * (W / 2) * C2) +
          sum(dw2, 9 * C1 * C2) + sum(dw1, 9 * C0 * C1);
  bn_free(&n1);
  free(x); free(w1); free(w2); free(h1); free(a1); free(h2); free(h2i); free(p); free(dp);
  free(dh2); free(da1); free(dh1); free(tmp); free(dbeta); free(dw1); free(dw2); free(w1s);
  free(w2s); free(w2c); free(a1p); free(pmask); free(patches); free(valid);
  return check;
}

int main(void) {
  double first = 0.0;
  int impl, runs = 0;
  for (impl = 1; impl <= 4; ++impl) {
    uint64_t seed = rng;
    double c;
    if (bnn_set_popcount_impl(impl) != BNN_OK) continue;
    c = mlp_step(1) + mlp_step(2) + conv_step();
    rng = seed; /* the same data for every implementation */
    if (runs++ == 0) first = c;
    if (c != first) {
      fprintf(stderr, "popcount %s: checksum %.17g, portable %.17g\n", bnn_popcount_impl_name(),
              c, first);
      failures++;
    }
    printf("train_step: popcount %s: checksum %.9g\n", bnn_popcount_impl_name(), c);
  }
  if (failures || runs == 0) {
    fprintf(stderr, "train_step: %d failure(s)\n", failures);
    return 1;
  }
  printf("train_step: ok (%d popcount implementation(s))\n", runs);
  return 0;
}

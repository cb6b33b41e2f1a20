/*
 * libFuzzer harness for the C entry points (bnnpi.h): sizes, strides, padding and
 * arguments come from the fuzzer (mostly small, sometimes zero, negative, or near
 * INT64_MAX); every buffer is allocated with exactly the size that bnnpi.h documents
 * for those sizes (none, i.e. NULL, when that size overflows or is over a cap), and
 * filled with fuzzer bytes. With AddressSanitizer and UndefinedBehaviorSanitizer:
 *   - no kernel reads or writes outside its documented buffers, or crashes;
 *   - every call returns BNN_OK or one of the error codes, and BNN_OK exactly where the
 *     documented rules say the arguments are good (for the kernels checked below);
 *   - the XNOR kernels give identical results with every popcount implementation.
 * A violation aborts, which libFuzzer reports as a crash with its input.
 *   make -C pi_backend fuzz && pi_backend/build/fuzz_kernels -max_total_time=20
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnnpi.h"

#define CAP_BYTES (1 << 18) /* larger buffers are not allocated (NULL) */

typedef struct {
  const uint8_t *p;
  size_t n;
} input;

static uint64_t take(input *in, int bytes) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < bytes && in->n > 0; ++i, in->p++, in->n--) v |= (uint64_t)in->p[0] << (8 * i);
  return v;
}

/* A size: mostly 0 .. 70, sometimes negative, a power of two, or near INT64_MAX. */
static int64_t size_arg(input *in) {
  const unsigned sel = (unsigned)take(in, 1);
  switch (sel % 16) {
    case 0: return -(int64_t)(take(in, 1) + 1);
    case 1: return INT64_MAX - (int64_t)take(in, 1);
    case 2: return (int64_t)1 << (take(in, 1) % 63);
    case 3: return (int64_t)(take(in, 8) >> 1);
    default: return (int64_t)(take(in, 1) % 71);
  }
}

static int64_t small_arg(input *in, int64_t lo, int64_t hi) { /* in [lo, hi] */
  return lo + (int64_t)(take(in, 1) % (uint64_t)(hi - lo + 1));
}

static int64_t words(int64_t n) { return n < 0 ? -1 : n / 64 + (n % 64 != 0); }

/* Product of non-negative sizes, -1 if one is negative or it overflows. */
static int64_t prod(int64_t a, int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > INT64_MAX / a) return -1;
  return a * b;
}
static int64_t prod3(int64_t a, int64_t b, int64_t c) { return prod(prod(a, b), c); }
static int64_t prod4(int64_t a, int64_t b, int64_t c, int64_t d) {
  return prod(prod(a, b), prod(c, d));
}

/* Buffers of one call, freed together. */
typedef struct {
  void *ptr[24];
  int count;
  int missing; /* a buffer that should exist is NULL (too large) */
  input *in;
} buffers;

/* count elements of elem bytes, filled with fuzzer bytes (then a pattern). */
static void *buf(buffers *b, int64_t count, size_t elem) {
  uint8_t *p;
  size_t bytes, i;
  if (count < 0 || count > CAP_BYTES / (int64_t)elem) {
    b->missing = 1;
    return NULL;
  }
  bytes = (size_t)count * elem;
  if (b->count == (int)(sizeof b->ptr / sizeof b->ptr[0])) abort(); /* harness bug */
  p = (uint8_t *)malloc(bytes); /* malloc(0): a pointer nothing may be read through */
  if (!p && bytes) abort();
  for (i = 0; i < bytes; ++i) p[i] = b->in->n ? (uint8_t)take(b->in, 1) : (uint8_t)(i * 131u + 7u);
  b->ptr[b->count++] = p;
  return p;
}

/* float buffers: finite values in [-4, 4) most of the time, else the raw bit patterns
 * (inf, NaN, subnormals: no kernel may trip over them). */
static float *fbuf(buffers *b, int64_t count, int raw) {
  float *f = (float *)buf(b, count, sizeof(float));
  int64_t i;
  if (f && !raw) {
    for (i = 0; i < count; ++i) {
      uint32_t u;
      memcpy(&u, f + i, sizeof u);
      f[i] = (float)(int32_t)(u % 8192u) / 1024.0f - 4.0f;
    }
  }
  return f;
}

static void free_all(buffers *b) {
  int i;
  for (i = 0; i < b->count; ++i) free(b->ptr[i]);
}

static void check_code(int rc, const char *what) {
  if (rc > 0 || rc < -6) {
    fprintf(stderr, "fuzz_kernels: %s returned %d, not an error code\n", what, rc);
    abort();
  }
}

/* good / bad: whether bnnpi.h's rules accept / reject these arguments (neither: a size
 * so large that rejecting it as an overflow is fine too). Asserted only when every
 * buffer exists; with a NULL one (too large to allocate here), any error code will do. */
static void expect(const buffers *b, int rc, int good, int bad, const char *what) {
  check_code(rc, what);
  if (b->missing) return;
  if (good && rc != BNN_OK) {
    fprintf(stderr, "fuzz_kernels: %s rejected good arguments: %d (%s)\n", what, rc,
            bnn_error_string(rc));
    abort();
  }
  if (bad && rc == BNN_OK) {
    fprintf(stderr, "fuzz_kernels: %s accepted bad arguments\n", what);
    abort();
  }
}

/* Sizes that no rule may call an overflow. */
static int sane(int64_t a) { return a >= 0 && a <= ((int64_t)1 << 31); }
static int sane3(int64_t a, int64_t b, int64_t c) { return sane(a) && sane(b) && sane(c); }

/* Runs call with every popcount implementation and checks the outputs are the same. */
#define ALL_IMPLS(out, bytes, call, what)                                          \
  do {                                                                             \
    int impl_, first_rc_ = 0, seen_ = 0;                                           \
    uint8_t *first_ = (uint8_t *)malloc((bytes) ? (bytes) : 1);                    \
    if (!first_) abort();                                                          \
    for (impl_ = 1; impl_ <= 4; ++impl_) {                                         \
      int rc_;                                                                     \
      if (bnn_set_popcount_impl(impl_) != BNN_OK) continue;                        \
      if (out) memset((out), 0xA5, (bytes));                                      \
      rc_ = (call);                                                                \
      check_code(rc_, what);                                                       \
      if (!seen_) {                                                                \
        first_rc_ = rc_;                                                           \
        if (out) memcpy(first_, (out), (bytes));                                   \
        seen_ = 1;                                                                 \
      } else if (rc_ != first_rc_ ||                                               \
                 (rc_ == BNN_OK && (out) && memcmp(first_, (out), (bytes)) != 0)) { \
        fprintf(stderr, "fuzz_kernels: %s differs with popcount %s\n", what,       \
                bnn_popcount_impl_name());                                         \
        abort();                                                                   \
      }                                                                            \
    }                                                                              \
    bnn_set_popcount_impl(0);                                                      \
    rc = first_rc_;                                                                \
    free(first_);                                                                  \
  } while (0)

static void fuzz_pack(input *in, buffers *b) {
  const int64_t rows = size_arg(in), n = size_arg(in), wn = words(n);
  const int which = (int)take(in, 1) % 7;
  int rc;
  if (which == 6) {
    float *dw = fbuf(b, prod(rows, n), 1);
    uint16_t *w = (uint16_t *)buf(b, prod(rows, n), 2);
    uint16_t *out = (uint16_t *)buf(b, prod(rows, n), 2);
    rc = bnn_sign_scaled_grad(dw, w, prod(rows, n), 0x1c00, out);
    check_code(rc, "bnn_sign_scaled_grad");
  } else if (which == 4) {
    uint16_t *x = (uint16_t *)buf(b, prod(rows, n), 2);
    uint64_t *out = (uint64_t *)buf(b, prod(rows, wn), 8);
    rc = bnn_pack_f16(x, rows, n, out);
    expect(b, rc, sane(rows) && sane(n), rows < 0 || n < 0, "bnn_pack_f16");
  } else if (which == 5) {
    uint16_t *w = (uint16_t *)buf(b, prod(rows, n), 2);
    uint64_t *out = (uint64_t *)buf(b, prod(n, words(rows)), 8);
    rc = bnn_pack_f16_transposed(w, rows, n, out);
    expect(b, rc, sane(rows) && sane(n), rows < 0 || n < 0, "bnn_pack_f16_transposed");
  } else if (which == 0) {
    float *x = fbuf(b, prod(rows, n), 1);
    uint64_t *out = (uint64_t *)buf(b, prod(rows, wn), 8);
    rc = bnn_pack(x, rows, n, out);
    expect(b, rc, sane(rows) && sane(n), rows < 0 || n < 0, "bnn_pack");
    if (rc == BNN_OK && n % 64) {  /* padding bits written as 0 */
      int64_t r;
      for (r = 0; r < rows; ++r) {
        if (out[r * wn + wn - 1] >> (n % 64)) abort();
      }
    }
  } else if (which == 1) {
    uint64_t *p = (uint64_t *)buf(b, prod(rows, wn), 8);
    float *out = fbuf(b, prod(rows, n), 1);
    rc = bnn_unpack(p, rows, n, out);
    expect(b, rc, sane(rows) && sane(n), rows < 0 || n < 0, "bnn_unpack");
  } else if (which == 2) {
    float *w = fbuf(b, prod(rows, n), 1);
    uint64_t *out = (uint64_t *)buf(b, prod(n, words(rows)), 8);
    rc = bnn_pack_transposed(w, rows, n, out);
    expect(b, rc, sane(rows) && sane(n), rows < 0 || n < 0, "bnn_pack_transposed");
  } else {
    const int64_t kh = small_arg(in, -1, 5), kw = small_arg(in, -1, 5);
    float *w = fbuf(b, prod4(kh, kw, rows, n), 1);
    uint64_t *out = (uint64_t *)buf(b, prod3(n, prod(kh, kw), words(rows)), 8);
    rc = bnn_pack_conv_weights(w, kh, kw, rows, n, out);
    check_code(rc, "bnn_pack_conv_weights");
  }
}

static void fuzz_gemm(input *in, buffers *b) {
  const int64_t m = size_arg(in), n = size_arg(in), k = size_arg(in), wk = words(k);
  const int which = (int)take(in, 1) % 9;
  int rc;
  if (which == 8) {  /* the fused dense weight update */
    const int kind = (int)small_arg(in, -1, 3);
    const int64_t rows = (take(in, 1) % 4 == 0) ? size_arg(in) : small_arg(in, 1, 3) * 64;
    const int64_t step = small_arg(in, -1, 5);
    const uint16_t c16 = (uint16_t)take(in, 2);
    const int64_t re = (k > 0 && rows > k) ? k : rows; /* the rows of one block */
    const int64_t xcount = kind == 2 ? prod(m, wk) : prod(m, k);
    void *x = kind == 0 ? (void *)fbuf(b, xcount, 0)
                        : buf(b, xcount, kind == 1 ? 1 : (kind == 2 ? 8 : 4));
    float *dy = fbuf(b, prod(m, n), 0), *dws = fbuf(b, prod(re, n), 1);
    uint16_t *w = (uint16_t *)buf(b, prod(k, n), 2), *am = (uint16_t *)buf(b, prod(k, n), 2);
    uint16_t *av = (uint16_t *)buf(b, prod(k, n), 2), *gs = (uint16_t *)buf(b, prod(re, n), 2);
    float *xs = kind == 1 ? fbuf(b, prod(m, re), 1) : NULL;
    const int args = kind >= 0 && kind <= 2 && rows >= 1 && (kind != 2 || rows % 64 == 0) &&
                     step >= 1 && !(c16 & 0x8000u);
    rc = bnn_dense_weight_update(x, kind, dy, m, k, n, rows, c16, w, am, av, step, 1e-3f,
                                 0.9f, 0.999f, 1e-8f, dws, gs, xs);
    expect(b, rc, sane3(m, n, k) && sane(re) && args,
           m < 0 || n < 0 || k < 0 || !args, "bnn_dense_weight_update");
    return;
  }
  if (which < 2) {  /* XNOR GEMM, both outputs, every popcount implementation */
    uint64_t *a = (uint64_t *)buf(b, prod(m, wk), 8);
    uint64_t *bb = (uint64_t *)buf(b, prod(n, wk), 8);
    void *y = buf(b, prod(m, n), 4);
    const size_t bytes = y ? (size_t)(m * n) * 4 : 0;
    const int good = sane3(m, n, k) && k <= INT32_MAX;
    const int bad = m < 0 || n < 0 || k < 0 || k > INT32_MAX;
    if (which == 0) {
      ALL_IMPLS(y, bytes, bnn_xnor_gemm_i32(a, bb, m, n, k, (int32_t *)y), "bnn_xnor_gemm_i32");
    } else {
      ALL_IMPLS(y, bytes, bnn_xnor_gemm_f32(a, bb, m, n, k, (float *)y), "bnn_xnor_gemm_f32");
    }
    expect(b, rc, good, bad, "bnn_xnor_gemm");
    if (rc == BNN_OK && which == 0) {
      int64_t i;
      for (i = 0; i < m * n; ++i) {
        const int32_t v = ((int32_t *)y)[i];
        if (v < -k || v > k || (v - k) % 2) abort();
      }
    }
  } else {
    const int64_t wn = words(n);
    float *x = fbuf(b, prod(m, k), 0), *w = fbuf(b, prod(k, n), 0);
    float *dy = fbuf(b, prod(m, n), 0), *out_mn = fbuf(b, prod(m, n), 1);
    float *out_mk = fbuf(b, prod(m, k), 1), *out_kn = fbuf(b, prod(k, n), 1);
    uint64_t *wp = (uint64_t *)buf(b, prod(k, wn), 8), *xp = (uint64_t *)buf(b, prod(m, wk), 8);
    const int good = sane3(m, n, k), bad = m < 0 || n < 0 || k < 0;
    static const char *const names[] = {"bnn_sign_matmul", "bnn_sign_matmul_packed",
                                        "bnn_matmul_sign_t", "bnn_matmul_sign_t_packed",
                                        "bnn_sign_t_matmul", "bnn_t_matmul"};
    switch (which) {
      case 2: rc = bnn_sign_matmul(x, w, m, k, n, out_mn); break;
      case 3: rc = bnn_sign_matmul_packed(x, wp, m, k, n, out_mn); break;
      case 4: rc = bnn_matmul_sign_t(dy, w, m, k, n, out_mk); break;
      case 5: rc = bnn_matmul_sign_t_packed(dy, wp, m, k, n, out_mk); break;
      case 6: rc = bnn_sign_t_matmul(xp, dy, m, k, n, out_kn); break;
      default: rc = bnn_t_matmul(x, dy, m, k, n, out_kn); break;
    }
    expect(b, rc, good, bad, names[which - 2]);
  }
}

static void fuzz_conv(input *in, buffers *b) {
  const int64_t batch = small_arg(in, -1, 3), h = size_arg(in) % 12, w = size_arg(in) % 12;
  const int64_t c = size_arg(in), co = size_arg(in) % 80;
  const int64_t kh = small_arg(in, 0, 5), kw = small_arg(in, 0, 5);
  const int64_t sh = small_arg(in, 0, 3), sw = small_arg(in, 0, 3);
  const int64_t pt = small_arg(in, -1, 3), pb = small_arg(in, 0, 3);
  const int64_t pl = small_arg(in, 0, 3), pr = small_arg(in, -1, 3);
  const int which = (int)take(in, 1) % 7;
  const int pool = (int)(take(in, 1) % 3);  /* 2: invalid */
  int64_t oh = -1, ow = -1;
  int rc, geometry;
  rc = bnn_conv_output_size(h, w, kh, kw, sh, sw, pt, pb, pl, pr, &oh, &ow);
  check_code(rc, "bnn_conv_output_size");
  geometry = rc == BNN_OK && batch >= 0 && c >= 1 && co >= 1;
  {
    const int64_t wc = words(c), taps = prod(kh, kw), q = prod3(batch, oh, ow);
    const int64_t in_px = prod3(batch, h, w);
    uint64_t *xp = (uint64_t *)buf(b, prod(in_px, wc), 8);
    uint64_t *wpk = (uint64_t *)buf(b, prod3(co, taps, wc), 8);   /* pack_conv_weights */
    uint64_t *wsg = (uint64_t *)buf(b, prod3(taps, c, words(co)), 8); /* pack(W) HWIO */
    float *x = fbuf(b, prod(in_px, c), 0), *dy = fbuf(b, prod(q, co), 0);
    void *y = buf(b, prod(q, co), 4);
    float *dx = fbuf(b, prod(in_px, c), 1), *dw = fbuf(b, prod3(taps, c, co), 1);
    uint64_t *patches = (uint64_t *)buf(b, prod3(q, taps, wc), 8);
    uint8_t *valid = (uint8_t *)buf(b, prod(q, taps), 1);
    const int bad = !geometry, good = geometry && sane(c) && sane(co);
    const size_t ybytes = y ? (size_t)(q * co) * 4 : 0;
    switch (which) {
      case 0:
        ALL_IMPLS(y, ybytes, bnn_binary_conv2d_i32(xp, wpk, batch, h, w, c, co, kh, kw, sh, sw,
                                                   pt, pb, pl, pr, (int32_t *)y),
                  "bnn_binary_conv2d_i32");
        check_code(rc, "bnn_binary_conv2d_i32");
        /* fuzzed weights usually have padding bits set */
        if (!b->missing && good && rc != BNN_OK && rc != BNN_ERR_PADDING) abort();
        if (!b->missing && bad && rc == BNN_OK) abort();
        break;
      case 1:
        if (wpk && c % 64) {  /* clear the padding bits: then it must succeed */
          int64_t r;
          const uint64_t tail = (UINT64_C(1) << (c % 64)) - 1;
          for (r = 0; r < prod(co, taps); ++r) wpk[r * wc + wc - 1] &= tail;
        }
        ALL_IMPLS(y, ybytes, bnn_binary_conv2d_f32(xp, wpk, batch, h, w, c, co, kh, kw, sh, sw,
                                                   pt, pb, pl, pr, (float *)y),
                  "bnn_binary_conv2d_f32");
        expect(b, rc, good, bad, "bnn_binary_conv2d_f32");
        break;
      case 2:
        expect(b, bnn_im2col_packed(xp, batch, h, w, c, kh, kw, sh, sw, pt, pb, pl, pr, patches,
                                    valid),
               rc == BNN_OK && batch >= 0 && c >= 1 && sane(c), rc != BNN_OK || batch < 0 || c < 1,
               "bnn_im2col_packed");
        break;
      case 3:
        expect(b, bnn_sign_conv2d(x, wsg, batch, h, w, c, co, kh, kw, sh, sw, pt, pb, pl, pr,
                                  (float *)y), good, bad, "bnn_sign_conv2d");
        break;
      case 4:
        expect(b, bnn_conv2d_backward_input(dy, wsg, batch, h, w, c, co, kh, kw, sh, sw, pt, pb,
                                            pl, pr, dx), good, bad, "bnn_conv2d_backward_input");
        break;
      case 6: {
        const int64_t ph = pool == 1 ? oh / 2 : oh, pw2 = pool == 1 ? ow / 2 : ow;
        int32_t *thr = (int32_t *)buf(b, co, 4);
        uint64_t *ys = (uint64_t *)buf(b, prod(prod3(batch, ph, pw2), words(co)), 8);
        const size_t ysbytes = ys ? (size_t)prod(prod3(batch, ph, pw2), words(co)) * 8 : 0;
        if (wpk && c % 64) {  /* clear the padding bits: then it must succeed */
          int64_t r;
          const uint64_t tail = (UINT64_C(1) << (c % 64)) - 1;
          for (r = 0; r < prod(co, taps); ++r) wpk[r * wc + wc - 1] &= tail;
        }
        ALL_IMPLS(ys, ysbytes, bnn_binary_conv2d_sign(xp, wpk, thr, batch, h, w, c, co, kh, kw,
                                                      sh, sw, pt, pb, pl, pr, pool, ys),
                  "bnn_binary_conv2d_sign");
        expect(b, rc, good && pool != 2, bad, "bnn_binary_conv2d_sign");
        if (!b->missing && good && pool == 2 && rc != BNN_ERR_ARG) abort();
        if (rc == BNN_OK && ys && co % 64) {  /* padding bits written as 0 */
          int64_t r;
          for (r = 0; r < prod3(batch, ph, pw2); ++r) {
            if (ys[r * words(co) + words(co) - 1] >> (co % 64)) abort();
          }
        }
        break;
      }
      default:
        expect(b, bnn_conv2d_backward_weight_packed(xp, dy, batch, h, w, c, co, kh, kw, sh, sw,
                                                    pt, pb, pl, pr, dw), good, bad,
               "bnn_conv2d_backward_weight_packed");
        expect(b, bnn_conv2d_backward_weight_f32(x, dy, batch, h, w, c, co, kh, kw, sh, sw, pt,
                                                 pb, pl, pr, dw), good, bad,
               "bnn_conv2d_backward_weight_f32");
        break;
    }
  }
}

static void fuzz_norm_act(input *in, buffers *b) {
  const int64_t n = size_arg(in), c = size_arg(in), wc = words(c);
  const int which = (int)take(in, 1) % 5;
  const int raw = (int)take(in, 1) % 4 == 0;
  float *x = fbuf(b, prod(n, c), raw), *y = fbuf(b, prod(n, c), 1);
  float *beta = fbuf(b, c, raw), *mean = fbuf(b, c, 1), *scale = fbuf(b, c, raw);
  float *rm = fbuf(b, c, raw), *rs = fbuf(b, c, raw);
  uint64_t *bits = (uint64_t *)buf(b, prod(n, wc), 8);
  uint16_t *s16 = (uint16_t *)buf(b, c, 2), *m16 = (uint16_t *)buf(b, c, 2);
  int rc;
  if (which == 0) {
    const float eps = (float)small_arg(in, -1, 3) * 1e-3f;
    const double momentum = (double)small_arg(in, -1, 11) / 10.0;
    rc = bnn_bn_l1_forward(x, beta, n, c, eps, y, mean, scale, bits, s16, m16, rm, rs, momentum);
    const int args = eps >= 0.0f && momentum >= 0.0 && momentum <= 1.0;
    expect(b, rc, sane(n) && sane(c) && n >= 1 && c >= 1 && args, n < 1 || c < 1 || !args,
           "bnn_bn_l1_forward");
  } else if (which == 1) {
    rc = bnn_bn_eval(x, beta, mean, scale, n, c, y);
    check_code(rc, "bnn_bn_eval");
    uint64_t *packed = (uint64_t *)buf(b, prod(n, wc), 8);
    const int rc_sign = bnn_bn_eval_sign(x, beta, mean, scale, n, c, bits);
    check_code(rc_sign, "bnn_bn_eval_sign");
    if (rc == BNN_OK && bits && packed) {  /* the fused call: the bits of packing y */
      if (rc_sign != BNN_OK || bnn_pack(y, n, c, packed) != BNN_OK ||
          memcmp(packed, bits, (size_t)(n * wc) * sizeof(uint64_t)) != 0)
        abort();
    }
  } else if (which == 2) {
    float *dbeta = fbuf(b, c, 1);
    rc = bnn_bn_l1_backward(x, bits, s16, m16, n, c, (int)take(in, 1) % 2, y, dbeta);
    check_code(rc, "bnn_bn_l1_backward");
  } else if (which == 3) {
    const float clip = (float)small_arg(in, 0, 4) * 0.5f;
    rc = bnn_sign_ste_forward(x, n, c, clip, (int)take(in, 1) % 2 ? y : NULL, bits);
    expect(b, rc, sane(n) && sane(c), n < 0 || c < 0, "bnn_sign_ste_forward");
    rc = bnn_sign_ste_backward(x, bits, n, c, y);
    expect(b, rc, sane(n) && sane(c), n < 0 || c < 0, "bnn_sign_ste_backward");
  } else {
    const int64_t h = small_arg(in, 0, 9), w = small_arg(in, 0, 9);
    float *px = fbuf(b, prod4(n % 4, h, w, c), raw);
    float *py = fbuf(b, prod4(n % 4, h / 2, w / 2, c), 1);
    float *pdx = fbuf(b, prod4(n % 4, h, w, c), 1);
    uint64_t *mask = (uint64_t *)buf(b, prod4(n % 4, 2 * (h / 2), 2 * (w / 2), wc), 8);
    rc = bnn_max_pool2x2_forward(px, n % 4, h, w, c, py, mask);
    check_code(rc, "bnn_max_pool2x2_forward");
    rc = bnn_max_pool2x2_backward(py, mask, n % 4, h, w, c, pdx);
    check_code(rc, "bnn_max_pool2x2_backward");
  }
}

/* factored_adam's elementwise step: (np, ni, nj) sizes, both factor orientations. */
static void fuzz_factored_adam(input *in, buffers *b) {
  const int64_t np_ = size_arg(in), ni = size_arg(in), nj = size_arg(in);
  const int on1 = (int)take(in, 1) % 2, on2 = (int)take(in, 1) % 2;
  const int64_t total = prod3(np_, ni, nj);
  uint16_t *w = (uint16_t *)buf(b, total, 2), *m = (uint16_t *)buf(b, total, 2);
  const uint16_t *g = (const uint16_t *)buf(b, total, 2);
  const float *f1 = fbuf(b, prod(np_, on1 ? nj : ni), 1);
  const float *f2 = fbuf(b, prod(np_, on2 ? nj : ni), 1);
  const float correction = (float)small_arg(in, -1, 4) / 4.0f;
  const int rc = bnn_factored_adam_f16(w, m, g, np_, ni, nj, f1, on1, f2, on2, 0.9f, 0.1f,
                                       correction, 1e-3f);
  expect(b, rc, sane3(np_, ni, nj) && total >= 0 && total <= ((int64_t)1 << 31) &&
                    correction > 0.0f,
         np_ < 0 || ni < 0 || nj < 0 || !(correction > 0.0f), "bnn_factored_adam_f16");
  /* and its statistics, from the float16 or the float32 gradient */
  {
    const int half = (int)take(in, 1) % 2;
    const float *g32 = fbuf(b, total, 1);
    float *si = fbuf(b, prod(np_, nj), 1), *sj = fbuf(b, prod(np_, ni), 1);
    const int rc2 = bnn_factored_square_sums(half ? g : NULL, half ? NULL : g32, np_, ni, nj,
                                             si, sj);
    expect(b, rc2, sane3(np_, ni, nj) && total >= 0 && total <= ((int64_t)1 << 31),
           np_ < 0 || ni < 0 || nj < 0, "bnn_factored_square_sums");
  }
}

static void fuzz_numerics(input *in, buffers *b) {
  const int64_t n = size_arg(in);
  const int which = (int)take(in, 1) % 4;
  float *g = fbuf(b, n, 1), *out = fbuf(b, n, 1);
  uint16_t *h = (uint16_t *)buf(b, n, 2);
  int rc;
  if (which == 0) {
    const int bits = (int)small_arg(in, -1, 9), bias = (int)small_arg(in, -20, 20) * 16;
    uint32_t *random = (uint32_t *)buf(b, n, 4);
    rc = bnn_po2(g, n, bits, bias, (int)take(in, 1) % 2, (int)take(in, 1) % 2 ? random : NULL,
                 (int)take(in, 1) % 2 ? g : out);
    const int args = bits >= 1 && bits <= 8 && bias >= -256 && bias <= 256;
    expect(b, rc, sane(n) && args, n < 0 || !args, "bnn_po2");
  } else if (which == 1) {
    expect(b, bnn_f32_to_f16(g, n, h), sane(n), n < 0, "bnn_f32_to_f16");
    expect(b, bnn_f16_to_f32(h, n, out), sane(n), n < 0, "bnn_f16_to_f32");
  } else {
    uint16_t *m = (uint16_t *)buf(b, n, 2), *v = (uint16_t *)buf(b, n, 2);
    const int64_t step = small_arg(in, -1, 5);
    if (which == 2) {
      rc = bnn_adam_f16(h, m, v, g, n, step, 1e-3f, 0.9f, 0.999f, 1e-8f);
    } else {
      rc = bnn_adam_f16_g16(h, m, v, (const uint16_t *)out, n, step, 1e-3f, 0.9f, 0.999f, 1e-8f);
    }
    check_code(rc, "bnn_adam_f16");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input in;
  buffers b;
  in.p = data;
  in.n = size;
  memset(&b, 0, sizeof b);
  b.in = &in;
  switch (take(&in, 1) % 6) {
    case 0: fuzz_pack(&in, &b); break;
    case 1: fuzz_gemm(&in, &b); break;
    case 2: fuzz_conv(&in, &b); break;
    case 3: fuzz_norm_act(&in, &b); break;
    case 4: fuzz_factored_adam(&in, &b); break;
    default: fuzz_numerics(&in, &b); break;
  }
  free_all(&b);
  return 0;
}

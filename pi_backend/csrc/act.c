/* The sign activation's straight-through estimator and 2x2 max pooling. */
#include "internal.h"

/* The AVX2 rows of float_x86.c (the same bits) for the elements up to the last multiple
 * of 8 (X86_DONE: how many), the loops here doing the rest. */
#if BNN_HAVE_X86_SIMD
#define X86_DONE(call) (call)
static int use_avx2(void) { return bnn__float_level() >= BNN__IMPL_AVX2; }
#else
#define X86_DONE(call) 0
static int use_avx2(void) { return 0; }
#endif

static int check_rows(int64_t rows, int64_t n) {
  int64_t t;
  int err;
  if (rows < 0 || n < 0) return BNN_ERR_SIZE;
  if ((err = bnn__count(&t, sizeof(float), rows, n, 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), rows, bnn__words(n), 1, 1)) != BNN_OK) return err;
  return BNN_OK;
}

int bnn_sign_ste_forward(const float *x, int64_t rows, int64_t n, float clip, float *y,
                         uint64_t *mask) {
  const int64_t wn = bnn__words(n);
  const int avx2 = use_avx2();
  int64_t r, j;
  int err = check_rows(rows, n);
  if (err != BNN_OK) return err;
  if (rows == 0 || n == 0) return BNN_OK;
  if (!x || !mask) return BNN_ERR_NULL;
  memset(mask, 0, (size_t)(rows * wn) * sizeof(uint64_t));
  for (r = 0; r < rows; ++r) {
    const float *xr = x + r * n;
    float *yr = y ? y + r * n : NULL;
    uint64_t *mr = mask + r * wn;
    const int64_t done = avx2 ? X86_DONE(bnn__x86_ste_forward_row(xr, n, clip, yr, mr)) : 0;
    j = done;
    while (j < n) {  /* a word at a time, built in a register */
      const int64_t j0 = j - j % 64, j1 = n - j0 < 64 ? n : j0 + 64;
      uint64_t word = mr[j0 >> 6];  /* 0, or the AVX2 rows' bits */
      for (; j < j1; ++j) word |= (uint64_t)(bnn__abs_f32(xr[j]) <= clip) << (j - j0);  /* NaN: 0 */
      mr[j0 >> 6] = word;
    }
    if (yr) {
      for (j = done; j < n; ++j) yr[j] = bnn__sign_f32(xr[j]);
    }
  }
  return BNN_OK;
}

int bnn_sign_ste_backward(const float *dy, const uint64_t *mask, int64_t rows, int64_t n,
                          float *dx) {
  const int64_t wn = bnn__words(n);
  const int avx2 = use_avx2();
  int64_t r, j;
  int err = check_rows(rows, n);
  if (err != BNN_OK) return err;
  if (rows == 0 || n == 0) return BNN_OK;
  if (!dy || !mask || !dx) return BNN_ERR_NULL;
  for (r = 0; r < rows; ++r) {
    const float *dr = dy + r * n;
    const uint64_t *mr = mask + r * wn;
    float *xr = dx + r * n;
    for (j = avx2 ? X86_DONE(bnn__x86_ste_backward_row(dr, mr, n, xr)) : 0; j < n; ++j) {
      uint32_t u;  /* branch-free: the bit pattern of dy, or of +0.0 */
      memcpy(&u, dr + j, sizeof u);
      u &= 0u - (uint32_t)((mr[j >> 6] >> (j & 63)) & 1u);
      memcpy(xr + j, &u, sizeof u);
    }
  }
  return BNN_OK;
}

static int check_pool(int64_t b, int64_t h, int64_t w, int64_t c) {
  int64_t t;
  int err;
  if (b < 0 || h < 2 || w < 2 || c < 1) return BNN_ERR_SIZE;
  if ((err = bnn__count(&t, sizeof(float), b, h, w, c)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), b, h, w, bnn__words(c))) != BNN_OK) return err;
  return BNN_OK;
}

int bnn_max_pool2x2_forward(const float *x, int64_t b, int64_t h, int64_t w, int64_t c,
                            float *y, uint64_t *mask) {
  const int64_t ho = h / 2, wo = w / 2, wc = bnn__words(c);
  int64_t n, oy, ox, j;
  int err = check_pool(b, h, w, c);
  if (err != BNN_OK) return err;
  if (b == 0) return BNN_OK;
  if (!x || !y || !mask) return BNN_ERR_NULL;
  memset(mask, 0, (size_t)(b * 2 * ho * 2 * wo * wc) * sizeof(uint64_t));
  for (n = 0; n < b; ++n) {
    for (oy = 0; oy < ho; ++oy) {
      for (ox = 0; ox < wo; ++ox) {
        const float *win[4];
        uint64_t *mrow[4];
        float *yr = y + ((n * ho + oy) * wo + ox) * c;
        int q;
        for (q = 0; q < 4; ++q) {   /* row-major window order (0,0) (0,1) (1,0) (1,1) */
          const int64_t iy = 2 * oy + q / 2, ix = 2 * ox + q % 2;
          win[q] = x + ((n * h + iy) * w + ix) * c;
          mrow[q] = mask + ((n * 2 * ho + iy) * 2 * wo + ix) * wc;
        }
        for (j = 0; j < c; ++j) {
          float m = win[0][j];
          int chosen = 3;
          for (q = 1; q < 4; ++q) {  /* max that propagates NaN */
            float v = win[q][j];
            if (v > m || v != v) m = v;
            if (m != m) break;
          }
          for (q = 0; q < 3; ++q) {  /* the first position equal to the max */
            if (win[q][j] == m) {
              chosen = q;
              break;
            }
          }
          yr[j] = m;
          bnn__set_bit(mrow[chosen], j);
        }
      }
    }
  }
  return BNN_OK;
}

int bnn_max_pool2x2_backward(const float *dy, const uint64_t *mask, int64_t b, int64_t h,
                             int64_t w, int64_t c, float *dx) {
  const int64_t ho = h / 2, wo = w / 2, wc = bnn__words(c);
  int64_t n, iy, ix, j;
  int err = check_pool(b, h, w, c);
  if (err != BNN_OK) return err;
  if (b == 0) return BNN_OK;
  if (!dy || !mask || !dx) return BNN_ERR_NULL;
  for (n = 0; n < b; ++n) {
    for (iy = 0; iy < h; ++iy) {
      for (ix = 0; ix < w; ++ix) {
        float *dr = dx + ((n * h + iy) * w + ix) * c;
        if (iy >= 2 * ho || ix >= 2 * wo) {   /* the dropped odd row / column */
          memset(dr, 0, (size_t)c * sizeof(float));
          continue;
        } else {
          const uint64_t *mr = mask + ((n * 2 * ho + iy) * 2 * wo + ix) * wc;
          const float *d = dy + ((n * ho + iy / 2) * wo + ix / 2) * c;
          for (j = 0; j < c; ++j) dr[j] = bnn__get_bit(mr, j) ? d[j] : 0.0f;
        }
      }
    }
  }
  return BNN_OK;
}

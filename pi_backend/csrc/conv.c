/*
 * 2-D convolutions, NHWC activations, any kernel size, stride and zero padding.
 *
 * Zero padding with +-1 bits. A bit can only say +1 or -1, but a padded input
 * position must contribute 0 (as on the JAX side, which pads the layer's input with
 * zeros). The binary conv therefore works per tap (kernel position):
 *   - im2col writes a padded tap as all-zero words, and remembers which taps of the
 *     output position were padded;
 *   - popcount(patch XOR w) then counts, for a padded tap, popcount(w_tap) (0 XOR w);
 *     these counts are precomputed per (output channel, tap) and subtracted, so the
 *     popcount covers exactly the valid taps;
 *   - y = K_valid - 2 * popcount_valid, K_valid = (number of valid taps) * c_in.
 * Channel padding bits (c_in not a multiple of 64) are 0 in both patch and weights,
 * so they never count; weights with nonzero padding bits are rejected.
 *
 * The float kernels (first-layer forward, both backward passes) are GEMMs over blocks
 * of float im2col values, in which padded taps are plain zeros (see float_conv).
 */
#include <stdlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "internal.h"

typedef struct {
  int64_t batch, h, w, c, co, kh, kw, sh, sw, pt, pb, pl, pr, oh, ow;
} geom;

int bnn_conv_output_size(int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                         int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                         int64_t *oh, int64_t *ow) {
  if (!oh || !ow) return BNN_ERR_NULL;
  if (h < 1 || w < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || pt < 0 || pb < 0 ||
      pl < 0 || pr < 0) {
    return BNN_ERR_SIZE;
  }
  if (h > INT64_MAX / 4 || w > INT64_MAX / 4 || pt > INT64_MAX / 4 || pb > INT64_MAX / 4 ||
      pl > INT64_MAX / 4 || pr > INT64_MAX / 4) {
    return BNN_ERR_OVERFLOW;
  }
  if (h + pt + pb < kh || w + pl + pr < kw) return BNN_ERR_SIZE;
  *oh = (h + pt + pb - kh) / sh + 1;
  *ow = (w + pl + pr - kw) / sw + 1;
  return BNN_OK;
}

/* Fills g and checks every size and buffer size the conv kernels touch. */
static int geom_init(geom *g, int64_t batch, int64_t h, int64_t w, int64_t c, int64_t co,
                     int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pb, int64_t pl, int64_t pr) {
  int64_t t, taps;
  int err;
  if (batch < 0 || c < 1 || co < 1) return BNN_ERR_SIZE;
  err = bnn_conv_output_size(h, w, kh, kw, sh, sw, pt, pb, pl, pr, &g->oh, &g->ow);
  if (err != BNN_OK) return err;
  if (!bnn__mul(kh, kw, &taps)) return BNN_ERR_OVERFLOW;
  g->batch = batch; g->h = h; g->w = w; g->c = c; g->co = co; g->kh = kh; g->kw = kw;
  g->sh = sh; g->sw = sw; g->pt = pt; g->pb = pb; g->pl = pl; g->pr = pr;
  /* input float and packed, output, weights float and both packed layouts */
  if ((err = bnn__count(&t, sizeof(float), batch, h, w, c)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), batch, g->oh, g->ow, co)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(float), kh, kw, c, co)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), taps, c, bnn__words(co), 1)) != BNN_OK) {
    return err;
  }
  if ((err = bnn__count(&t, sizeof(uint64_t), co, taps, bnn__words(c), 1)) != BNN_OK) {
    return err;
  }
  /* binary conv scratch: patches and popcounts of up to 256 output positions */
  if ((err = bnn__count(&t, sizeof(uint64_t), 256, taps, bnn__words(c), 1)) != BNN_OK) {
    return err;
  }
  if ((err = bnn__count(&t, sizeof(int32_t), 256, co, 1, 1)) != BNN_OK) return err;
  if (taps * c > INT32_MAX) return BNN_ERR_SIZE;  /* counts fit int32 */
  return BNN_OK;
}

/* The input row / column of tap k at output position o, or -1 when padded. */
static int64_t in_index(int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t size) {
  int64_t i = o * stride - pad + k;
  return (i >= 0 && i < size) ? i : -1;
}

/* Patch of output position (n, oy, ox): taps * wc words; valid[t] (may be NULL) set to
 * 1 / 0. Returns the number of valid taps. Channel padding bits are masked to 0. */
static int64_t build_patch(const uint64_t *xp, const geom *g, int64_t n, int64_t oy,
                           int64_t ox, uint64_t *patch, uint8_t *valid) {
  const int64_t wc = bnn__words(g->c), ix0 = ox * g->sw - g->pl;
  const uint64_t tail = bnn__tail_mask(g->c);
  const int row_inside = ix0 >= 0 && ix0 + g->kw <= g->w;
  int64_t ky, kx, nvalid = 0;
  for (ky = 0; ky < g->kh; ++ky) {
    int64_t iy = in_index(oy, ky, g->sh, g->pt, g->h);
    uint64_t *dst = patch + ky * g->kw * wc;
    if (iy >= 0 && row_inside) {  /* the kw taps are kw neighbouring pixels: one copy */
      memcpy(dst, xp + ((n * g->h + iy) * g->w + ix0) * wc,
             (size_t)(g->kw * wc) * sizeof(uint64_t));
      if (tail != ~UINT64_C(0)) {
        for (kx = 0; kx < g->kw; ++kx) dst[kx * wc + wc - 1] &= tail;
      }
      if (valid) memset(valid + ky * g->kw, 1, (size_t)g->kw);
      nvalid += g->kw;
      continue;
    }
    for (kx = 0; kx < g->kw; ++kx, dst += wc) {
      int64_t ix = in_index(ox, kx, g->sw, g->pl, g->w);
      int ok = iy >= 0 && ix >= 0;
      if (ok) {
        memcpy(dst, xp + ((n * g->h + iy) * g->w + ix) * wc, (size_t)wc * sizeof(uint64_t));
        dst[wc - 1] &= tail;
        nvalid++;
      } else {
        memset(dst, 0, (size_t)wc * sizeof(uint64_t));
      }
      if (valid) valid[ky * g->kw + kx] = (uint8_t)ok;
    }
  }
  return nvalid;
}

int bnn_im2col_packed(const uint64_t *x_packed, int64_t batch, int64_t h, int64_t w,
                      int64_t c_in, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr, uint64_t *patches,
                      uint8_t *valid) {
  geom g;
  int64_t n, oy, ox, pos = 0, pw, taps, t;
  int err = geom_init(&g, batch, h, w, c_in, 1, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  taps = kh * kw;
  pw = taps * bnn__words(c_in);
  if ((err = bnn__count(&t, sizeof(uint64_t), batch * g.oh, g.ow, pw, 1)) != BNN_OK) return err;
  if (batch == 0) return BNN_OK;
  if (!x_packed || !patches) return BNN_ERR_NULL;
  for (n = 0; n < batch; ++n) {
    for (oy = 0; oy < g.oh; ++oy) {
      for (ox = 0; ox < g.ow; ++ox, ++pos) {
        build_patch(x_packed, &g, n, oy, ox, patches + pos * pw, valid ? valid + pos * taps : NULL);
      }
    }
  }
  return BNN_OK;
}

/* Output positions per popcount GEMM call: patches of about 64 KiB, 8 .. 256 rows. */
static int64_t positions_per_block(int64_t pw, int64_t q) {
  int64_t p = (int64_t)(65536 / sizeof(uint64_t)) / pw;
  p = p < 8 ? 8 : (p > 256 ? 256 : p);
  return p < q ? p : q;
}

static int binary_conv_impl(const uint64_t *xp, const uint64_t *wp, const geom *g,
                            int32_t *yi, float *yf) {
  const int64_t wc = bnn__words(g->c), taps = g->kh * g->kw, pw = taps * wc;
  const int64_t q_total = g->batch * g->oh * g->ow, co_n = g->co;
  const uint64_t pad_bits = ~bnn__tail_mask(g->c);
  const int64_t pb = positions_per_block(pw, q_total);
  int32_t *wpc = NULL, *pc = NULL;
  uint64_t *patches = NULL;
  uint8_t *valid = NULL;
  int64_t *nvalid = NULL;
  int64_t co, t, wi, q0, q, n = 0, oy = 0, ox = 0;
  bnn__xplan plan;
  int have_plan = 0, err = BNN_OK;

  if (g->batch == 0) return BNN_OK;
  if (!xp || !wp || (!yi && !yf)) return BNN_ERR_NULL;
  patches = (uint64_t *)malloc((size_t)(pb * pw) * sizeof(uint64_t));
  pc = (int32_t *)malloc((size_t)(pb * co_n) * sizeof(int32_t));
  valid = (uint8_t *)malloc((size_t)(pb * taps));
  nvalid = (int64_t *)malloc((size_t)pb * sizeof(int64_t));
  if (!patches || !pc || !valid || !nvalid) {
    err = BNN_ERR_NOMEM;
    goto done;
  }
  for (co = 0; co < co_n; ++co) {  /* the padding-bit check */
    for (t = 0; t < taps; ++t) {
      if (wp[co * pw + t * wc + wc - 1] & pad_bits) {
        err = BNN_ERR_PADDING;
        goto done;
      }
    }
  }
  if ((err = bnn__xplan_init(&plan, wp, co_n, pw, q_total)) != BNN_OK) goto done;
  have_plan = 1;
  for (q0 = 0; q0 < q_total; q0 += pb) {
    const int64_t np = q_total - q0 < pb ? q_total - q0 : pb;
    int64_t padded = 0;
    for (q = 0; q < np; ++q) {  /* positions q0 .. q0 + np - 1 in (n, oy, ox) order */
      nvalid[q] = build_patch(xp, g, n, oy, ox, patches + q * pw, valid + q * taps);
      padded += nvalid[q] != taps;
      if (++ox == g->ow) {
        ox = 0;
        if (++oy == g->oh) {
          oy = 0;
          ++n;
        }
      }
    }
    if (!padded) {  /* y = K - 2 popcount everywhere: the GEMM writes it */
      bnn__xplan_run(&plan, patches, np, yi ? BNN__OUT_I32 : BNN__OUT_F32, taps * g->c,
                     yi ? (void *)(yi + q0 * co_n) : (void *)(yf + q0 * co_n), co_n);
      continue;
    }
    if (!wpc) {  /* the popcount of each weight tap, for the padded ones */
      wpc = (int32_t *)malloc((size_t)(co_n * taps) * sizeof(int32_t));
      if (!wpc) {
        err = BNN_ERR_NOMEM;
        goto done;
      }
      for (co = 0; co < co_n; ++co) {
        for (t = 0; t < taps; ++t) {
          const uint64_t *wt = wp + co * pw + t * wc;
          uint64_t cnt = 0;
          for (wi = 0; wi < wc; ++wi) cnt += bnn__popcount64(wt[wi]);
          wpc[co * taps + t] = (int32_t)cnt;
        }
      }
    }
    bnn__xplan_run(&plan, patches, np, BNN__OUT_COUNT, 0, pc, co_n);
    for (q = 0; q < np; ++q) {
      const int64_t kvalid = nvalid[q] * g->c, out = (q0 + q) * co_n;
      const int32_t *cnt = pc + q * co_n;
      if (nvalid[q] == taps) {  /* no padded tap: y = K - 2 popcount */
        if (yi) {
          for (co = 0; co < co_n; ++co) yi[out + co] = (int32_t)(kvalid - 2 * (int64_t)cnt[co]);
        } else {
          for (co = 0; co < co_n; ++co) yf[out + co] = (float)(kvalid - 2 * (int64_t)cnt[co]);
        }
      } else {
        const uint8_t *v = valid + q * taps;
        for (co = 0; co < co_n; ++co) {
          const int32_t *wt = wpc + co * taps;
          int64_t c = cnt[co], val;
          for (t = 0; t < taps; ++t) {
            if (!v[t]) c -= wt[t];
          }
          val = kvalid - 2 * c;
          if (yi) {
            yi[out + co] = (int32_t)val;
          } else {
            yf[out + co] = (float)val;
          }
        }
      }
    }
  }
done:
  if (have_plan) bnn__xplan_free(&plan);
  free(wpc);
  free(patches);
  free(pc);
  free(valid);
  free(nvalid);
  return err;
}

int bnn_binary_conv2d_i32(const uint64_t *x_packed, const uint64_t *w_packed,
                          int64_t batch, int64_t h, int64_t w, int64_t c_in,
                          int64_t c_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pb, int64_t pl, int64_t pr, int32_t *y) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch > 0 && !y) return BNN_ERR_NULL;
  return binary_conv_impl(x_packed, w_packed, &g, y, NULL);
}

int bnn_binary_conv2d_f32(const uint64_t *x_packed, const uint64_t *w_packed,
                          int64_t batch, int64_t h, int64_t w, int64_t c_in,
                          int64_t c_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                          int64_t pt, int64_t pb, int64_t pl, int64_t pr, float *y) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch > 0 && !y) return BNN_ERR_NULL;
  return binary_conv_impl(x_packed, w_packed, &g, NULL, y);
}

/* ---- float kernels: conv as GEMM over im2col blocks -------------------------------
 * The reduction index r = (ky * kw + kx) * c_in + ci runs over kh * kw * c_in, the rows
 * of the HWIO weights flattened to (kh * kw * c_in, c_out). Output positions
 * q = (n * oh + oy) * ow + ox run over batch * oh * ow. The work is split into panels of
 * KC reduction rows (sign(W) expanded to floats once per panel) and blocks of PB
 * positions (im2col values built per block), so scratch stays small:
 * KC * c_out + PB * KC floats. */
enum { KC = 128, PB = 64 };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Values of the im2col row of position q for r in [r0, r0 + kc) (0 where padded):
 * dst[(r - r0) * stride]; from the real x, or +-1 from the packed xp. */
static void patch_values(const float *x, const uint64_t *xp, const geom *g, int64_t q,
                         int64_t r0, int64_t kc, float *dst, int64_t stride) {
  const int64_t c = g->c, wc = bnn__words(c), hw = g->oh * g->ow;
  const int64_t n = q / hw, oy = (q % hw) / g->ow, ox = q % g->ow;
  int64_t r = r0, end = r0 + kc, t;
  while (r < end) {
    const int64_t tap = r / c, ci0 = r % c, run = min64(c - ci0, end - r);
    const int64_t iy = in_index(oy, tap / g->kw, g->sh, g->pt, g->h);
    const int64_t ix = in_index(ox, tap % g->kw, g->sw, g->pl, g->w);
    float *d = dst + (r - r0) * stride;
    if (iy < 0 || ix < 0) {
      for (t = 0; t < run; ++t) d[t * stride] = 0.0f;
    } else if (x) {
      const float *src = x + ((n * g->h + iy) * g->w + ix) * c + ci0;
      for (t = 0; t < run; ++t) d[t * stride] = src[t];
    } else {
      const uint64_t *row = xp + ((n * g->h + iy) * g->w + ix) * wc;
      for (t = 0; t < run; ++t) d[t * stride] = bnn__get_bit(row, ci0 + t) ? 1.0f : -1.0f;
    }
    r += run;
  }
}

/* col2im: adds src[r - r0] for r in [r0, r0 + kc) to dx at the inputs of position q. */
static void scatter_values(float *dx, const geom *g, int64_t q, int64_t r0, int64_t kc,
                           const float *src) {
  const int64_t c = g->c, hw = g->oh * g->ow;
  const int64_t n = q / hw, oy = (q % hw) / g->ow, ox = q % g->ow;
  int64_t r = r0, end = r0 + kc, t;
  while (r < end) {
    const int64_t tap = r / c, ci0 = r % c, run = min64(c - ci0, end - r);
    const int64_t iy = in_index(oy, tap / g->kw, g->sh, g->pt, g->h);
    const int64_t ix = in_index(ox, tap % g->kw, g->sw, g->pl, g->w);
    if (iy >= 0 && ix >= 0) {
      float *d = dx + ((n * g->h + iy) * g->w + ix) * c + ci0;
      const float *s = src + (r - r0);
      for (t = 0; t < run; ++t) d[t] += s[t];
    }
    r += run;
  }
}

/* Rows [r0, r0 + kc) of sign(W) from w_sign (kh * kw * c_in, words(c_out)) as floats:
 * dst (kc, c_out), or transposed, dst (c_out, kc). */
static void weight_panel(const uint64_t *w_sign, const geom *g, int64_t r0, int64_t kc,
                         int transpose, float *dst) {
  const int64_t wco = bnn__words(g->co);
  int64_t rr, j;
  for (rr = 0; rr < kc; ++rr) {
    const uint64_t *row = w_sign + (r0 + rr) * wco;
    if (!transpose) {
      bnn__unpack_row(row, g->co, dst + rr * g->co);
    } else {
      for (j = 0; j < g->co; ++j) dst[j * kc + rr] = bnn__get_bit(row, j) ? 1.0f : -1.0f;
    }
  }
}

typedef enum { CONV_FORWARD, CONV_BACKWARD_INPUT, CONV_BACKWARD_WEIGHT } conv_pass;

/* forward:         y (Q, c_out)  = patches (Q, K) . sign(W) (K, c_out)
 * backward input:  dx = col2im(dy (Q, c_out) . sign(W)^T (c_out, K))
 * backward weight: dw (K, c_out) = patches^T (K, Q) . dy (Q, c_out) */
static int float_conv(conv_pass pass, const float *x, const uint64_t *xp,
                      const uint64_t *w_sign, const float *dy, const geom *g, float *out) {
  const int64_t K = g->kh * g->kw * g->c, Q = g->batch * g->oh * g->ow, co = g->co;
  const int64_t kc_max = min64(K, KC), pb_max = min64(Q, PB);
  float *wpanel = NULL, *block = NULL;
  int64_t r0, q0, q;
  if (pass == CONV_BACKWARD_INPUT) {
    memset(out, 0, (size_t)(g->batch * g->h * g->w * g->c) * sizeof(float));
  } else if (pass == CONV_BACKWARD_WEIGHT) {
    memset(out, 0, (size_t)(K * co) * sizeof(float));
  }
  if (Q == 0) return BNN_OK;
  if (pass != CONV_BACKWARD_WEIGHT) {
    wpanel = (float *)malloc((size_t)(kc_max * co) * sizeof(float));
    if (!wpanel) return BNN_ERR_NOMEM;
  }
  block = (float *)malloc((size_t)(pb_max * kc_max) * sizeof(float));
  if (!block) {
    free(wpanel);
    return BNN_ERR_NOMEM;
  }
  for (r0 = 0; r0 < K; r0 += KC) {
    const int64_t kc = min64(KC, K - r0);
    if (wpanel) weight_panel(w_sign, g, r0, kc, pass == CONV_BACKWARD_INPUT, wpanel);
    for (q0 = 0; q0 < Q; q0 += PB) {
      const int64_t pb = min64(PB, Q - q0);
      if (pass == CONV_FORWARD) {
        for (q = 0; q < pb; ++q) patch_values(x, xp, g, q0 + q, r0, kc, block + q * kc, 1);
        bnn__sgemm(pb, co, kc, block, kc, wpanel, co, out + q0 * co, co, r0 > 0);
      } else if (pass == CONV_BACKWARD_INPUT) {
        bnn__sgemm(pb, kc, co, dy + q0 * co, co, wpanel, kc, block, kc, 0);
        for (q = 0; q < pb; ++q) scatter_values(out, g, q0 + q, r0, kc, block + q * kc);
      } else {
        for (q = 0; q < pb; ++q) patch_values(x, xp, g, q0 + q, r0, kc, block + q * kc, 1);
        bnn__sgemm_tn(kc, co, pb, block, kc, dy + q0 * co, co, out + r0 * co, co, 1);
      }
    }
  }
  free(wpanel);
  free(block);
  return BNN_OK;
}

int bnn_sign_conv2d(const float *x, const uint64_t *w_sign, int64_t batch, int64_t h,
                    int64_t w, int64_t c_in, int64_t c_out, int64_t kh, int64_t kw,
                    int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                    int64_t pr, float *y) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch == 0) return BNN_OK;
  if (!x || !w_sign || !y) return BNN_ERR_NULL;
  return float_conv(CONV_FORWARD, x, NULL, w_sign, NULL, &g, y);
}

int bnn_conv2d_backward_input(const float *dy, const uint64_t *w_sign, int64_t batch,
                              int64_t h, int64_t w, int64_t c_in, int64_t c_out,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pb, int64_t pl, int64_t pr, float *dx) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch == 0) return BNN_OK;
  if (!dy || !w_sign || !dx) return BNN_ERR_NULL;
  return float_conv(CONV_BACKWARD_INPUT, NULL, NULL, w_sign, dy, &g, dx);
}

static int backward_weight_impl(const float *x, const uint64_t *xp, const float *dy,
                                const geom *g, float *dw) {
  if (!dw || (g->batch > 0 && ((!x && !xp) || !dy))) return BNN_ERR_NULL;
  return float_conv(CONV_BACKWARD_WEIGHT, x, xp, NULL, dy, g, dw);
}

int bnn_conv2d_backward_weight_packed(const uint64_t *x_packed, const float *dy,
                                      int64_t batch, int64_t h, int64_t w, int64_t c_in,
                                      int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                                      int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                                      int64_t pr, float *dw) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch > 0 && !x_packed) return BNN_ERR_NULL;
  return backward_weight_impl(NULL, x_packed, dy, &g, dw);
}

int bnn_conv2d_backward_weight_f32(const float *x, const float *dy, int64_t batch,
                                   int64_t h, int64_t w, int64_t c_in, int64_t c_out,
                                   int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                   int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                                   float *dw) {
  geom g;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (batch > 0 && !x) return BNN_ERR_NULL;
  return backward_weight_impl(x, NULL, dy, &g, dw);
}

/* ---- inference: binary conv, per-channel integer threshold, packing, 2x2 pool ------- */

/* Bit c of the word: y[c] >= t[c], c < cn <= 64 (SSE2: four channels a compare). */
static uint64_t threshold_word(const int32_t *y, const int32_t *t, int64_t cn) {
  uint64_t word = 0;
  int64_t c = 0;
#if defined(__SSE2__)
  for (; c + 4 <= cn; c += 4) {
    const __m128i below = _mm_cmplt_epi32(_mm_loadu_si128((const __m128i *)(y + c)),
                                          _mm_loadu_si128((const __m128i *)(t + c)));
    word |= (uint64_t)(~_mm_movemask_ps(_mm_castsi128_ps(below)) & 15) << c;
  }
#endif
  for (; c < cn; ++c) word |= (uint64_t)(y[c] >= t[c]) << c;
  return word;
}

#if defined(__SSE2__)
static __m128i max_epi32(__m128i a, __m128i b) { /* SSE2 has no pmaxsd */
  const __m128i gt = _mm_cmpgt_epi32(a, b);
  return _mm_or_si128(_mm_and_si128(gt, a), _mm_andnot_si128(gt, b));
}
#endif

/* The same for the 2x2 maximum: the window's rows at r0 and r1, its columns c and
 * c + stride; pooling the bits (an OR) is thresholding the maximum (monotone test). */
static uint64_t pool_threshold_word(const int32_t *r0, const int32_t *r1, int64_t stride,
                                    const int32_t *t, int64_t cn) {
  uint64_t word = 0;
  int64_t c = 0;
#if defined(__SSE2__)
  for (; c + 4 <= cn; c += 4) {
    const __m128i m = max_epi32(
        max_epi32(_mm_loadu_si128((const __m128i *)(r0 + c)),
                  _mm_loadu_si128((const __m128i *)(r0 + stride + c))),
        max_epi32(_mm_loadu_si128((const __m128i *)(r1 + c)),
                  _mm_loadu_si128((const __m128i *)(r1 + stride + c))));
    const __m128i below = _mm_cmplt_epi32(m, _mm_loadu_si128((const __m128i *)(t + c)));
    word |= (uint64_t)(~_mm_movemask_ps(_mm_castsi128_ps(below)) & 15) << c;
  }
#endif
  for (; c < cn; ++c) {
    int32_t m = r0[c];
    if (r0[stride + c] > m) m = r0[stride + c];
    if (r1[c] > m) m = r1[c];
    if (r1[stride + c] > m) m = r1[stride + c];
    word |= (uint64_t)(m >= t[c]) << c;
  }
  return word;
}

int bnn_binary_conv2d_sign(const uint64_t *x_packed, const uint64_t *w_packed,
                           const int32_t *threshold, int64_t batch, int64_t h, int64_t w,
                           int64_t c_in, int64_t c_out, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                           int pool, uint64_t *y) {
  geom g;
  int32_t *acc = NULL;
  int64_t n, oy, ox, wco, oh, ow, q_total, i;
  int err = geom_init(&g, batch, h, w, c_in, c_out, kh, kw, sh, sw, pt, pb, pl, pr);
  if (err != BNN_OK) return err;
  if (pool != 0 && pool != 1) return BNN_ERR_ARG;
  wco = bnn__words(g.co);
  oh = pool ? g.oh / 2 : g.oh;
  ow = pool ? g.ow / 2 : g.ow;
  q_total = g.batch * g.oh * g.ow;
  if (q_total > 0 && !threshold) return BNN_ERR_NULL;
  if (g.batch * oh * ow > 0 && !y) return BNN_ERR_NULL;
  if (q_total == 0) return binary_conv_impl(x_packed, w_packed, &g, NULL, NULL);
  if (q_total > INT64_MAX / 4 / g.co) return BNN_ERR_OVERFLOW;
  acc = (int32_t *)malloc((size_t)(q_total * g.co) * sizeof(int32_t));
  if (!acc) return BNN_ERR_NOMEM;
  err = binary_conv_impl(x_packed, w_packed, &g, acc, NULL);
  if (err != BNN_OK) {
    free(acc);
    return err;
  }
  /* bit = y >= threshold; pooled: the OR over the 2x2 window, built a word at a time
   * in a register (a |= into memory per bit is a chain of store-to-load forwards) */
  for (n = 0; n < g.batch; ++n) {
    for (oy = 0; oy < oh; ++oy) {
      for (ox = 0; ox < ow; ++ox) {
        uint64_t *dst = y + ((n * oh + oy) * ow + ox) * wco;
        for (i = 0; i < wco; ++i) {
          const int64_t c0 = i * 64, cn = g.co - c0 < 64 ? g.co - c0 : 64;
          const int32_t *s0 = acc + ((n * g.oh + (pool ? 2 * oy : oy)) * g.ow +
                                     (pool ? 2 * ox : ox)) * g.co + c0;
          dst[i] = pool ? pool_threshold_word(s0, s0 + g.ow * g.co, g.co, threshold + c0, cn)
                        : threshold_word(s0, threshold + c0, cn);
        }
      }
    }
  }
  free(acc);
  return BNN_OK;
}

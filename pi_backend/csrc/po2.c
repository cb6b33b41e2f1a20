/*
 * Power-of-two gradient quantizer for float32, in integer exponent arithmetic: the
 * same algorithm as quantizers/gradient.py Po2 (see bnnpi.h), so the results are
 * identical bit for bit, subnormals included.
 *
 * |g| = (1 + F / 2^23) * 2^L (subnormals normalised first). Nearest rounding in the
 * log domain: round(log2|g|) = L + 1 iff 1 + F / 2^23 >= sqrt(2), i.e. F >= T with
 * T = 3474676 the smallest such field (no float equals sqrt(2): no ties).
 */
#include "internal.h"

#define SQRT2_FIELD 3474676u
#define EXP_BIAS 127
#define NMANT 23

static int32_t clip_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

static int leading_one(uint32_t v) {  /* position of the highest set bit, v != 0 */
  int p = 0;
  while (v >>= 1) p++;
  return p;
}

/* floor(log2|g|) and the normalised mantissa field of a finite nonzero float. */
static void decompose(uint32_t raw, int32_t *log2_floor, uint32_t *frac) {
  uint32_t expf = (raw >> NMANT) & 0xffu, mant = raw & 0x7fffffu;
  if (expf == 0) {  /* subnormal: |g| = mant * 2^-149 */
    int lead = leading_one(mant);
    *frac = (mant << (NMANT - lead)) & 0x7fffffu;
    *log2_floor = lead - EXP_BIAS - NMANT + 1;
  } else {
    *frac = mant;
    *log2_floor = (int32_t)expf - EXP_BIAS;
  }
}

int bnn_po2(const float *g, int64_t n, int bits, int bias, int reference_zeros,
            const uint32_t *random, float *out) {
  int32_t lo, hi;
  const int32_t emin = 1 - EXP_BIAS, emax = EXP_BIAS;
  int32_t big_r = 0, b;
  int any = 0;
  int64_t i;
  if (n < 0) return BNN_ERR_SIZE;
  if (!bnn__fits(n, sizeof(float))) return BNN_ERR_OVERFLOW;
  if (bits < 1 || bits > 8 || bias < -256 || bias > 256) return BNN_ERR_ARG;
  lo = -(1 << (bits - 1));
  hi = (1 << (bits - 1)) - 1;
  if (n == 0) return BNN_OK;
  if (!g || !out) return BNN_ERR_NULL;

  for (i = 0; i < n; ++i) {  /* R = max over finite nonzero elements of round(log2|g|) */
    uint32_t raw = bnn__f32_bits(g[i]);
    uint32_t expf = (raw >> NMANT) & 0xffu;
    if (expf != 0xffu && (raw & 0x7fffffffu) != 0) {
      int32_t lf, r;
      uint32_t frac;
      decompose(raw, &lf, &frac);
      r = lf + (frac >= SQRT2_FIELD);
      if (!any || r > big_r) big_r = r;
      any = 1;
    }
  }
  b = bias - (any ? big_r : 0);

  for (i = 0; i < n; ++i) {
    uint32_t raw = bnn__f32_bits(g[i]);
    uint32_t expf = (raw >> NMANT) & 0xffu, sign = raw & 0x80000000u, mag;
    int zero = (raw & 0x7fffffffu) == 0;
    int32_t e;
    if (expf == 0xffu) {  /* NaN and inf unchanged */
      out[i] = g[i];
      continue;
    }
    if (zero) {
      if (!reference_zeros) {
        out[i] = 0.0f;
        continue;
      }
      e = lo - b;  /* +2^(lo - b) */
      sign = 0;
    } else {
      int32_t lf, r;
      uint32_t frac;
      decompose(raw, &lf, &frac);
      if (random) {
        r = lf + ((random[i] >> (32 - NMANT)) < frac);
      } else {
        r = lf + (frac >= SQRT2_FIELD);
      }
      e = clip_i32(r + b, lo, hi) - b;
    }
    /* +-2^e as a bit pattern: saturate above, subnormal or zero below */
    if (e > emax) e = emax;
    if (e >= emin) {
      mag = (uint32_t)(e + EXP_BIAS) << NMANT;
    } else if (e >= emin - NMANT) {
      mag = 1u << (e - emin + NMANT);
    } else {
      mag = 0;
    }
    out[i] = bnn__f32_from_bits(mag ? (mag | sign) : sign);
  }
  return BNN_OK;
}

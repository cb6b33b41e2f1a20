/*
 * Binary GEMM by XNOR + popcount, and the popcount dispatch shared with conv.c.
 *
 * For +-1 vectors a, b of k elements packed as bits (1 <-> +1):
 *   a . b = (#equal) - (#different) = k - 2 * popcount(a XOR b)
 * with the padding bits of the last word clear, so that they never count (operands
 * with stray padding bits are copied and cleared first).
 *
 * Implementations of the popcount GEMM c[i, j] = popcount(a_i XOR b_j), all exact, so
 * all give identical results (the tests run every one available):
 *   1 portable      SWAR popcount, four b rows per pass over a row of a (any C99);
 *   2 x86-popcnt    the same loop compiled with target("popcnt") so that it uses the
 *                   POPCNT instruction; or, on ARM, "neon": vcntq_u8 on 128-bit lanes,
 *                   widened with vpadalq (aarch64 and armv7 with NEON);
 *   3 x86-avx2      \ pshufb table lookups on 32 / 64 rows of b at once, register
 *   4 x86-avx512bw  / blocked (xgemm_x86.c);
 * 3 and 4 are chosen at run time by __builtin_cpu_supports: the library itself is built
 * for plain x86-64 (no -m flags), each kernel has its own target attribute (4 through
 * x86_intrin.h, where a test build emulates AVX-512). The default ("auto") is the
 * fastest this CPU has: 4, 3, 2, then 1.
 */
#include <stdlib.h>

#include "internal.h"

#if BNN_HAVE_X86_SIMD
#include "x86_intrin.h" /* BNN_CPU_HAS_AVX512 */
#endif

#if defined(__ARM_NEON)
#include <arm_neon.h>
#define BNN_HAVE_NEON 1
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define BNN_HAVE_X86_POPCNT 1
#endif

typedef void (*bnn_rows_fn)(const uint64_t *, const uint64_t *, int64_t, int64_t,
                            int32_t *);

/* portable */
#define BNN_ROWS_FN popcount_rows_portable
#define BNN_ROWS_ATTR
#define BNN_POPC(x) bnn__popcount64(x)
#include "popcount_rows.inc"
#undef BNN_ROWS_FN
#undef BNN_ROWS_ATTR
#undef BNN_POPC

#ifdef BNN_HAVE_X86_POPCNT
#define BNN_ROWS_FN popcount_rows_x86
#define BNN_ROWS_ATTR __attribute__((target("popcnt")))
#define BNN_POPC(x) __builtin_popcountll(x)
#include "popcount_rows.inc"
#undef BNN_ROWS_FN
#undef BNN_ROWS_ATTR
#undef BNN_POPC
#endif

#ifdef BNN_HAVE_NEON
static uint64_t hsum_u16(uint16x8_t v) {
  uint64x2_t s = vpaddlq_u32(vpaddlq_u16(v));
  return vgetq_lane_u64(s, 0) + vgetq_lane_u64(s, 1);
}

/* acc += per-byte popcounts of (va XOR the 128 bits at bp), widened to 16-bit lanes. */
#define BNN_NEON_STEP(acc, va, bp)                                              \
  (acc) = vpadalq_u8((acc), vcntq_u8(veorq_u8((va),                             \
                                              vreinterpretq_u8_u64(vld1q_u64(bp)))))

/* Two b rows per pass over a. A 16-bit lane gains at most 16 per step: the counters
 * are flushed to 64 bits every 4095 steps. An odd last word goes through a 128-bit
 * step with a zero high half. */
static void popcount_rows_neon(const uint64_t *a, const uint64_t *b, int64_t nb,
                               int64_t words, int32_t *out) {
  const int64_t pairs = words / 2;
  const int odd = (int)(words % 2);
  int64_t j = 0, p, stop;
  uint8x16_t a_last = vdupq_n_u8(0);
  if (odd) a_last = vreinterpretq_u8_u64(vcombine_u64(vld1_u64(a + words - 1), vcreate_u64(0)));
  for (; j < nb; j += 2) {
    const int two = j + 1 < nb;
    const uint64_t *b0 = b + j * words, *b1 = two ? b0 + words : b0;
    uint64_t c0 = 0, c1 = 0;
    for (p = 0; p < pairs; p = stop) {
      uint16x8_t acc0 = vdupq_n_u16(0), acc1 = vdupq_n_u16(0);
      stop = p + 4095 < pairs ? p + 4095 : pairs;
      for (; p < stop; ++p) {
        uint8x16_t va = vreinterpretq_u8_u64(vld1q_u64(a + 2 * p));
        BNN_NEON_STEP(acc0, va, b0 + 2 * p);
        BNN_NEON_STEP(acc1, va, b1 + 2 * p);
      }
      c0 += hsum_u16(acc0);
      c1 += hsum_u16(acc1);
    }
    if (odd) {
      const uint64x1_t zero = vcreate_u64(0);
      uint8x16_t x0 = veorq_u8(a_last, vreinterpretq_u8_u64(
                                           vcombine_u64(vld1_u64(b0 + words - 1), zero)));
      uint8x16_t x1 = veorq_u8(a_last, vreinterpretq_u8_u64(
                                           vcombine_u64(vld1_u64(b1 + words - 1), zero)));
      c0 += hsum_u16(vpaddlq_u8(vcntq_u8(x0)));
      c1 += hsum_u16(vpaddlq_u8(vcntq_u8(x1)));
    }
    out[j] = (int32_t)c0;
    if (two) out[j + 1] = (int32_t)c1;
  }
}
#endif

/* ---- dispatch -------------------------------------------------------------------- */

static int impl_available(int impl) {
  switch (impl) {
    case BNN__IMPL_PORTABLE:
      return 1;
    case BNN__IMPL_SCALAR_HW:
#if defined(BNN_HAVE_NEON)
      return 1;
#elif defined(BNN_HAVE_X86_POPCNT)
      __builtin_cpu_init();
      return __builtin_cpu_supports("popcnt") ? 1 : 0;
#else
      return 0;
#endif
#if BNN_HAVE_X86_SIMD
    case BNN__IMPL_AVX2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") ? 1 : 0;
    case BNN__IMPL_AVX512:
      __builtin_cpu_init();
      return BNN_CPU_HAS_AVX512("avx512f") && BNN_CPU_HAS_AVX512("avx512bw") ? 1 : 0;
#endif
    default:
      return 0;
  }
}

static int g_impl = 0; /* 0: not chosen yet */
static int g_auto = 1; /* chosen automatically (bnn_set_popcount_impl(0)) */

int bnn_popcount_impl_available(int impl) { return impl_available(impl); }

int bnn_set_popcount_impl(int impl) {
  const int automatic = impl == 0;
  if (automatic) {
    impl = BNN__IMPL_AVX512;
    while (!impl_available(impl)) impl--; /* portable (1) always is */
  } else if (!impl_available(impl)) {
    return BNN_ERR_ARG;
  }
  g_impl = impl;
  g_auto = automatic;
  return BNN_OK;
}

int bnn_popcount_impl(void) {
  if (!g_impl) bnn_set_popcount_impl(0);
  return g_impl;
}

const char *bnn_popcount_impl_name_of(int impl) {
  switch (impl) {
    case BNN__IMPL_PORTABLE: return "portable";
    case BNN__IMPL_SCALAR_HW:
#if defined(BNN_HAVE_NEON)
      return "neon";
#elif defined(BNN_HAVE_X86_POPCNT)
      return "x86-popcnt";
#else
      return NULL;
#endif
#if BNN_HAVE_X86_SIMD
    case BNN__IMPL_AVX2: return "x86-avx2";
    case BNN__IMPL_AVX512: return "x86-avx512bw";
#endif
    default: return NULL;
  }
}

const char *bnn_popcount_impl_name(void) { return bnn_popcount_impl_name_of(bnn_popcount_impl()); }

/* ---- the popcount GEMM (plan) ------------------------------------------------------ */

static bnn_rows_fn row_kernel(int impl) {
#if defined(BNN_HAVE_NEON)
  if (impl == BNN__IMPL_SCALAR_HW) return popcount_rows_neon;
#elif defined(BNN_HAVE_X86_POPCNT)
  if (impl == BNN__IMPL_SCALAR_HW) return popcount_rows_x86;
#endif
  (void)impl;
  return popcount_rows_portable;
}

int bnn__xplan_init(bnn__xplan *plan, const uint64_t *b, int64_t n, int64_t words,
                    int64_t m_hint) {
  plan->impl = bnn_popcount_impl();
  /* Rearranging b costs about as much as 4 rows of a: for fewer rows, "auto" takes
   * the scalar popcount, which works on b as it is. */
  if (g_auto && m_hint <= 4 && plan->impl > BNN__IMPL_SCALAR_HW &&
      impl_available(BNN__IMPL_SCALAR_HW)) {
    plan->impl = BNN__IMPL_SCALAR_HW;
  }
  plan->n = n;
  plan->words = words;
  plan->b = b;
  plan->panel = NULL;
  plan->mem = NULL;
#if BNN_HAVE_X86_SIMD
  if (plan->impl == BNN__IMPL_AVX2 || plan->impl == BNN__IMPL_AVX512) {
    const int64_t bytes = bnn__x86_panel_bytes(plan->impl, n, words);
    uint8_t *mem;
    if (bytes < 0 || !bnn__fits(bytes + 64, 1)) return BNN_ERR_OVERFLOW;
    mem = (uint8_t *)malloc((size_t)bytes + 64);
    if (!mem) return BNN_ERR_NOMEM;
    plan->mem = mem;
    mem += (64 - (uintptr_t)mem % 64) % 64; /* the kernels use aligned loads */
    bnn__x86_panel_prep(plan->impl, b, n, words, mem);
    plan->panel = mem;
  }
#endif
  return BNN_OK;
}

void bnn__xplan_free(bnn__xplan *plan) {
  free(plan->mem);
  plan->mem = NULL;
  plan->panel = NULL;
}

void bnn__xplan_run(const bnn__xplan *plan, const uint64_t *a, int64_t m, int mode,
                    int64_t kbits, void *y, int64_t ldy) {
  enum { BLOCK = 256 };
  int32_t pc[BLOCK];
  bnn_rows_fn rows;
  int64_t i, j0, j;
  if (m == 0 || plan->n == 0) return;
#if BNN_HAVE_X86_SIMD
  if (plan->panel) {
    bnn__x86_run(plan->impl, plan->panel, plan->n, plan->words, a, m, mode, kbits, y, ldy);
    return;
  }
#endif
  rows = row_kernel(plan->impl);
  for (i = 0; i < m; ++i) {
    for (j0 = 0; j0 < plan->n; j0 += BLOCK) {
      const int64_t nb = plan->n - j0 < BLOCK ? plan->n - j0 : BLOCK;
      rows(a + i * plan->words, plan->b + j0 * plan->words, nb, plan->words, pc);
      if (mode == BNN__OUT_COUNT) {
        memcpy((int32_t *)y + i * ldy + j0, pc, (size_t)nb * sizeof(int32_t));
      } else if (mode == BNN__OUT_I32) {
        int32_t *yi = (int32_t *)y + i * ldy + j0;
        for (j = 0; j < nb; ++j) yi[j] = (int32_t)(kbits - 2 * (int64_t)pc[j]);
      } else {
        float *yf = (float *)y + i * ldy + j0;
        for (j = 0; j < nb; ++j) yf[j] = (float)(kbits - 2 * (int64_t)pc[j]);
      }
    }
  }
}

/* ---- GEMM ------------------------------------------------------------------------ */

static int check_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                      int64_t k, const void *y, size_t y_elem) {
  int64_t t;
  int err;
  if (m < 0 || n < 0 || k < 0 || k > INT32_MAX) return BNN_ERR_SIZE;
  if ((err = bnn__count(&t, sizeof(uint64_t), m, bnn__words(k), 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, sizeof(uint64_t), n, bnn__words(k), 1, 1)) != BNN_OK) return err;
  if ((err = bnn__count(&t, y_elem, m, n, 1, 1)) != BNN_OK) return err;
  if (m == 0 || n == 0) return BNN_OK;
  if (!y || (k > 0 && (!a || !b))) return BNN_ERR_NULL;
  return BNN_OK;
}

/* a and b with their padding bits cleared: the originals when they are already clear
 * (as every packer here writes them), else copies (*owned set; free it). */
static int clean_rows(const uint64_t *x, int64_t rows, int64_t k, const uint64_t **out,
                      uint64_t **owned) {
  const int64_t wk = bnn__words(k);
  const uint64_t pad = ~bnn__tail_mask(k);
  int64_t r;
  int dirty = 0;
  *out = x;
  *owned = NULL;
  if (!pad) return BNN_OK;
  for (r = 0; r < rows && !dirty; ++r) dirty = (x[r * wk + wk - 1] & pad) != 0;
  if (!dirty) return BNN_OK;
  *owned = (uint64_t *)malloc((size_t)(rows * wk) * sizeof(uint64_t));
  if (!*owned) return BNN_ERR_NOMEM;
  memcpy(*owned, x, (size_t)(rows * wk) * sizeof(uint64_t));
  for (r = 0; r < rows; ++r) (*owned)[r * wk + wk - 1] &= ~pad;
  *out = *owned;
  return BNN_OK;
}

static int xnor_gemm_impl(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                          int64_t k, int32_t *yi, float *yf) {
  const uint64_t *ca, *cb;
  uint64_t *own_a = NULL, *own_b = NULL;
  bnn__xplan plan;
  int64_t i;
  int err = check_gemm(a, b, m, n, k, yi ? (const void *)yi : (const void *)yf,
                       yi ? sizeof(int32_t) : sizeof(float));
  if (err != BNN_OK || m == 0 || n == 0) return err;
  if (k == 0) {
    if (yi) memset(yi, 0, (size_t)(m * n) * sizeof(int32_t));
    else for (i = 0; i < m * n; ++i) yf[i] = 0.0f;
    return BNN_OK;
  }
  if ((err = clean_rows(a, m, k, &ca, &own_a)) != BNN_OK ||
      (err = clean_rows(b, n, k, &cb, &own_b)) != BNN_OK) {
    free(own_a);
    return err;
  }
  if ((err = bnn__xplan_init(&plan, cb, n, bnn__words(k), m)) == BNN_OK) {
    bnn__xplan_run(&plan, ca, m, yi ? BNN__OUT_I32 : BNN__OUT_F32, k,
                   yi ? (void *)yi : (void *)yf, n);
    bnn__xplan_free(&plan);
  }
  free(own_a);
  free(own_b);
  return err;
}

int bnn_xnor_gemm_i32(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                      int64_t k, int32_t *y) {
  if (!y && m > 0 && n > 0) return BNN_ERR_NULL;
  return xnor_gemm_impl(a, b, m, n, k, y, NULL);
}

int bnn_xnor_gemm_f32(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n,
                      int64_t k, float *y) {
  if (!y && m > 0 && n > 0) return BNN_ERR_NULL;
  return xnor_gemm_impl(a, b, m, n, k, NULL, y);
}

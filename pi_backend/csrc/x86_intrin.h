/*
 * The x86 intrinsics of xgemm_x86.c and float_x86.c, and the two switches of their AVX-512
 * paths (gemm.c's dispatch uses the second):
 *   BNN_AVX512_TARGET(features)  the target attribute of a function using AVX-512;
 *   BNN_CPU_HAS_AVX512(feature)  whether the CPU has "avx512f" / "avx512bw".
 * Normally (every build but one): <immintrin.h>, __attribute__((target(features))) and
 * __builtin_cpu_supports(feature).
 *
 * With BNN_EMULATE_AVX512 (make EMULATE_AVX512=1, a test build in build/avx512-emulated,
 * never shipped) the AVX-512 paths run on a CPU without AVX-512, so that the tests check
 * them against the portable ones (tests/pi_backend/test_avx512_emulated.py):
 *   - the _mm512_* intrinsics are SIMDe's (Debian libsimde-dev) emulations. The Makefile
 *     compiles the x86 sources with -mavx2 -mfma -mf16c there, so that SIMDe leaves the
 *     AVX2 / FMA / F16C intrinsics native and builds its 512-bit operations from them:
 *     _mm512_fmadd_ps is two real FMAs (SIMDe's fallback without FMA rounds twice);
 *   - the AVX-512 functions have no target attribute (GCC could vectorize their code
 *     with real AVX-512 instructions: SIGILL);
 *   - the CPU "has" AVX-512F and AVX-512BW.
 * SIMDe 0.7.4 lacks eight of the intrinsics used: they are defined below, the two
 * conversions from SIMDe's 256-bit ones, the masked ones one lane at a time. The masked
 * loads and stores touch no memory of a lane outside the mask, as the instructions do
 * not (their fault suppression is what the tail code relies on).
 */
#ifndef BNNPI_X86_INTRIN_H
#define BNNPI_X86_INTRIN_H

#ifndef BNN_EMULATE_AVX512

#include <immintrin.h>
#define BNN_AVX512_TARGET(features) __attribute__((target(features)))
#define BNN_CPU_HAS_AVX512(feature) __builtin_cpu_supports(feature)

#else

#include <string.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#define BNN_AVX512_TARGET(features)
#define BNN_CPU_HAS_AVX512(feature) 1

/* Lane i (size bytes) of src to dst where bit i of k is set; no other byte is touched. */
static inline void bnn__emu_mask_copy(void *dst, const void *src, unsigned k, int lanes,
                                      int size) {
  int i;
  for (i = 0; i < lanes; ++i) {
    if ((k >> i) & 1) memcpy((char *)dst + size * i, (const char *)src + size * i, size);
  }
}

/* The lanes of k from memory at p, the others from src. */
static inline simde__m512 bnn__emu_mask_loadu_ps(simde__m512 src, simde__mmask16 k,
                                                 const void *p) {
  float v[16];
  simde_mm512_storeu_ps(v, src);
  bnn__emu_mask_copy(v, p, k, 16, 4);
  return simde_mm512_loadu_ps(v);
}

static inline simde__m512d bnn__emu_mask_loadu_pd(simde__m512d src, simde__mmask8 k,
                                                  const void *p) {
  double v[8];
  simde_mm512_storeu_pd(v, src);
  bnn__emu_mask_copy(v, p, k, 8, 8);
  return simde_mm512_loadu_pd(v);
}

static inline void bnn__emu_mask_storeu_ps(void *p, simde__mmask16 k, simde__m512 a) {
  float v[16];
  simde_mm512_storeu_ps(v, a);
  bnn__emu_mask_copy(p, v, k, 16, 4);
}

static inline void bnn__emu_mask_storeu_pd(void *p, simde__mmask8 k, simde__m512d a) {
  double v[8];
  simde_mm512_storeu_pd(v, a);
  bnn__emu_mask_copy(p, v, k, 8, 8);
}

/* The two conversions, as two 256-bit halves SIMDe has. */
static inline simde__m512d bnn__emu_cvtps_pd(simde__m256 a) {
  simde__m512d low = simde_mm512_castpd256_pd512(simde_mm256_cvtps_pd(simde_mm256_castps256_ps128(a)));
  return simde_mm512_insertf64x4(low, simde_mm256_cvtps_pd(simde_mm256_extractf128_ps(a, 1)), 1);
}

static inline simde__m512 bnn__emu_cvtepi32_ps(simde__m512i a) {
  simde__m512 low = simde_mm512_castps256_ps512(simde_mm256_cvtepi32_ps(simde_mm512_castsi512_si256(a)));
  return simde_mm512_insertf32x8(low, simde_mm256_cvtepi32_ps(simde_mm512_extracti64x4_epi64(a, 1)), 1);
}

/* #undef first: a later SIMDe may have them, as full-width loads or stores */
#undef _mm512_mask_loadu_ps
#undef _mm512_maskz_loadu_ps
#undef _mm512_maskz_loadu_pd
#undef _mm512_mask_storeu_ps
#undef _mm512_mask_storeu_pd
#undef _mm512_mask_cmp_ps_mask
#undef _mm512_cvtps_pd
#undef _mm512_cvtepi32_ps
#define _mm512_mask_loadu_ps(src, k, p) bnn__emu_mask_loadu_ps((src), (k), (p))
#define _mm512_maskz_loadu_ps(k, p) bnn__emu_mask_loadu_ps(simde_mm512_setzero_ps(), (k), (p))
#define _mm512_maskz_loadu_pd(k, p) bnn__emu_mask_loadu_pd(simde_mm512_setzero_pd(), (k), (p))
#define _mm512_mask_storeu_ps(p, k, a) bnn__emu_mask_storeu_ps((p), (k), (a))
#define _mm512_mask_storeu_pd(p, k, a) bnn__emu_mask_storeu_pd((p), (k), (a))
#define _mm512_mask_cmp_ps_mask(k, a, b, imm) \
  ((simde__mmask16)((k) & simde_mm512_cmp_ps_mask((a), (b), (imm))))
#define _mm512_cvtps_pd(a) bnn__emu_cvtps_pd(a)
#define _mm512_cvtepi32_ps(a) bnn__emu_cvtepi32_ps(a)

#endif /* BNN_EMULATE_AVX512 */

#endif /* BNNPI_X86_INTRIN_H */

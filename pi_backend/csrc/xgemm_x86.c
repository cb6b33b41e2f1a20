/*
 * XNOR-popcount GEMM for x86-64 with AVX2 or AVX-512BW (selected at run time in gemm.c
 * with __builtin_cpu_supports; the library itself is built for plain x86-64, and each
 * kernel carries its own target attribute; x86_intrin.h: the AVX-512 kernels emulated in
 * a test build, so that a CPU without AVX-512 tests them too).
 *
 * Neither instruction set has a per-lane popcount of 64-bit words (that would be
 * AVX512_VPOPCNTDQ). Instead, with pshufb as a 16-entry byte table:
 *   popcount(a XOR b) over 4 bits = T_a[b], T_a[x] = popcount(a XOR x),
 * one pshufb looks up the 4-bit pieces of 32 (AVX2) or 64 (AVX-512) rows of b at once
 * in the table T_a of one 4-bit piece a of a row of a (broadcast to every lane). That
 * folds the XOR into the table: two lookups and two byte adds per byte of a, per vector
 * of rows of b, where a nibble popcount of (a XOR b) would need six operations.
 *
 * For this, b is rearranged once per call into a "panel" (panel_prep): blocks of W
 * rows (W = bytes per vector); in a block, for each byte t of the rows, one vector of
 * the low nibbles and one of the high nibbles of byte t of the W rows. Within a vector,
 * byte lane 4 i + s holds row (W / 4) s + i of the block, so that the 32-bit totals come
 * out in row order without a shuffle (see xgemm_kernel.inc). Rows past n (the last block)
 * repeat row 0: their results are never stored.
 * Register blocks: 4 (AVX-512) or 3 (AVX2) rows of a x 2 vectors of b (8 rows x 1 vector
 * when b has a single block, e.g. 64 output channels), so each loaded vector of b serves
 * several rows of a. AVX2 has 16 vector registers: 4 x 2 needs 8 accumulators, 4 vectors
 * of b, 2 tables and 2 lookups, and GCC spilled accumulators to the stack in the loop;
 * 3 x 2 keeps all in registers (5% faster at k = 256 on an AMD Zen 1).
 *
 * The byte order of a packed row is that of a little-endian machine (byte t = bits
 * 8t .. 8t + 7), which x86 is.
 *
 * On an AMD Zen 1 the 3 x 2 loop takes about 19 cycles per byte of a: 12 lookups, 12
 * byte adds, 6 table broadcasts and 4 loads of b are about 70 macro-ops (two per 256-bit
 * instruction), near the 4 a cycle Zen 1 dispatches to its vector units. Timed there and
 * not kept: tables stored twice over and loaded whole instead of broadcast (no change);
 * a fourth row of a by scalar popcnt in the same loop, for the idle integer units (no
 * faster: the front end is full); one chunk of 32 bytes instead of two of 16 (4% faster
 * at k = 256, but wrong: a byte cannot hold the 257 possible counts of 256 bits).
 * The table fetches are the costly part: with the same tables for every byte (wrong
 * counts, timing only) the loop runs 1.3-1.4x faster. Yet nothing that fetched fewer
 * of them was faster overall (each timed at 200 x 256 and 1000 x 1152 x 192-256):
 * one 32-byte load in place of two broadcasts (5-10%, but that needs a panel with
 * half the rows per vector and twice the accumulators); b folded into pshufb as its
 * memory operand (inline asm; 2%: the loads then bound the loop); register blocks
 * 1x3, 1x6, 1x8, 2x2, 2x3, 2x4, 3x4, 4x2, 6x2 of rows of a x vectors of b (all within
 * 10% of 3 x 2, most slower).
 *
 * On an AMD Zen 3 (2026-11-24, 200 x 256 . 256 x 256 in a C loop): 33.1 us, of which
 * the loop over bytes took about 21 and the rest was per block of 3 x 64 outputs. Two
 * changes took it to 27.9 us: one kernel call for all the row groups of a pair of
 * blocks (33.1 -> 29.4: the call per group, its pointer arrays and constants cost 11%)
 * and rows of at most 32 bytes counted in one pass of byte counters (29.4 -> 27.9;
 * see xgemm_kernel.inc). Timed and not kept: table offsets computed once per row of a
 * instead of a shift per byte (no change), tables stored twice and loaded whole (3%
 * slower), another unrolling of the byte loop (1 or 4: no change), the output's cache
 * lines prefetched for writing (no change), the row groups outside the pairs of
 * blocks (no change), each output mode compiled apart (17% slower: GCC spilled).
 * 12 lookups and 12 byte adds alone, with no loads, take 5.5 TSC cycles on that CPU,
 * 0.92 per byte of a and 32 outputs; the kernel's loop takes about 1.05. Then
 * 27.9 -> 27.2 us: the outputs of the one pass made by one vpmaddwd each (w c, with
 * w = -2 or 1) and one add, instead of a mask or shift, a doubling and a subtraction
 * (0.4 us), and the panel transposed two 16 x 16 byte blocks at a time in AVX2
 * registers (6 x 256 x 256: 2.1 -> 1.55 us).
 * In core cycles (3.2 GHz; asm microbenchmarks, 2026-11-24): Zen 3 runs two vpshufb a
 * cycle, and vector shifts on the same two pipes, so 2 lookups per byte of a and 32
 * outputs need 1 cycle. With their byte adds they take 1.2 (1.0 when the adds do not
 * read the lookups), the kernel's loop 1.3. Not faster either: two rows of a per lookup,
 * their counts in the two nibbles of each byte (split by an and, a shift and an and
 * after each byte of a: 1.19). The epilogue takes about 3 us of the 27, half of it
 * the 6,400 32-byte stores.
 * Then (2026-11-25, same CPU, each against the previous library loaded in the same
 * process, interleaved): 27.7 -> 26.1 us in a C loop, 36.5 -> 34 us through xnor_gemm
 * after NumPy's matmul (as bench/pi_backend.py times it, with xnor_gemm's checks 0.5 us
 * shorter), by the epilogue of the one pass in shifts and ands instead of vpmaddwd (4%;
 * the epilogue 3.1 -> 1.4 us with the next change) and each group of rows of a taken
 * through all the pairs of blocks whose panel fits in 16 KiB before the next group
 * (XG_SWEEP_BYTES; 2-5%: the outputs are written a row at a time). Longer rows
 * (200 x 784, 1000 x 1152: the long pass, 13 and 18 KiB a pair) are unchanged, within
 * 1%. Timed and not kept: the scalar integer pipes as a share of the work (xor + popcnt
 * of 64-bit words for more columns of the same rows, in the same loop body, in
 * assembly): 1, 2, 3 or 4 words per 2 bytes of a (2.1, 4.2, 6.2, 8.3% more outputs)
 * cost 1.6, 1.9, 7 and 12.6% more time than the same loop without them, so at best 2%
 * net before the extra layout of b and epilogue it needs: the loop is bound by its
 * vector pipes and front end, not by its integer units. The byte loop in assembly, without GCC's register moves (no
 * faster; with the two lookups of a byte added to its accumulator one after the other
 * instead of added together first, 7% slower); table offsets precomputed as 16-bit
 * values instead of a movzx and a shift (2% in isolation); 4 x 2 blocks in assembly,
 * every vector register used (no faster per output than 3 x 2); the byte loop unrolled 4
 * times; loops aligned to 64 bytes; the next group's output lines prefetched for
 * writing (2% slower); sweeps within 8 or 12 KiB (slower than 16) or 24 (the same).
 */
#include <stdlib.h>

#include "internal.h"

#if BNN_HAVE_X86_SIMD
#include "x86_intrin.h"

#define P4(v) (((v) & 1) + (((v) >> 1) & 1) + (((v) >> 2) & 1) + (((v) >> 3) & 1))
#define POPX_ROW(a)                                                                      \
  {P4((a) ^ 0), P4((a) ^ 1), P4((a) ^ 2), P4((a) ^ 3), P4((a) ^ 4), P4((a) ^ 5),         \
   P4((a) ^ 6), P4((a) ^ 7), P4((a) ^ 8), P4((a) ^ 9), P4((a) ^ 10), P4((a) ^ 11),       \
   P4((a) ^ 12), P4((a) ^ 13), P4((a) ^ 14), P4((a) ^ 15)}
#define TABLE_PAIR(v) {POPX_ROW((v) & 15), POPX_ROW((v) >> 4)}
#define TABLE_PAIRS16(h)                                                                 \
  TABLE_PAIR(16 * (h) + 0), TABLE_PAIR(16 * (h) + 1), TABLE_PAIR(16 * (h) + 2),          \
  TABLE_PAIR(16 * (h) + 3), TABLE_PAIR(16 * (h) + 4), TABLE_PAIR(16 * (h) + 5),          \
  TABLE_PAIR(16 * (h) + 6), TABLE_PAIR(16 * (h) + 7), TABLE_PAIR(16 * (h) + 8),          \
  TABLE_PAIR(16 * (h) + 9), TABLE_PAIR(16 * (h) + 10), TABLE_PAIR(16 * (h) + 11),        \
  TABLE_PAIR(16 * (h) + 12), TABLE_PAIR(16 * (h) + 13), TABLE_PAIR(16 * (h) + 14),       \
  TABLE_PAIR(16 * (h) + 15)
/* TABLES[v][0][x] = popcount((v & 15) XOR x), TABLES[v][1][x] = popcount((v >> 4) XOR x):
 * for a byte v of a row of a, the lookup tables of its low and its high nibble, 32 bytes
 * apart so that one offset (32 v) addresses both. 8 KiB. */
static const uint8_t TABLES[256][2][16] __attribute__((aligned(64))) = {
    TABLE_PAIRS16(0),  TABLE_PAIRS16(1),  TABLE_PAIRS16(2),  TABLE_PAIRS16(3),
    TABLE_PAIRS16(4),  TABLE_PAIRS16(5),  TABLE_PAIRS16(6),  TABLE_PAIRS16(7),
    TABLE_PAIRS16(8),  TABLE_PAIRS16(9),  TABLE_PAIRS16(10), TABLE_PAIRS16(11),
    TABLE_PAIRS16(12), TABLE_PAIRS16(13), TABLE_PAIRS16(14), TABLE_PAIRS16(15)};

/* 16-bit counters are flushed every XG_SUPER bytes: 264 chunks of 31 bytes. */
#define XG_SUPER (31 * 264)

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8)
#define BNN_UNROLL _Pragma("GCC unroll 16")
#define BNN_UNROLL2 _Pragma("GCC unroll 2")
#else
#define BNN_UNROLL
#define BNN_UNROLL2
#endif

/* ---- the panel ------------------------------------------------------------------ */

static int64_t lanes_of(int impl) { return impl == BNN__IMPL_AVX512 ? 64 : 32; }

int64_t bnn__x86_panel_bytes(int impl, int64_t n, int64_t words) {
  const int64_t w = lanes_of(impl), blocks = n / w + (n % w != 0);
  int64_t t;
  if (bnn__count(&t, 1, blocks, words, 16 * w, 1) != BNN_OK) return -1;
  return t;
}

/* Transposes two sets of 16 rows of 16 bytes at once, one in each 128-bit lane: byte p
 * of out[t] (in a lane) = byte t of row p of that lane's set. Four rounds of unpacks
 * (AVX2 unpacks work within lanes); after them, byte p holds row bitrev4(p), so the rows
 * are taken in bit-reversed order. Every CPU with AVX-512BW has AVX2. */
__attribute__((target("avx2"))) static void transpose16x2(const __m256i *in, __m256i *out) {
  static const int rev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  __m256i x[16], y[16];
  int i;
  BNN_UNROLL for (i = 0; i < 16; ++i) x[i] = in[rev[i]];
  BNN_UNROLL for (i = 0; i < 8; ++i) {
    y[2 * i] = _mm256_unpacklo_epi8(x[i], x[i + 8]);
    y[2 * i + 1] = _mm256_unpackhi_epi8(x[i], x[i + 8]);
  }
  BNN_UNROLL for (i = 0; i < 8; ++i) {
    x[2 * i] = _mm256_unpacklo_epi16(y[i], y[i + 8]);
    x[2 * i + 1] = _mm256_unpackhi_epi16(y[i], y[i + 8]);
  }
  BNN_UNROLL for (i = 0; i < 8; ++i) {
    y[2 * i] = _mm256_unpacklo_epi32(x[i], x[i + 8]);
    y[2 * i + 1] = _mm256_unpackhi_epi32(x[i], x[i + 8]);
  }
  BNN_UNROLL for (i = 0; i < 8; ++i) {
    out[2 * i] = _mm256_unpacklo_epi64(y[i], y[i + 8]);
    out[2 * i + 1] = _mm256_unpackhi_epi64(y[i], y[i + 8]);
  }
}

/* The panel of b: each block of w rows, 32 lanes at a time (lanes [4 i0, 4 i0 + 32):
 * rows (w / 4) s + i for s in 0..3 and i in [i0, i0 + 8)), 16 bytes of the rows at a
 * time: the rows of i in [i0, i0 + 4) in the low 128-bit lane, of [i0 + 4, i0 + 8) in
 * the high one, so that byte t of the transposed rows is one 32-byte vector, and its
 * two nibbles two stores. */
__attribute__((target("avx2"))) void bnn__x86_panel_prep(int impl, const uint64_t *b,
                                                          int64_t n, int64_t words,
                                                          uint8_t *panel) {
  const int64_t w = lanes_of(impl), kb = words * 8, blocks = n / w + (n % w != 0);
  const __m256i low = _mm256_set1_epi8(0x0f);
  int64_t jb, i0, t0;
  int p, t;
  for (jb = 0; jb < blocks; ++jb) {
    uint8_t *block = panel + jb * kb * 2 * w;
    for (i0 = 0; i0 < w / 4; i0 += 8) {
      const uint8_t *rows[32];
      __m256i in[16], out[16];
      for (p = 0; p < 32; ++p) { /* p < 16: low lane; lane byte p % 16 = 4 i + s */
        const int q = p % 16;
        /* rows past n: any row will do, their outputs are never stored */
        const int64_t j = jb * w + (w / 4) * (q % 4) + i0 + 4 * (p / 16) + q / 4;
        rows[p] = (const uint8_t *)(b + (j < n ? j : 0) * words);
      }
      for (t0 = 0; t0 < kb; t0 += 16) {
        const int count = kb - t0 >= 16 ? 16 : 8; /* kb is a multiple of 8 */
        BNN_UNROLL for (p = 0; p < 16; ++p) {
          const __m128i lo = count == 16 ? _mm_loadu_si128((const __m128i *)(rows[p] + t0))
                                         : _mm_loadl_epi64((const __m128i *)(rows[p] + t0));
          const __m128i hi =
              count == 16 ? _mm_loadu_si128((const __m128i *)(rows[p + 16] + t0))
                          : _mm_loadl_epi64((const __m128i *)(rows[p + 16] + t0));
          in[p] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        }
        transpose16x2(in, out);
        for (t = 0; t < count; ++t) {
          uint8_t *dst = block + (t0 + t) * 2 * w + 4 * i0;
          _mm256_store_si256((__m256i *)dst, _mm256_and_si256(out[t], low));
          _mm256_store_si256((__m256i *)(dst + w),
                             _mm256_and_si256(_mm256_srli_epi16(out[t], 4), low));
        }
      }
    }
  }
}

/* Stores the 32-bit counts c of XG_W / 4 rows of b at element off of y as mode says
 * (inside a kernel: uses its mode, kv = kbits in every lane). */
#define XG_OUT(y, off, c)                                                               \
  do {                                                                                  \
    if (mode == BNN__OUT_COUNT) {                                                       \
      XG_STORE32((int32_t *)(y) + (off), (c));                                          \
    } else if (mode == BNN__OUT_I32) {                                                  \
      XG_STORE32((int32_t *)(y) + (off), XG_SUB32(kv, XG_ADD32((c), (c))));             \
    } else {                                                                            \
      XG_STOREPS((float *)(y) + (off), XG_SUB32(kv, XG_ADD32((c), (c))));               \
    }                                                                                   \
  } while (0)

/* Stores the 32-bit values v at element off of y, int32 or (BNN__OUT_F32) float32. */
#define XG_STORE_MODE(y, off, v)                                                        \
  do {                                                                                  \
    if (mode == BNN__OUT_F32) {                                                         \
      XG_STOREPS((float *)(y) + (off), (v));                                            \
    } else {                                                                            \
      XG_STORE32((int32_t *)(y) + (off), (v));                                          \
    }                                                                                   \
  } while (0)

/* ---- AVX-512BW kernels -------------------------------------------------------------- */

#if defined(__clang__)
#define XG_ATTR BNN_AVX512_TARGET("avx512f,avx512bw")
#else /* GCC: keep acc += lookup + lookup as written (fewer register moves in the loop) */
#define XG_ATTR \
  BNN_AVX512_TARGET("avx512f,avx512bw") __attribute__((optimize("no-tree-reassoc")))
#endif
#define XG_W 64
#define XG_V __m512i
#define XG_LOAD(p) _mm512_load_si512((const void *)(p))
#define XG_BCAST16(p) _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(p)))
#define XG_SHUF(t, i) _mm512_shuffle_epi8((t), (i))
#define XG_ADD8(a, b) _mm512_add_epi8((a), (b))
#define XG_ADD16(a, b) _mm512_add_epi16((a), (b))
#define XG_ADD32(a, b) _mm512_add_epi32((a), (b))
#define XG_SUB32(a, b) _mm512_sub_epi32((a), (b))
#define XG_AND(a, b) _mm512_and_si512((a), (b))
#define XG_SRL16(a, n) _mm512_srli_epi16((a), (n))
#define XG_SRL32(a, n) _mm512_srli_epi32((a), (n))
#define XG_SLL32(a, n) _mm512_slli_epi32((a), (n))
#define XG_SET16(v) _mm512_set1_epi16((short)(v))
#define XG_SET32(v) _mm512_set1_epi32((int)(v))
#define XG_ZERO() _mm512_setzero_si512()
#define XG_MINU8(a, b) _mm512_min_epu8((a), (b))
#define XG_HAS_ZERO8(v) (_mm512_cmpeq_epi8_mask((v), _mm512_setzero_si512()) != 0)
#define XG_STORE32(p, v) _mm512_storeu_si512((void *)(p), (v))
#define XG_STOREPS(p, v) _mm512_storeu_ps((p), _mm512_cvtepi32_ps(v))

#define XG_FN kernel512_4x2
#define XG_RI 4
#define XG_RJ 2
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel512_8x1
#define XG_RI 8
#define XG_RJ 1
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel512_1x2
#define XG_RI 1
#define XG_RJ 2
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel512_1x1
#define XG_RI 1
#define XG_RJ 1
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ

#undef XG_ATTR
#undef XG_W
#undef XG_V
#undef XG_LOAD
#undef XG_BCAST16
#undef XG_SHUF
#undef XG_ADD8
#undef XG_ADD16
#undef XG_ADD32
#undef XG_SUB32
#undef XG_AND
#undef XG_SRL16
#undef XG_SRL32
#undef XG_SLL32
#undef XG_SET16
#undef XG_SET32
#undef XG_ZERO
#undef XG_MINU8
#undef XG_HAS_ZERO8
#undef XG_STORE32
#undef XG_STOREPS

/* ---- AVX2 kernels ------------------------------------------------------------------- */

#define XG_ATTR __attribute__((target("avx2")))
#define XG_W 32
#define XG_V __m256i
#define XG_LOAD(p) _mm256_load_si256((const __m256i *)(p))
#define XG_BCAST16(p) _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)(p)))
#define XG_SHUF(t, i) _mm256_shuffle_epi8((t), (i))
#define XG_ADD8(a, b) _mm256_add_epi8((a), (b))
#define XG_ADD16(a, b) _mm256_add_epi16((a), (b))
#define XG_ADD32(a, b) _mm256_add_epi32((a), (b))
#define XG_SUB32(a, b) _mm256_sub_epi32((a), (b))
#define XG_AND(a, b) _mm256_and_si256((a), (b))
#define XG_SRL16(a, n) _mm256_srli_epi16((a), (n))
#define XG_SRL32(a, n) _mm256_srli_epi32((a), (n))
#define XG_SLL32(a, n) _mm256_slli_epi32((a), (n))
#define XG_SET16(v) _mm256_set1_epi16((short)(v))
#define XG_SET32(v) _mm256_set1_epi32((int)(v))
#define XG_ZERO() _mm256_setzero_si256()
#define XG_MINU8(a, b) _mm256_min_epu8((a), (b))
#define XG_HAS_ZERO8(v) \
  (_mm256_movemask_epi8(_mm256_cmpeq_epi8((v), _mm256_setzero_si256())) != 0)
#define XG_STORE32(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define XG_STOREPS(p, v) _mm256_storeu_ps((p), _mm256_cvtepi32_ps(v))

#define XG_FN kernel256_3x2
#define XG_RI 3
#define XG_RJ 2
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel256_8x1
#define XG_RI 8
#define XG_RJ 1
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel256_1x2
#define XG_RI 1
#define XG_RJ 2
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ
#define XG_FN kernel256_1x1
#define XG_RI 1
#define XG_RJ 1
#include "xgemm_kernel.inc"
#undef XG_FN
#undef XG_RI
#undef XG_RJ

/* ---- the driver --------------------------------------------------------------------- */

typedef void (*kernel_fn)(const uint8_t *const *, const uint8_t *, int64_t, int64_t, int,
                          int64_t, void *const *, int64_t, int64_t, int64_t, int64_t);

/* The whole pairs of blocks that one kernel call sweeps for each group of rows of a, as
 * many as fit in this many bytes of panel (L1 holds 32 KiB on the CPUs timed; the rows
 * of a and the outputs pass through the rest): 200 x 256 . 256 x 256 on Zen 3 took 2-5%
 * less time with its 4 pairs (16 KiB) in one sweep than with a sweep per pair, and
 * 200 x 784 . 784 x 256 (13 KiB a pair) 1% more with all 4 at once. */
#define XG_SWEEP_BYTES 16384

/* One kernel call on nr rows of a (rows of them real; the others repeat the last real
 * row) and the panel blocks at pj (cols real columns of full), into y (row stride ldy).
 * Rows longer than XG_SUPER bytes go through the kernel in pieces, whose counts are
 * summed here. */
static void run_block(kernel_fn fn, int nr, int rows, const uint8_t *const *arow,
                      const uint8_t *pj, int64_t pstride, int64_t kb, int mode,
                      int64_t kbits, int32_t *y, int64_t ldy, int64_t cols, int64_t full) {
  int32_t tmp[8][2 * 64];
  const uint8_t *rp[8];
  void *yrow[8];
  int64_t s0, j;
  int r;
  if (kb <= XG_SUPER) {
    const int direct = rows == nr && cols == full;
    for (r = 0; r < nr; ++r) {
      rp[r] = arow[r < rows ? r : rows - 1];
      yrow[r] = direct ? (void *)(y + r * ldy) : (void *)tmp[r];
    }
    fn(rp, pj, pstride, kb, mode, kbits, yrow, 1, 0, 0, 1);
    if (!direct) {
      for (r = 0; r < rows; ++r) memcpy(y + r * ldy, tmp[r], (size_t)cols * sizeof(int32_t));
    }
    return;
  }
  {
    int32_t total[8][2 * 64];
    memset(total, 0, sizeof total);
    for (r = 0; r < nr; ++r) yrow[r] = tmp[r];
    for (s0 = 0; s0 < kb; s0 += XG_SUPER) {
      for (r = 0; r < nr; ++r) rp[r] = arow[r < rows ? r : rows - 1] + s0;
      fn(rp, pj + s0 * (pstride / kb), pstride, kb - s0 < XG_SUPER ? kb - s0 : XG_SUPER,
         BNN__OUT_COUNT, 0, yrow, 1, 0, 0, 1);
      for (r = 0; r < rows; ++r) {
        for (j = 0; j < cols; ++j) total[r][j] += tmp[r][j];
      }
    }
    for (r = 0; r < rows; ++r) {
      for (j = 0; j < cols; ++j) {
        const int64_t c = total[r][j];
        if (mode == BNN__OUT_COUNT) y[r * ldy + j] = (int32_t)c;
        else if (mode == BNN__OUT_I32) y[r * ldy + j] = (int32_t)(kbits - 2 * c);
        else ((float *)y)[r * ldy + j] = (float)(kbits - 2 * c);
      }
    }
  }
}

/* y (m, n), row i at y + i * ldy elements (4 bytes each): see bnn__xplan_run. The panel
 * of b is swept in pairs of blocks (4 x 2 or 3 x 2 kernels; whole pairs several at a
 * time, XG_SWEEP_BYTES) and a last single block (8 x 1); on the last rows of a, blocks
 * with their last row repeated when more than half of it is real work, else one row at
 * a time. */
void bnn__x86_run(int impl, const uint8_t *panel, int64_t n, int64_t words,
                  const uint64_t *a, int64_t m, int mode, int64_t kbits, void *y,
                  int64_t ldy) {
  const int64_t w = lanes_of(impl), kb = words * 8, blocks = n / w + (n % w != 0);
  const int64_t pstride = kb * 2 * w, whole = n / w; /* whole: blocks without rows past n */
  const int wide = impl == BNN__IMPL_AVX512;
  int64_t jb, i, q;
  for (jb = 0; jb < blocks;) {
    const int rj = blocks - jb >= 2 ? 2 : 1, ri = rj == 2 ? (wide ? 4 : 3) : 8;
    const kernel_fn block = wide ? (rj == 2 ? kernel512_4x2 : kernel512_8x1)
                                 : (rj == 2 ? kernel256_3x2 : kernel256_8x1);
    const kernel_fn single = wide ? (rj == 2 ? kernel512_1x2 : kernel512_1x1)
                                  : (rj == 2 ? kernel256_1x2 : kernel256_1x1);
    /* sets of rj blocks from jb on, all of them whole (or one set, whole or not) */
    int64_t sets = rj == 2 ? (whole - jb) / 2 : 1;
    if (sets > XG_SWEEP_BYTES / (rj * pstride)) sets = XG_SWEEP_BYTES / (rj * pstride);
    if (sets < 1) sets = 1;
    i = 0;
    if (kb <= XG_SUPER && jb + rj <= whole && m >= ri) { /* the whole groups: one call */
      const uint8_t *arow[8];
      void *yrow[8];
      int r;
      for (r = 0; r < ri; ++r) {
        arow[r] = (const uint8_t *)(a + r * words);
        yrow[r] = (int32_t *)y + r * ldy + jb * w;
      }
      i = m / ri * ri;
      block(arow, panel + jb * pstride, pstride, kb, mode, kbits, yrow, m / ri,
            ri * words * (int64_t)sizeof(uint64_t), ri * ldy * (int64_t)sizeof(int32_t), sets);
    }
    for (q = 0; q < sets; ++q) { /* the rows left, or every row when a block or a row is partial */
      const int64_t j0 = (jb + q * rj) * w, cols = n - j0 < rj * w ? n - j0 : rj * w;
      int64_t i1;
      for (i1 = i; i1 < m;) {
        const int64_t left = m - i1;
        const int rows = left >= ri ? ri : (2 * left > ri ? (int)left : 1);
        const int nr = rows == 1 ? 1 : ri;
        const uint8_t *arow[8];
        int r;
        for (r = 0; r < rows; ++r) arow[r] = (const uint8_t *)(a + (i1 + r) * words);
        run_block(nr == 1 ? single : block, nr, rows, arow, panel + (jb + q * rj) * pstride,
                  pstride, kb, mode, kbits, (int32_t *)y + i1 * ldy + j0, ldy, cols, rj * w);
        i1 += rows;
      }
    }
    jb += rj * sets;
  }
}

#else
typedef int bnn__no_x86_simd; /* ISO C wants a declaration in every translation unit */
#endif /* BNN_HAVE_X86_SIMD */

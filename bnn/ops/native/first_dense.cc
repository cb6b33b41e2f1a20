// The first binary dense layer of the proposed method on uint8 pixels, as XLA FFI
// handlers for the CPU runtime. Written for memory: XLA's dot needs the layer's
// input and sign(W) in float32 and writes dW in float32 before it is quantized
// (MLP: 306 + 784 + 784 KiB of temporaries); these read the uint8 batch and the
// latent W (float32, float16 or bfloat16) as they are and write the float16 weight
// gradient directly.
//
//   forward:     y[b, n]  = sum_k x(p[b, k]) * sign(W[k, n])                     (float32)
//   weight grad: dW[k, n] = |W[k, n]| <= 1 ? scale * sign(sum_b lut[p[b, k]] * dy[b, n]) : 0
//                (float16; sign(0) = +1, sign(NaN) = -1, as quantizers.sign)
//
// x(p) = x_scale * p + x_offset (bnn.ops.common.to_float); lut[p] is that value as
// to_float computes it. The forward pass sums in integers (exact; see forward); the
// weight gradient in float32 over b in increasing order, 6 x 16 tiles of dW in
// registers. Panels of 16 output columns are shared out on XLA's intra-op threads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BNN_AVX2 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 6;   // tile rows (b in the forward, k in the weight grad)
constexpr int64_t kCols = 16;  // tile columns (n)
constexpr int64_t kGroup = 4 * kCols;  // bytes of signs per group of four k (forward)

// A 16-bit float by its bits: float16 (Inf 0x7c00, 1.0 0x3c00) or bfloat16
// (0x7f80, 0x3f80).
template <uint16_t kInf, uint16_t kOne>
struct Bits16 {
  uint16_t v;
};
using Half = Bits16<0x7c00, 0x3c00>;
using BHalf = Bits16<0x7f80, 0x3f80>;
static_assert(sizeof(Half) == 2 && sizeof(BHalf) == 2, "a Bits16 is its 16 bits");

// sign(w) < 0 in the project's convention: sign(+-0) = +1, sign(NaN) = -1.
inline bool negative(float w) { return !(w >= 0.0f); }
template <uint16_t kInf, uint16_t kOne>
inline bool negative(Bits16<kInf, kOne> h) {
  return h.v != 0x8000 && ((h.v & 0x8000) != 0 || (h.v & 0x7fff) > kInf);
}
// |w| <= 1 (false for NaN).
inline bool within_clip(float w) { return std::fabs(w) <= 1.0f; }
template <uint16_t kInf, uint16_t kOne>
inline bool within_clip(Bits16<kInf, kOne> h) { return (h.v & 0x7fff) <= kOne; }

// Runs fn(0..n-1) on the calling thread and the pool's threads; returns when all
// are done. The caller claims items too, so it never waits for a task that has not
// started; tasks that start late find nothing left and touch only `state`.
void parallel_for(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  const std::function<void(int64_t)>* f = &fn;
  auto work = [state, f] {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->n;) {
      (*f)(i);
      if (state->done.fetch_add(1) + 1 == state->n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == state->n; });
}

// The float32 sums of a rows x cols weight-gradient tile, in order of b.
void grad_sums_any(const uint8_t* x, const float* lut, const float* dy, int64_t b_dim,
                   int64_t k_dim, int64_t n_dim, int64_t k0, int64_t n0, int64_t rows,
                   int64_t cols, float (&acc)[kRows][kCols]) {
  for (int64_t b = 0; b < b_dim; ++b)
    for (int64_t i = 0; i < rows; ++i) {
      float v = lut[x[b * k_dim + k0 + i]];
      for (int64_t j = 0; j < cols; ++j) acc[i][j] += v * dy[b * n_dim + n0 + j];
    }
}

#ifdef BNN_AVX2
// The same for a full 6 x 16 tile in registers (FMA: each product rounded once,
// with its sum).
void grad_sums(const uint8_t* x, const float* lut, const float* dy, int64_t b_dim,
               int64_t k_dim, int64_t n_dim, int64_t k0, int64_t n0,
               float (&out)[kRows][kCols]) {
  __m256 acc[kRows][2];
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t b = 0; b < b_dim; ++b) {
    __m256 d0 = _mm256_loadu_ps(dy + b * n_dim + n0);
    __m256 d1 = _mm256_loadu_ps(dy + b * n_dim + n0 + 8);
    const uint8_t* xb = x + b * k_dim + k0;
#pragma GCC unroll 8
    for (int64_t i = 0; i < kRows; ++i) {
      __m256 v = _mm256_broadcast_ss(lut + xb[i]);
      acc[i][0] = _mm256_fmadd_ps(v, d0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(v, d1, acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int64_t i = 0; i < kRows; ++i) {
    _mm256_storeu_ps(out[i], acc[i][0]);
    _mm256_storeu_ps(out[i] + 8, acc[i][1]);
  }
}
#endif

// The forward pass in integers: with x = x_scale * p + x_offset (p the uint8 pixel),
//   y[b, n] = x_scale * A[b, n] + x_offset * C[n],
//   A[b, n] = sum_k p[b, k] * sign(W[k, n]),   C[n] = sum_k sign(W[k, n]),
// A and C exact int32 sums (|A| <= 255 K), so their order does not matter; y is
// rounded as float(A) * x_scale, then + x_offset * float(C), on every path.
//
// Signs are kept as int8 in panels of kCols columns, four k at a time:
// s[q][j][t] = sign(W[4q + t, n0 + j]) (0 past k_dim or the panel's last column), the
// layout vpmaddubsw reads (4 pixels times 4 signs, summed to one int32 per column).

// Groups q from q0 on, one sign at a time.
template <typename W>
void sign_groups(const W* w, int64_t k_dim, int64_t n_dim, int64_t n0, int64_t cols, int64_t q0,
                 int8_t* s, int32_t* colsum) {
  for (int64_t q = q0; q < (k_dim + 3) / 4; ++q)
    for (int64_t j = 0; j < kCols; ++j)
      for (int64_t t = 0; t < 4; ++t) {
        int64_t k = 4 * q + t;
        int8_t v = (k < k_dim && j < cols) ? (negative(w[k * n_dim + n0 + j]) ? -1 : 1) : 0;
        s[(q * kCols + j) * 4 + t] = v;
        colsum[j] += v;
      }
}

#ifdef BNN_AVX2
// The signs of 16 consecutive weights as 16 int8 (+1 or -1), by the rules of negative().
inline __m128i signs16(__m256i negative_lanes) {  // 16 int16 lanes, -1 where negative
  __m256i s = _mm256_or_si256(negative_lanes, _mm256_set1_epi16(1));
  return _mm_packs_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}
inline __m128i signs16(const float* w) {
  __m256 zero = _mm256_setzero_ps();  // !(w >= 0): negative or NaN
  __m256i lo = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(w), zero, _CMP_NGE_UQ));
  __m256i hi = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(w + 8), zero, _CMP_NGE_UQ));
  return signs16(_mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8));
}
template <uint16_t kInf, uint16_t kOne>
inline __m128i signs16(const Bits16<kInf, kOne>* w) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  __m256i sign_bit = _mm256_andnot_si256(  // set, and not -0
      _mm256_cmpeq_epi16(h, _mm256_set1_epi16(int16_t(0x8000))), _mm256_srai_epi16(h, 15));
  __m256i nan = _mm256_cmpgt_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)),
                                   _mm256_set1_epi16(int16_t(kInf)));
  return signs16(_mm256_or_si256(sign_bit, nan));
}
#endif

// The signs of panel n0 (cols columns) in the forward's layout, and their column sums.
template <typename W>
void sign_panel(const W* w, int64_t k_dim, int64_t n_dim, int64_t n0, int64_t cols, int8_t* s,
                int32_t* colsum) {
  for (int64_t j = 0; j < kCols; ++j) colsum[j] = 0;
  int64_t q = 0;
#ifdef BNN_AVX2
  if (cols == kCols) {
    // Four rows of 16 signs, interleaved to s[q][j][t] (a 4 x 16 byte transpose); the
    // column sums by vpmaddubsw and vpmaddwd with ones, one int32 per column j.
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i sums[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (; 4 * q + 4 <= k_dim; ++q) {
      const W* row = w + 4 * q * n_dim + n0;
      __m128i r0 = signs16(row), r1 = signs16(row + n_dim);
      __m128i r2 = signs16(row + 2 * n_dim), r3 = signs16(row + 3 * n_dim);
      __m128i lo01 = _mm_unpacklo_epi8(r0, r1), lo23 = _mm_unpacklo_epi8(r2, r3);
      __m128i hi01 = _mm_unpackhi_epi8(r0, r1), hi23 = _mm_unpackhi_epi8(r2, r3);
      __m256i half[2] = {
          _mm256_setr_m128i(_mm_unpacklo_epi16(lo01, lo23), _mm_unpackhi_epi16(lo01, lo23)),
          _mm256_setr_m128i(_mm_unpacklo_epi16(hi01, hi23), _mm_unpackhi_epi16(hi01, hi23))};
      for (int h = 0; h < 2; ++h) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + q * kGroup + 32 * h), half[h]);
        sums[h] = _mm256_add_epi32(
            sums[h], _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, half[h]), ones16));
      }
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(colsum), sums[0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(colsum + 8), sums[1]);
  }
#endif
  sign_groups(w, k_dim, n_dim, n0, cols, q, s, colsum);
}

// Four pixels p[k .. k + 3] of a row as one little-endian word (0 past k_dim).
inline uint32_t pixels4(const uint8_t* row, int64_t k, int64_t k_dim) {
  uint32_t v = 0;
  if (k + 4 <= k_dim) {
    std::memcpy(&v, row + k, 4);
  } else {
    for (int64_t t = 0; k + t < k_dim; ++t) v |= uint32_t(row[k + t]) << (8 * t);
  }
  return v;
}

#ifdef BNN_AVX2
// vpmaddubsw turns 4 pixels x 4 signs into two int16 pair sums per column (each at
// most 2 * 255 in magnitude); they are added up as int16 for kBlock groups (at most
// 64 * 510 < 2^15, no overflow), and only then widened to int32 (vpmaddwd): the
// multiply unit, which both use, does half the work.
constexpr int64_t kBlock = 64;

template <int R>
void forward_rows(const uint8_t* x, int64_t k_dim, const int8_t* s, int32_t (&acc)[kRows][kCols]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a[R][2];
  auto step = [&](int64_t q, auto pixels) {
    __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + q * kGroup));
    __m256i s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + q * kGroup + 32));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      __m256i p = _mm256_set1_epi32(int32_t(pixels(i)));
      a[i][0] = _mm256_add_epi16(a[i][0], _mm256_maddubs_epi16(p, s0));
      a[i][1] = _mm256_add_epi16(a[i][1], _mm256_maddubs_epi16(p, s1));
    }
  };
  auto flush = [&] {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
      for (int h = 0; h < 2; ++h) {
        auto* out = reinterpret_cast<__m256i*>(acc[i] + 8 * h);
        _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out),
                                                  _mm256_madd_epi16(a[i][h], ones)));
        a[i][h] = _mm256_setzero_si256();
      }
  };
  for (int i = 0; i < R; ++i) a[i][0] = a[i][1] = _mm256_setzero_si256();
  int64_t full = k_dim / 4;  // groups of four pixels inside the row, read as words
  for (int64_t q0 = 0; q0 < full; q0 += kBlock) {
    for (int64_t q = q0; q < std::min(full, q0 + kBlock); ++q)
      step(q, [&](int i) {
        uint32_t v;
        std::memcpy(&v, x + i * k_dim + 4 * q, 4);
        return v;
      });
    flush();
  }
  if (full * 4 < k_dim) {
    step(full, [&](int i) { return pixels4(x + i * k_dim, 4 * full, k_dim); });
    flush();
  }
}

void forward_sums(const uint8_t* x, int64_t k_dim, const int8_t* s, int64_t rows,
                  int32_t (&acc)[kRows][kCols]) {
  switch (rows) {
    case 6: return forward_rows<6>(x, k_dim, s, acc);
    case 5: return forward_rows<5>(x, k_dim, s, acc);
    case 4: return forward_rows<4>(x, k_dim, s, acc);
    case 3: return forward_rows<3>(x, k_dim, s, acc);
    case 2: return forward_rows<2>(x, k_dim, s, acc);
    default: return forward_rows<1>(x, k_dim, s, acc);
  }
}
#else
void forward_sums(const uint8_t* x, int64_t k_dim, const int8_t* s, int64_t rows,
                  int32_t (&acc)[kRows][kCols]) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = 0; k < k_dim; ++k) {
      int32_t p = x[i * k_dim + k];
      const int8_t* sk = s + (k / 4) * kCols * 4 + k % 4;
      for (int64_t j = 0; j < kCols; ++j) acc[i][j] += p * sk[j * 4];
    }
}
#endif

// Each task takes a panel of kCols output columns and runs every block of kRows
// rows of the batch over its signs.
template <typename W>
void forward(ffi::ThreadPool& pool, const uint8_t* x, const W* w, float* y, int64_t b_dim,
             int64_t k_dim, int64_t n_dim, float x_scale, float x_offset) {
  parallel_for(pool, (n_dim + kCols - 1) / kCols, [&](int64_t panel) {
    int64_t n0 = panel * kCols, cols = std::min(kCols, n_dim - n0);
    std::vector<int8_t> s((k_dim + 3) / 4 * kCols * 4);
    int32_t colsum[kCols];
    sign_panel(w, k_dim, n_dim, n0, cols, s.data(), colsum);
    for (int64_t b0 = 0; b0 < b_dim; b0 += kRows) {
      int64_t rows = std::min(kRows, b_dim - b0);
      int32_t acc[kRows][kCols] = {};
      forward_sums(x + b0 * k_dim, k_dim, s.data(), rows, acc);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          float scaled = float(acc[i][j]) * x_scale;
          y[(b0 + i) * n_dim + n0 + j] = scaled + x_offset * float(colsum[j]);
        }
    }
  });
}

// dW[k0 + i, n0 : n0 + cols] from its float32 sums: +-scale where |W| <= 1, else 0.
template <typename W>
void store_grad_row(const float* acc, const W* w, uint16_t* dw, int64_t cols, uint16_t scale) {
  for (int64_t j = 0; j < cols; ++j)
    dw[j] = within_clip(w[j]) ? (negative(acc[j]) ? uint16_t(scale | 0x8000) : scale) : 0;
}

#ifdef BNN_AVX2
// The same for 16 columns: 16-bit lane masks (sign(acc) = -1; |W| <= 1) combined.
inline __m256i negative16(const float* acc) {
  __m256 zero = _mm256_setzero_ps();
  __m256i lo = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(acc), zero, _CMP_NGE_UQ));
  __m256i hi = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(acc + 8), zero, _CMP_NGE_UQ));
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8);  // lanes in order
}
inline __m256i within_clip16(const float* w) {
  __m256 one = _mm256_set1_ps(1.0f), abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256i lo = _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(w), abs), one, _CMP_LE_OQ));
  __m256i hi = _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(w + 8), abs), one, _CMP_LE_OQ));
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8);
}
template <uint16_t kInf, uint16_t kOne>
inline __m256i within_clip16(const Bits16<kInf, kOne>* w) {
  __m256i h = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)),
                               _mm256_set1_epi16(0x7fff));
  return _mm256_cmpgt_epi16(_mm256_set1_epi16(int16_t(kOne + 1)), h);
}
template <typename W>
void store_grad_row16(const float* acc, const W* w, uint16_t* dw, uint16_t scale) {
  __m256i sign = _mm256_and_si256(negative16(acc), _mm256_set1_epi16(int16_t(0x8000)));
  __m256i value = _mm256_or_si256(_mm256_set1_epi16(int16_t(scale)), sign);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dw),
                      _mm256_and_si256(value, within_clip16(w)));
}
#endif

// Each task takes a panel of kCols output columns, so its kCols columns of dy stay
// in the L1 cache while it runs down the rows of dW.
template <typename W>
void weight_grad(ffi::ThreadPool& pool, const uint8_t* x, const float* lut, const float* dy,
                 const W* w, uint16_t* dw, int64_t b_dim, int64_t k_dim, int64_t n_dim,
                 uint16_t scale) {
  parallel_for(pool, (n_dim + kCols - 1) / kCols, [&](int64_t panel) {
    int64_t n0 = panel * kCols, cols = std::min(kCols, n_dim - n0);
    for (int64_t k0 = 0; k0 < k_dim; k0 += kRows) {
      int64_t rows = std::min(kRows, k_dim - k0);
      float acc[kRows][kCols] = {};
#ifdef BNN_AVX2
      if (rows == kRows && cols == kCols)
        grad_sums(x, lut, dy, b_dim, k_dim, n_dim, k0, n0, acc);
      else
#endif
        grad_sums_any(x, lut, dy, b_dim, k_dim, n_dim, k0, n0, rows, cols, acc);
      for (int64_t i = 0; i < rows; ++i) {
        int64_t at = (k0 + i) * n_dim + n0;
#ifdef BNN_AVX2
        if (cols == kCols) {
          store_grad_row16(acc[i], w + at, dw + at, scale);
          continue;
        }
#endif
        store_grad_row(acc[i], w + at, dw + at, cols, scale);
      }
    }
  });
}

ffi::Error check_shapes(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions lut,
                        ffi::AnyBuffer::Dimensions w) {
  if (x.size() != 2 || w.size() != 2 || lut.size() != 1 || lut[0] != 256 || x[1] != w[0])
    return ffi::Error::InvalidArgument(
        "bnn first dense: expected x (batch, n_in) uint8, lut (256,) float32 and w "
        "(n_in, n_out)");
  return ffi::Error::Success();
}

// Calls f with w's data as float, Half or BHalf.
template <typename F>
ffi::Error with_weights(ffi::AnyBuffer w, F&& f) {
  switch (w.element_type()) {
    case ffi::DataType::F32: f(static_cast<const float*>(w.untyped_data())); break;
    case ffi::DataType::F16: f(static_cast<const Half*>(w.untyped_data())); break;
    case ffi::DataType::BF16: f(static_cast<const BHalf*>(w.untyped_data())); break;
    default:
      return ffi::Error::InvalidArgument(
          "bnn first dense: w must be float32, float16 or bfloat16");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> x, ffi::AnyBuffer w,
                       ffi::ResultBuffer<ffi::F32> y, float x_scale, float x_offset) {
  auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0])
    return ffi::Error::InvalidArgument(
        "bnn first dense: expected x (batch, n_in) uint8 and w (n_in, n_out)");
  int64_t b_dim = xd[0], k_dim = xd[1], n_dim = wd[1];
  return with_weights(w, [&](auto* wp) {
    forward(pool, x.typed_data(), wp, y->typed_data(), b_dim, k_dim, n_dim, x_scale, x_offset);
  });
}

ffi::Error WeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> x,
                          ffi::Buffer<ffi::F32> lut, ffi::Buffer<ffi::F32> dy, ffi::AnyBuffer w,
                          ffi::ResultBuffer<ffi::F16> dw, int32_t scale_bits) {
  if (auto e = check_shapes(x.dimensions(), lut.dimensions(), w.dimensions()); e.failure())
    return e;
  int64_t b_dim = x.dimensions()[0], k_dim = x.dimensions()[1], n_dim = w.dimensions()[1];
  if (dy.dimensions().size() != 2 || dy.dimensions()[0] != b_dim || dy.dimensions()[1] != n_dim)
    return ffi::Error::InvalidArgument("bnn first dense: dy must be (batch, n_out) float32");
  auto* out = static_cast<uint16_t*>(dw->untyped_data());
  return with_weights(w, [&](auto* wd) {
    weight_grad(pool, x.typed_data(), lut.typed_data(), dy.typed_data(), wd, out, b_dim, k_dim,
                n_dim, uint16_t(scale_bits));
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnFirstDenseForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("x_scale")
                                  .Attr<float>("x_offset"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnFirstDenseWeightGrad, WeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F16>>()
                                  .Attr<int32_t>("scale_bits"));

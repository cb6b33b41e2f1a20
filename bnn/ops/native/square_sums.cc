// factored_adam's statistics of a 2-D gradient, as an XLA FFI handler for the CPU:
//
//   over_rows[c] = sum_r (g[r, c]^2 + eps),   over_cols[r] = sum_c (g[r, c]^2 + eps)
//
// in one pass over g (float32, float16 or bfloat16), without the float32 copy of
// g^2 + eps that XLA's reductions read from memory (the MLP's first kernel: 784 KiB,
// twice its float16 gradient). Rows are added in order of r; a row's columns in
// 8 lane sums, combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), then
// the tail in order (the portable loop replays that order: the two paths agree bit
// for bit).
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define BNN_AVX2_F16C 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float half_to_float(uint16_t h) {  // exact, subnormals and NaN included
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int shift = 0;
    while (!(man & 0x400)) {
      man <<= 1;
      ++shift;
    }
    bits = sign | (uint32_t(113 - shift) << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bfloat_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

enum class Kind { kF32, kF16, kBF16 };

template <Kind kind>
inline float load(const void* g, int64_t i) {
  if constexpr (kind == Kind::kF32) return static_cast<const float*>(g)[i];
  if constexpr (kind == Kind::kF16) return half_to_float(static_cast<const uint16_t*>(g)[i]);
  return bfloat_to_float(static_cast<const uint16_t*>(g)[i]);
}

#ifdef BNN_AVX2_F16C
template <Kind kind>
inline __m256 load8(const void* g, int64_t i) {
  if constexpr (kind == Kind::kF32) return _mm256_loadu_ps(static_cast<const float*>(g) + i);
  auto* p = reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(g) + i);
  if constexpr (kind == Kind::kF16) return _mm256_cvtph_ps(_mm_loadu_si128(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
}
#endif

template <Kind kind>
void square_sums(const void* g, int64_t rows, int64_t cols, float eps, float* over_rows,
                 float* over_cols) {
  for (int64_t c = 0; c < cols; ++c) over_rows[c] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * cols;
    float lanes[8] = {};
    int64_t c = 0;
#ifdef BNN_AVX2_F16C
    __m256 e = _mm256_set1_ps(eps), l = _mm256_setzero_ps();
    for (; c + 8 <= cols; c += 8) {
      __m256 v = load8<kind>(g, base + c);
      __m256 sq = _mm256_add_ps(_mm256_mul_ps(v, v), e);
      l = _mm256_add_ps(l, sq);
      _mm256_storeu_ps(over_rows + c, _mm256_add_ps(_mm256_loadu_ps(over_rows + c), sq));
    }
    _mm256_storeu_ps(lanes, l);
#else
    for (; c + 8 <= cols; c += 8)
      for (int j = 0; j < 8; ++j) {
        float v = load<kind>(g, base + c + j), sq = v * v + eps;
        lanes[j] += sq;
        over_rows[c + j] += sq;
      }
#endif
    float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; c < cols; ++c) {
      float v = load<kind>(g, base + c), sq = v * v + eps;
      sum += sq;
      over_rows[c] += sq;
    }
    over_cols[r] = sum;
  }
}

ffi::Error SquareSumsImpl(ffi::AnyBuffer g, ffi::ResultBuffer<ffi::F32> over_rows,
                          ffi::ResultBuffer<ffi::F32> over_cols, float eps) {
  auto dims = g.dimensions();
  if (dims.size() != 2 || over_rows->dimensions().size() != 1 ||
      over_cols->dimensions().size() != 1 || over_rows->dimensions()[0] != dims[1] ||
      over_cols->dimensions()[0] != dims[0])
    return ffi::Error::InvalidArgument(
        "bnn square sums: expected g (rows, cols) and results (cols,), (rows,)");
  float *a = over_rows->typed_data(), *b = over_cols->typed_data();
  switch (g.element_type()) {
    case ffi::DataType::F32:
      square_sums<Kind::kF32>(g.untyped_data(), dims[0], dims[1], eps, a, b);
      break;
    case ffi::DataType::F16:
      square_sums<Kind::kF16>(g.untyped_data(), dims[0], dims[1], eps, a, b);
      break;
    case ffi::DataType::BF16:
      square_sums<Kind::kBF16>(g.untyped_data(), dims[0], dims[1], eps, a, b);
      break;
    default:
      return ffi::Error::InvalidArgument(
          "bnn square sums: g must be float32, float16 or bfloat16");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnSquareSums, SquareSumsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

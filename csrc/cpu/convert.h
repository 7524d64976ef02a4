// fp16 / bf16 <-> fp32 conversions in plain C++ (no F16C, no torch headers), so the
// kernels take half-precision weights on any x86-64 and ctest checks them alone.
// Both directions are branch-free integer/float arithmetic that GCC vectorizes.
#pragma once

#include <bit>
#include <cstdint>

namespace impresslearn::cpu {

// The element types a kernel reads or writes; the bindings map torch dtypes to these.
enum class Dtype : int { f32 = 0, f16 = 1, bf16 = 2 };

// IEEE binary16 -> binary32, exact (every half is a float). Normal numbers: shift
// the exponent/mantissa into place and rescale by 2^-112 to re-bias the exponent;
// subnormals: build 0.5 + m * 2^-24 and subtract 0.5 (Maratyszcza's FP16 method).
inline float half_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits = two_w < (1u << 27) ? std::bit_cast<uint32_t>(denormalized)
                                           : std::bit_cast<uint32_t>(normalized);
  return std::bit_cast<float>(sign | bits);
}

// binary32 -> binary16, round to nearest even, overflow to inf, NaN stays NaN.
// The float multiply-add below lets the FPU do the rounding: adding a power of two
// chosen from the input's exponent pushes the discarded bits out of the mantissa
// under the current (round-to-nearest-even) mode. Needs IEEE float semantics (no
// -ffast-math, which cxx_flags.txt does not set).
inline uint16_t float_to_half(float f) {
  float base = (std::bit_cast<float>(std::bit_cast<uint32_t>(f) & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// binary32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN instead of
// rounding up into inf.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Typed access for kernels templated on the storage type.
template <Dtype D>
struct Element;
template <>
struct Element<Dtype::f32> {
  using type = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
template <>
struct Element<Dtype::f16> {
  using type = uint16_t;
  static float load(uint16_t x) { return half_to_float(x); }
  static uint16_t store(float x) { return float_to_half(x); }
};
template <>
struct Element<Dtype::bf16> {
  using type = uint16_t;
  static float load(uint16_t x) { return bf16_to_float(x); }
  static uint16_t store(float x) { return float_to_bf16(x); }
};

// Spans of a kernel's typed arrays, for the combine drivers (combine.cpp, combine_rows.cpp).
template <Dtype D>
inline void scale_by_weight(const void* weight, int64_t j0, int64_t len, const float* scale, void* out) {
  using T = typename Element<D>::type;
  const T* w = static_cast<const T*>(weight) + j0;
  T* o = static_cast<T*>(out) + j0;
  for (int64_t j = 0; j < len; ++j) o[j] = Element<D>::store(Element<D>::load(w[j]) * scale[j]);
}

// out[j0 + j] = weight[j0 + j] * scale[j] for j < len, in fp32, rounded to the storage type.
inline void scale_by_weight(const void* weight, Dtype dtype, int64_t j0, int64_t len, const float* scale, void* out) {
  switch (dtype) {
    case Dtype::f32: return scale_by_weight<Dtype::f32>(weight, j0, len, scale, out);
    case Dtype::f16: return scale_by_weight<Dtype::f16>(weight, j0, len, scale, out);
    case Dtype::bf16: return scale_by_weight<Dtype::bf16>(weight, j0, len, scale, out);
  }
}

template <Dtype D>
inline void load_as_float(const void* src, int64_t j0, int64_t len, float* dst) {
  using T = typename Element<D>::type;
  const T* s = static_cast<const T*>(src) + j0;
  for (int64_t j = 0; j < len; ++j) dst[j] = Element<D>::load(s[j]);
}

// dst[j] = src[j0 + j] as fp32 for j < len.
inline void load_as_float(const void* src, Dtype dtype, int64_t j0, int64_t len, float* dst) {
  switch (dtype) {
    case Dtype::f32: return load_as_float<Dtype::f32>(src, j0, len, dst);
    case Dtype::f16: return load_as_float<Dtype::f16>(src, j0, len, dst);
    case Dtype::bf16: return load_as_float<Dtype::bf16>(src, j0, len, dst);
  }
}

}  // namespace impresslearn::cpu

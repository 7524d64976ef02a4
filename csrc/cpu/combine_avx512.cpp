// The AVX-512 (F + BW + VL) loops of combine, in the same fp32 order as the AVX2
// loops of combine.cpp, so the results are bit-identical (combine_kernels.h).
//
// Built normally with a target attribute (no -march flag: the .so still runs on any
// x86-64 and only calls these where cpu/isa.cpp found AVX-512). A ctest build
// defines IMPRESSLEARN_EMULATE_AVX512 and compiles this same file against SIMDe's
// portable implementation of the intrinsics, so the lane bookkeeping is tested
// even on processors without AVX-512.
#include "cpu/combine_kernels.h"

#ifdef IMPRESSLEARN_EMULATE_AVX512
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define IMPRESSLEARN_TARGET_AVX512
using Mask16 = simde__mmask16;
#else
// GCC 12's AVX-512 headers pass _mm512_undefined_*() placeholders that it then
// reports as "may be used uninitialized" (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define IMPRESSLEARN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
using Mask16 = __mmask16;
#endif

#include <cstring>

namespace impresslearn::cpu::detail {
namespace {

#ifdef IMPRESSLEARN_EMULATE_AVX512
// The two intrinsics SIMDe 0.7 lacks, written from Intel's definitions.
__m512i widen_bytes(__m128i x) {  // _mm512_cvtepu8_epi32
  alignas(16) uint8_t bytes[16];
  alignas(64) int32_t words[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(bytes), x);
  for (int i = 0; i < 16; ++i) words[i] = bytes[i];
  return _mm512_load_si512(words);
}
Mask16 test_bytes(__m128i x, __m128i bit) {  // _mm_test_epi8_mask: bit i = (x & bit).byte[i] != 0
  const __m128i zero_bytes = _mm_cmpeq_epi8(_mm_and_si128(x, bit), _mm_setzero_si128());
  return Mask16(~_mm_movemask_epi8(zero_bytes) & 0xFFFF);
}
#else
IMPRESSLEARN_TARGET_AVX512 inline __m512i widen_bytes(__m128i x) { return _mm512_cvtepu8_epi32(x); }
IMPRESSLEARN_TARGET_AVX512 inline Mask16 test_bytes(__m128i x, __m128i bit) { return _mm_test_epi8_mask(x, bit); }
#endif

// An 8-entry table repeated to 16 lanes: vpermps on zmm reads the low 4 bits of each
// index, and the repeat makes bit 3 irrelevant, exactly as the ymm lookup ignores it.
IMPRESSLEARN_TARGET_AVX512 inline __m512 table16(const float* t8) {
  alignas(64) float t[16];
  for (int i = 0; i < 16; ++i) t[i] = t8[i & 7];
  return _mm512_load_ps(t);
}

IMPRESSLEARN_TARGET_AVX512 inline __m512 lookup(__m512i x, __m512 t0, __m512 t1, __m512 t2) {
  // (t0 + t1) + t2: plane_value's order
  return _mm512_add_ps(_mm512_add_ps(_mm512_permutexvar_ps(x, t0), _mm512_permutexvar_ps(_mm512_srli_epi32(x, 3), t1)),
                       _mm512_permutexvar_ps(_mm512_srli_epi32(x, 6), t2));
}

IMPRESSLEARN_TARGET_AVX512 inline __m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

}  // namespace

// The AVX2 loop at twice the width: 16 weights per step, two planes per pass.
IMPRESSLEARN_TARGET_AVX512 void accumulate_planes_avx512(const uint8_t* bank, int64_t n, int64_t planes,
                                                         const PlaneTables* tables, int64_t j0, int64_t len,
                                                         float* acc) {
  int64_t g = 0;
  for (; g + 2 <= planes; g += 2) {
    const PlaneTables &ta = tables[g], &tb = tables[g + 1];
    const __m512 a0 = table16(ta.t0), a1 = table16(ta.t1), a2 = table16(ta.t2);
    const __m512 b0 = table16(tb.t0), b1 = table16(tb.t1), b2 = table16(tb.t2);
    const uint8_t* pa = bank + g * n + j0;
    const uint8_t* pb = pa + n;
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
      const __m512 va = lookup(widen_bytes(load16(pa + j)), a0, a1, a2);
      const __m512 vb = lookup(widen_bytes(load16(pb + j)), b0, b1, b2);
      _mm512_storeu_ps(acc + j, _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(acc + j), va), vb));
    }
    for (; j < len; ++j) acc[j] = (acc[j] + plane_value(ta, pa[j])) + plane_value(tb, pb[j]);
  }
  for (; g < planes; ++g) {
    const PlaneTables& ta = tables[g];
    const __m512 a0 = table16(ta.t0), a1 = table16(ta.t1), a2 = table16(ta.t2);
    const uint8_t* pa = bank + g * n + j0;
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
      const __m512 va = lookup(widen_bytes(load16(pa + j)), a0, a1, a2);
      _mm512_storeu_ps(acc + j, _mm512_add_ps(_mm512_loadu_ps(acc + j), va));
    }
    for (; j < len; ++j) acc[j] += plane_value(ta, pa[j]);
  }
}

// Lanes 0-7 carry block a's 8 lane sums, lanes 8-15 block b's; each lane adds the
// same u values in the same order as the AVX2 loop's lane of that block. Bit b of a
// byte becomes a lane of a mask with one vptestmb over 16 bytes (8 of each block),
// and a masked add accumulates: 2 instructions per bit and 16 weights, against the
// AVX2 loop's 3 per bit and 8 weights (shift, blend, add).
namespace {

// Bits as a template argument keeps the accumulators in registers (see bit_sums_avx2).
template <int Bits>
IMPRESSLEARN_TARGET_AVX512 void pair_bit_sums(const uint8_t* pa, const uint8_t* pb, const float* u_pair, double* sums_a,
                                              double* sums_b) {
  __m512 acc[Bits];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m128i bit[Bits];
  for (int b = 0; b < Bits; ++b) bit[b] = _mm_set1_epi8(static_cast<char>(1 << b));
  for (int64_t j = 0; j < kGradBlock; j += 8) {
    const __m128i x = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pa + j)),
                                         _mm_loadl_epi64(reinterpret_cast<const __m128i*>(pb + j)));
    const __m512 uv = _mm512_load_ps(u_pair + 2 * j);
    for (int b = 0; b < Bits; ++b) acc[b] = _mm512_mask_add_ps(acc[b], test_bytes(x, bit[b]), acc[b], uv);
  }
  alignas(64) float lanes[16];
  for (int b = 0; b < Bits; ++b) {
    _mm512_store_ps(lanes, acc[b]);
    double sa = 0.0, sb = 0.0;
    for (int i = 0; i < 8; ++i) sa += lanes[i];
    for (int i = 8; i < 16; ++i) sb += lanes[i];
    sums_a[b] = sa;
    sums_b[b] = sb;
  }
}

}  // namespace

IMPRESSLEARN_TARGET_AVX512 void plane_pair_bit_sums_avx512(const uint8_t* pa, const uint8_t* pb, const float* u_pair,
                                                           int bits, double* sums_a, double* sums_b) {
  switch (bits) {
    case 1: return pair_bit_sums<1>(pa, pb, u_pair, sums_a, sums_b);
    case 2: return pair_bit_sums<2>(pa, pb, u_pair, sums_a, sums_b);
    case 3: return pair_bit_sums<3>(pa, pb, u_pair, sums_a, sums_b);
    case 4: return pair_bit_sums<4>(pa, pb, u_pair, sums_a, sums_b);
    case 5: return pair_bit_sums<5>(pa, pb, u_pair, sums_a, sums_b);
    case 6: return pair_bit_sums<6>(pa, pb, u_pair, sums_a, sums_b);
    case 7: return pair_bit_sums<7>(pa, pb, u_pair, sums_a, sums_b);
    default: return pair_bit_sums<8>(pa, pb, u_pair, sums_a, sums_b);
  }
}

}  // namespace impresslearn::cpu::detail

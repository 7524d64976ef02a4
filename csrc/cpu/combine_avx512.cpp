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
// The intrinsic SIMDe 0.7 lacks, written from Intel's definitions.
Mask16 test_bytes(__m128i x, __m128i bit) {  // _mm_test_epi8_mask: bit i = (x & bit).byte[i] != 0
  const __m128i zero_bytes = _mm_cmpeq_epi8(_mm_and_si128(x, bit), _mm_setzero_si128());
  return Mask16(~_mm_movemask_epi8(zero_bytes) & 0xFFFF);
}
#else
IMPRESSLEARN_TARGET_AVX512 inline Mask16 test_bytes(__m128i x, __m128i bit) { return _mm_test_epi8_mask(x, bit); }
#endif

// One plane's nibble table as 4 byte planes, each repeated to the 4 128-bit lanes.
struct NibbleTable512 {
  __m512i q[4];
};

IMPRESSLEARN_TARGET_AVX512 inline NibbleTable512 nibble_table(const uint8_t (&bytes)[4][16]) {
  NibbleTable512 t;
  for (int q = 0; q < 4; ++q)
    t.q[q] = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes[q])));
  return t;
}

// The AVX2 lookup32 at 64 nibbles: per 128-bit lane L (weights 16L..16L+15), row r
// holds weights 16L + 4r .. 16L + 4r + 3.
IMPRESSLEARN_TARGET_AVX512 inline void lookup64(const NibbleTable512& t, __m512i idx, __m512 (&out)[4]) {
  const __m512i b0 = _mm512_shuffle_epi8(t.q[0], idx), b1 = _mm512_shuffle_epi8(t.q[1], idx);
  const __m512i b2 = _mm512_shuffle_epi8(t.q[2], idx), b3 = _mm512_shuffle_epi8(t.q[3], idx);
  const __m512i w01_lo = _mm512_unpacklo_epi8(b0, b1), w01_hi = _mm512_unpackhi_epi8(b0, b1);
  const __m512i w23_lo = _mm512_unpacklo_epi8(b2, b3), w23_hi = _mm512_unpackhi_epi8(b2, b3);
  out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01_lo, w23_lo));
  out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01_lo, w23_lo));
  out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01_hi, w23_hi));
  out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01_hi, w23_hi));
}

// plane_value of 64 bytes, in unpack order: lo[x & 15] + hi[x >> 4].
IMPRESSLEARN_TARGET_AVX512 inline void plane_values64(const uint8_t* p, const NibbleTable512& lo,
                                                      const NibbleTable512& hi, __m512 (&value)[4]) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i x = _mm512_loadu_si512(p);
  __m512 vlo[4], vhi[4];
  lookup64(lo, _mm512_and_si512(x, nibble), vlo);
  lookup64(hi, _mm512_and_si512(_mm512_srli_epi16(x, 4), nibble), vhi);
  for (int r = 0; r < 4; ++r) value[r] = _mm512_add_ps(vlo[r], vhi[r]);
}

// A 64-weight chunk between natural order (row i = weights 16i..16i+15) and the
// unpack order (row r = lanes holding weights 4r.., 16 + 4r.., 32 + 4r.., 48 + 4r..):
// a 4 x 4 transpose of 128-bit lanes, its own inverse.
IMPRESSLEARN_TARGET_AVX512 inline void transpose_lanes(float* p) {
  const __m512i z0 = _mm512_loadu_si512(p), z1 = _mm512_loadu_si512(p + 16), z2 = _mm512_loadu_si512(p + 32),
                z3 = _mm512_loadu_si512(p + 48);
  const __m512i t0 = _mm512_shuffle_i32x4(z0, z1, 0x44), t1 = _mm512_shuffle_i32x4(z0, z1, 0xEE);
  const __m512i t2 = _mm512_shuffle_i32x4(z2, z3, 0x44), t3 = _mm512_shuffle_i32x4(z2, z3, 0xEE);
  _mm512_storeu_si512(p, _mm512_shuffle_i32x4(t0, t2, 0x88));
  _mm512_storeu_si512(p + 16, _mm512_shuffle_i32x4(t0, t2, 0xDD));
  _mm512_storeu_si512(p + 32, _mm512_shuffle_i32x4(t1, t3, 0x88));
  _mm512_storeu_si512(p + 48, _mm512_shuffle_i32x4(t1, t3, 0xDD));
}

}  // namespace

// The AVX2 loop at twice the width: 64 weights per step, two planes per pass.
IMPRESSLEARN_TARGET_AVX512 void accumulate_planes_avx512(const uint8_t* bank, int64_t n, int64_t planes,
                                                         const PlaneTables* tables, int64_t j0, int64_t len,
                                                         float* acc) {
  const int64_t full = len - len % 64;  // whole 64-weight chunks; the rest is scalar
  for (int64_t j = 0; j < full; j += 64) transpose_lanes(acc + j);
  int64_t g = 0;
  for (; g + 2 <= planes; g += 2) {
    const PlaneTables &ta = tables[g], &tb = tables[g + 1];
    const NibbleTable512 a_lo = nibble_table(ta.lo_bytes), a_hi = nibble_table(ta.hi_bytes);
    const NibbleTable512 b_lo = nibble_table(tb.lo_bytes), b_hi = nibble_table(tb.hi_bytes);
    const uint8_t* pa = bank + g * n + j0;
    const uint8_t* pb = pa + n;
    for (int64_t j = 0; j < full; j += 64) {
      __m512 va[4], vb[4];
      plane_values64(pa + j, a_lo, a_hi, va);
      plane_values64(pb + j, b_lo, b_hi, vb);
      for (int r = 0; r < 4; ++r)
        _mm512_storeu_ps(acc + j + 16 * r,
                         _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(acc + j + 16 * r), va[r]), vb[r]));
    }
    for (int64_t j = full; j < len; ++j) acc[j] = (acc[j] + plane_value(ta, pa[j])) + plane_value(tb, pb[j]);
  }
  for (; g < planes; ++g) {
    const PlaneTables& ta = tables[g];
    const NibbleTable512 a_lo = nibble_table(ta.lo_bytes), a_hi = nibble_table(ta.hi_bytes);
    const uint8_t* pa = bank + g * n + j0;
    for (int64_t j = 0; j < full; j += 64) {
      __m512 va[4];
      plane_values64(pa + j, a_lo, a_hi, va);
      for (int r = 0; r < 4; ++r)
        _mm512_storeu_ps(acc + j + 16 * r, _mm512_add_ps(_mm512_loadu_ps(acc + j + 16 * r), va[r]));
    }
    for (int64_t j = full; j < len; ++j) acc[j] += plane_value(ta, pa[j]);
  }
  for (int64_t j = 0; j < full; j += 64) transpose_lanes(acc + j);
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

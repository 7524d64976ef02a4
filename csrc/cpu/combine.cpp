// combine forward and alpha gradient on byte-plane banks (see combine.h).
//
// Forward. A byte of plane g holds 8 mask bits, so its contribution
// sum_b alpha[8g+b] bit_b(byte) is a table lookup. A 256-entry table per plane
// would need a gather (slow on this EPYC); instead the byte is split 4 + 4 and the
// value is lo[x & 15] + hi[x >> 4], two 16-entry tables. A vector loop holds each
// table as 4 byte planes (byte q of every fp32 entry, 16 bytes each), so 4 vpshufb
// look up 32 nibbles (AVX-512: 64) and 4 byte + 4 word unpacks rebuild the 32 fp32
// entries, in a lane-wise order the accumulator adopts for the plane loop. The
// portable loop uses the 256-entry table T[byte] = plane_value(byte), the same fp32
// sum, so every ISA gives identical bits.
// Why not vpermps: on Zen 1 (the 2-core EPYC, family 23 model 1, AVX2; vpermps there
// is a slow cross-lane op) bench_combine_loops (1 thread, n = 1M, K = 256, thread CPU
// time, clock 2.50 GHz measured, quiet: load 1.0) gives the previous 3 + 3 + 2 split
// with three vpermps per 8 weights 24.2 ms = 1.80 cycles per (weight, plane), this
// loop 13.8 ms = 1.03, a read of the bank alone 3.5 ms = 0.26. This loop is bound by the
// shuffle pipes: 8 vpshufb + 16 unpacks per 32 weights and plane, each 2 uops at 256
// bits on Zen 1's two shuffle pipes, is 0.75 cycle per (weight, plane). The issue's
// target of 70% of the dense reference's bandwidth (13.2 GB/s, n = 4M, K = 256, 2
// threads: 18 ms) leaves 0.71 cycle, under that floor, so it is out of reach on
// Zen 1 for this formulation; the 10x target (33 ms) leaves 1.30. Replacing the word
// unpacks by shifts and vpblendw (ALU pipes) and one plane per accumulator pass
// measured slower in one-off probes (1.17x and 1.06x).
// The per-layer op on AVX2 runs the portable loop instead (accumulate_planes_table:
// scalar look-ups in the 256-entry tables, four planes per pass, ALU and load pipes
// rather than shuffles): 0.90-0.98 cycles per (weight, plane) in bench_combine_loops, and
// at n = 4M, K = 256 on 2 threads (quiet, 3 alternating runs of 25 calls, best) 28.0-28.2
// ms against 29.1-29.7 for the vpshufb loop. The vpshufb loop stays for combine_rows.cpp,
// whose tables change with every channel block (256-entry tables per block would cost more
// than they save), and as the AVX-512 loop's twin.
// Work is split into fixed blocks of the weight axis; a block's fp32 accumulator
// (kFwdBlock floats, 64 KB: in L2, see combine_kernels.h) stays in cache while the
// G planes stream past it, and every weight is
// computed by one thread in one fixed order: results do not depend on threads.
//
// Alpha gradient. grad_alpha[8g+b] = sum_j u_j bit_b(bank[g, j]) with u = grad * W.
// The order of the sums is fixed (combine_kernels.h): per block of 2048 weights, 8
// fp32 lane sums (lane = j % 8, index order), then fp64. Every ISA follows it:
//   AVX2     8 accumulators per plane in registers; u masked by each bit (bit b
//            moved to the sign bit, vblendvps), 8 lanes at a time, no memory
//            dependence: 49 ms (1 thread, n = 4M, K = 256, CPU time, AVX2 EPYC),
//            under a cycle per weight and plane (8 blends + 8 adds + 8 integer adds).
//   AVX-512  two blocks side by side in the halves of a zmm register, each lane the
//            AVX2 loop's lane of its block: a vptestmb gives the mask of one bit for
//            16 weights and a masked add accumulates, with no blend or shift.
//   portable the same 8 lanes in plain C++ (GCC vectorizes it at SSE2).
// Measured and dropped on the AVX2 EPYC: the per-plane 256-bin weighted histogram,
// 230-315 ms (store-to-load forwarding: masks of density 0.1 make byte 0 about 43% of
// all bytes); 8 planes at once with one FMA per byte against a table of 0.0/1.0 rows
// (acc[q] += row[byte] * u_j), 48 ms, no faster and load-bound.
// On Zen 1 (bench_combine_loops, 1 thread, n = 1M, K = 256, clock 2.50 GHz measured by
// a dependent add chain, quiet): the blend loop takes 2.57 cycles per (weight, plane); the same sums with the mask made by vpcmpgtd, vpsrad or
// blend(0, u) and then and + add take 1.3x longer. The 8x target at the dense
// reference's 315 ms (n = 4M, 2 threads) leaves 1.56 cycles per (weight, plane), which
// is the blend form's own floor: 50 uops per 8 weights and plane (8 blends, 8 adds, 8
// integer doublings, each 2 uops at 256 bits) through 4 FP pipes is 1.56 cycles. A
// formulation with another summation order, the 256 subset sums of each 8 weights'
// u looked up by the bits movemask gathers (subset256 in the benchmark), measured
// 1.96 cycles: 1.31x faster, still short of the target, and it would replace the
// AVX-512 masked-add loop on every ISA; left as a candidate.
// Probed later on the same Zen 1 (one-off variants of bench_combine_loops, 1 thread,
// n = 1M, K = 256, cycles per (weight, plane); none shipped besides the table loop above):
//   forward   two planes by vpshufb and two by look-ups in one pass, 1.55 (the look-ups
//             read what the vector stores just wrote); 32 weights by vpshufb and 16 by
//             look-ups, 0.97; vgatherdps, 2.77.
//   gradient  256-bin histograms with 4 or 8 copies (one per weight mod 8), 2.5-2.7 for
//             the updates alone; subset sums of 64-weight sub-blocks kept in L1, 2.0 (the
//             same as subset256: the L2-resident table was not the limit); the blend loop
//             on 128-bit registers, 2.71; two planes sharing each u load, 2.63; FMA with
//             0.0/1.0 factors, 4.5; exact int64 fixed-point subset sums (which any order
//             would reproduce, so the AVX-512 loop could keep its own), 2.0-2.2: the
//             look-ups, not the adds, set that pace.
#include "cpu/combine.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "cpu/combine_kernels.h"

namespace impresslearn::cpu {

namespace detail {

namespace {

// One plane's 16-entry nibble table as 4 byte planes, each repeated to both 128-bit
// lanes (vpshufb looks up within a lane).
struct NibbleTable {
  __m256i q[4];
};

__attribute__((target("avx2"))) inline NibbleTable nibble_table(const uint8_t (&bytes)[4][16]) {
  NibbleTable t;
  for (int q = 0; q < 4; ++q)
    t.q[q] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(bytes[q])));
  return t;
}

// table[idx] for the 32 nibbles of idx (one per byte): 4 vpshufb give byte q of each
// entry, byte then word unpacks put the 4 bytes of each entry together. The unpacks
// work within 128-bit lanes, so the 32 results come out as 4 rows of 8 floats in the
// unpack order (see to_unpack_order).
__attribute__((target("avx2"))) inline void lookup32(const NibbleTable& t, __m256i idx, __m256 (&out)[4]) {
  const __m256i b0 = _mm256_shuffle_epi8(t.q[0], idx), b1 = _mm256_shuffle_epi8(t.q[1], idx);
  const __m256i b2 = _mm256_shuffle_epi8(t.q[2], idx), b3 = _mm256_shuffle_epi8(t.q[3], idx);
  const __m256i w01_lo = _mm256_unpacklo_epi8(b0, b1), w01_hi = _mm256_unpackhi_epi8(b0, b1);
  const __m256i w23_lo = _mm256_unpacklo_epi8(b2, b3), w23_hi = _mm256_unpackhi_epi8(b2, b3);
  out[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01_lo, w23_lo));
  out[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01_lo, w23_lo));
  out[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01_hi, w23_hi));
  out[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01_hi, w23_hi));
}

// plane_value of 32 bytes, in unpack order: lo[x & 15] + hi[x >> 4].
__attribute__((target("avx2"))) inline void plane_values32(const uint8_t* p, const NibbleTable& lo,
                                                          const NibbleTable& hi, __m256 (&value)[4]) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  __m256 vlo[4], vhi[4];
  lookup32(lo, _mm256_and_si256(x, nibble), vlo);
  lookup32(hi, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble), vhi);
  for (int r = 0; r < 4; ++r) value[r] = _mm256_add_ps(vlo[r], vhi[r]);
}

// The unpack order of a 32-weight chunk: rows of 8 floats holding weights
// {0-3, 16-19}, {4-7, 20-23}, {8-11, 24-27}, {12-15, 28-31}. The accumulator takes
// that order for the plane loop and goes back after it. Moved as 4-float pieces with
// 16-byte loads and stores: vperm2f128 is 8 uops on Zen 1.
inline void to_unpack_order(float* p) {
  __m128 piece[8];
  for (int i = 0; i < 8; ++i) piece[i] = _mm_loadu_ps(p + 4 * i);
  for (int r = 0; r < 4; ++r) {
    _mm_storeu_ps(p + 8 * r, piece[r]);
    _mm_storeu_ps(p + 8 * r + 4, piece[r + 4]);
  }
}

inline void to_natural_order(float* p) {
  __m128 piece[8];
  for (int i = 0; i < 8; ++i) piece[i] = _mm_loadu_ps(p + 4 * i);
  for (int r = 0; r < 4; ++r) {
    _mm_storeu_ps(p + 4 * r, piece[2 * r]);
    _mm_storeu_ps(p + 4 * (r + 4), piece[2 * r + 1]);
  }
}

}  // namespace

// Two planes per pass over the accumulator halve its loads and stores.
__attribute__((target("avx2,fma"))) void accumulate_planes_avx2(const uint8_t* bank, int64_t n, int64_t planes,
                                                                 const PlaneTables* tables, int64_t j0, int64_t len,
                                                                 float* acc) {
  const int64_t full = len - len % 32;  // whole 32-weight chunks; the rest is scalar
  for (int64_t j = 0; j < full; j += 32) to_unpack_order(acc + j);
  int64_t g = 0;
  for (; g + 2 <= planes; g += 2) {
    const PlaneTables &ta = tables[g], &tb = tables[g + 1];
    const NibbleTable a_lo = nibble_table(ta.lo_bytes), a_hi = nibble_table(ta.hi_bytes);
    const NibbleTable b_lo = nibble_table(tb.lo_bytes), b_hi = nibble_table(tb.hi_bytes);
    const uint8_t* pa = bank + g * n + j0;
    const uint8_t* pb = pa + n;
    for (int64_t j = 0; j < full; j += 32) {
      __m256 va[4], vb[4];
      plane_values32(pa + j, a_lo, a_hi, va);
      plane_values32(pb + j, b_lo, b_hi, vb);
      // acc + va + vb, left to right: the order of the portable loop
      for (int r = 0; r < 4; ++r)
        _mm256_storeu_ps(acc + j + 8 * r, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(acc + j + 8 * r), va[r]), vb[r]));
    }
    for (int64_t j = full; j < len; ++j) acc[j] = (acc[j] + plane_value(ta, pa[j])) + plane_value(tb, pb[j]);
  }
  for (; g < planes; ++g) {
    const PlaneTables& ta = tables[g];
    const NibbleTable a_lo = nibble_table(ta.lo_bytes), a_hi = nibble_table(ta.hi_bytes);
    const uint8_t* pa = bank + g * n + j0;
    for (int64_t j = 0; j < full; j += 32) {
      __m256 va[4];
      plane_values32(pa + j, a_lo, a_hi, va);
      for (int r = 0; r < 4; ++r)
        _mm256_storeu_ps(acc + j + 8 * r, _mm256_add_ps(_mm256_loadu_ps(acc + j + 8 * r), va[r]));
    }
    for (int64_t j = full; j < len; ++j) acc[j] += plane_value(ta, pa[j]);
  }
  for (int64_t j = 0; j < full; j += 32) to_natural_order(acc + j);
}

std::vector<PlaneTables> plane_tables(const float* alpha, int64_t num_masks, int64_t planes) {
  std::vector<PlaneTables> tables(planes);
  plane_tables(alpha, num_masks, planes, tables.data());
  return tables;
}

void plane_tables(const float* alpha, int64_t num_masks, int64_t planes, PlaneTables* tables) {
  for (int64_t g = 0; g < planes; ++g) {
    for (int half = 0; half < 2; ++half) {
      float* entries = half == 0 ? tables[g].lo : tables[g].hi;
      uint8_t(&bytes)[4][16] = half == 0 ? tables[g].lo_bytes : tables[g].hi_bytes;
      // entries[v] = sum of alpha over v's bits, added from the lowest bit up (masks >= num_masks
      // skipped): entries[v without its top bit] + that bit's alpha is the same fp32 adds in the
      // same order, one add per entry (combine_rows.cpp builds a table set per channel block).
      entries[0] = 0.0f;
      for (int v = 1; v < 16; ++v) {
        const int top = std::bit_width(unsigned(v)) - 1;
        const int64_t k = 8 * g + 4 * half + top;
        entries[v] = k < num_masks ? entries[v ^ (1 << top)] + alpha[k] : entries[v ^ (1 << top)];
      }
      // the byte planes in a loop of their own, which GCC vectorizes (the adds above are a chain)
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < 16; ++v) bytes[q][v] = uint8_t(std::bit_cast<uint32_t>(entries[v]) >> (8 * q));
    }
  }
}

// The 8 lane sums of every bit, then fp64 (combine_kernels.h). "If the bit is set,
// add u" is what the vector loops' blend and masked add do; this loop adds
// u AND (bit ? all ones : 0), which GCC vectorizes (a branch it does not, 3.6x
// slower). Adding +0.0 for a clear bit leaves the lane's bits as they were: a lane
// starts at +0.0 and is never -0.0 (a sum is -0.0 only if both terms are).
void plane_bit_sums_portable(const uint8_t* p, const float* u, int64_t len, int bits, double* sums) {
  float acc[8][8] = {};
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    uint32_t ubits[8], bytes[8];
    std::memcpy(ubits, u + j, sizeof(ubits));
    for (int i = 0; i < 8; ++i) bytes[i] = p[j + i];
    for (int b = 0; b < bits; ++b)
      for (int i = 0; i < 8; ++i) acc[b][i] += std::bit_cast<float>(ubits[i] & (0u - ((bytes[i] >> b) & 1u)));
  }
  for (int b = 0; b < bits; ++b) {
    double s = 0.0;
    for (float v : acc[b]) s += v;
    for (int64_t i = j; i < len; ++i)
      if ((p[i] >> b) & 1) s += u[i];
    sums[b] = s;
  }
}

namespace {

// Bits is a template argument so the accumulators stay in registers; a last plane
// of fewer masks does only its own bits (K = 25: 25 of 32).
template <int Bits>
__attribute__((target("avx2,fma"))) void bit_sums_avx2(const uint8_t* p, const float* u, int64_t len, double* sums) {
  __m256 acc[Bits];
  for (auto& a : acc) a = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + j)));
    const __m256 uv = _mm256_loadu_ps(u + j);
    // Bit Bits-1 moved to the sign bit, which is all vblendvps reads; each doubling
    // (an add, which more ports run than a shift) brings the next lower bit there.
    // acc = blend(acc, acc + u): written as blend(0, u) + acc, GCC turns the blend
    // into vpcmpgtd + vandps, one instruction more per bit.
    __m256i y = _mm256_slli_epi32(x, 32 - Bits);
    acc[Bits - 1] = _mm256_blendv_ps(acc[Bits - 1], _mm256_add_ps(acc[Bits - 1], uv), _mm256_castsi256_ps(y));
    for (int b = Bits - 2; b >= 0; --b) {
      y = _mm256_add_epi32(y, y);
      acc[b] = _mm256_blendv_ps(acc[b], _mm256_add_ps(acc[b], uv), _mm256_castsi256_ps(y));
    }
  }
  alignas(32) float lanes[8];
  for (int b = 0; b < Bits; ++b) {
    _mm256_store_ps(lanes, acc[b]);
    double s = 0.0;
    for (float v : lanes) s += v;
    for (int64_t i = j; i < len; ++i)
      if ((p[i] >> b) & 1) s += u[i];
    sums[b] = s;
  }
}

}  // namespace

void plane_bit_sums_avx2(const uint8_t* p, const float* u, int64_t len, int bits, double* sums) {
  switch (bits) {
    case 1: return bit_sums_avx2<1>(p, u, len, sums);
    case 2: return bit_sums_avx2<2>(p, u, len, sums);
    case 3: return bit_sums_avx2<3>(p, u, len, sums);
    case 4: return bit_sums_avx2<4>(p, u, len, sums);
    case 5: return bit_sums_avx2<5>(p, u, len, sums);
    case 6: return bit_sums_avx2<6>(p, u, len, sums);
    case 7: return bit_sums_avx2<7>(p, u, len, sums);
    default: return bit_sums_avx2<8>(p, u, len, sums);
  }
}

namespace {

// acc[j] += table256[256 g + byte] plane by plane, in plane order: the same fp32 adds as
// the vector loops. G planes per pass over 8 weights: the 8 sums stay in registers
// across the G look-ups, and each 8-byte load of a plane is split by shifts. (The
// previous loop, one plane per pass, took 2.75x as long: n = 1M, K = 256, 1 thread.)
template <int G>
void table_pass(const uint8_t* bank, int64_t n, int64_t g, const float* table256, int64_t j0, int64_t len, float* acc) {
  const uint8_t* p[G];
  const float* t[G];
  for (int i = 0; i < G; ++i) p[i] = bank + (g + i) * n + j0, t[i] = table256 + 256 * (g + i);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    float a[8];
    for (int w = 0; w < 8; ++w) a[w] = acc[j + w];
    for (int i = 0; i < G; ++i) {
      uint64_t x;
      std::memcpy(&x, p[i] + j, 8);  // little-endian: byte w is weight j + w
      for (int w = 0; w < 8; ++w) a[w] += t[i][(x >> (8 * w)) & 0xFF];
    }
    for (int w = 0; w < 8; ++w) acc[j + w] = a[w];
  }
  for (; j < len; ++j)
    for (int i = 0; i < G; ++i) acc[j] += t[i][p[i][j]];
}

}  // namespace

void accumulate_planes_table(const uint8_t* bank, int64_t n, int64_t planes, const float* table256, int64_t j0,
                             int64_t len, float* acc) {
  int64_t g = 0;
  for (; g + 4 <= planes; g += 4) table_pass<4>(bank, n, g, table256, j0, len, acc);
  for (; g < planes; ++g) table_pass<1>(bank, n, g, table256, j0, len, acc);
}

void load_products(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype, int64_t j0,
                   int64_t len, float* u) {
  alignas(64) float w[kGradBlock];
  load_as_float(grad, grad_dtype, j0, len, u);
  load_as_float(weight, weight_dtype, j0, len, w);
  for (int64_t j = 0; j < len; ++j) u[j] *= w[j];
}

void block_bit_sums(const uint8_t* bank, int64_t n, int64_t num_masks, int64_t j0, int64_t len, const float* u,
                    Isa isa, double* out) {
  const int64_t planes = (num_masks + 7) / 8;
  for (int64_t g = 0; g < planes; ++g) {
    const uint8_t* p = bank + g * n + j0;
    const int bits = int(std::min<int64_t>(8, num_masks - 8 * g));
    if (isa == Isa::portable) plane_bit_sums_portable(p, u, len, bits, out + 8 * g);
    else plane_bit_sums_avx2(p, u, len, bits, out + 8 * g);
  }
}

}  // namespace detail

namespace {

using detail::kFwdBlock;
using detail::kGradBlock;
using detail::PlaneTables;
using detail::plane_tables;
using detail::plane_value;

// The gradient's and weight's pointers, bound for load_products.
struct Products {
  const void* grad;
  Dtype grad_dtype;
  const void* weight;
  Dtype weight_dtype;

  void operator()(int64_t j0, int64_t len, float* u) const {
    detail::load_products(grad, grad_dtype, weight, weight_dtype, j0, len, u);
  }
};

// Block blk's products, then the sums of every plane into out[8 * plane + bit].
void block_products_bit_sums(const Products& products, const uint8_t* bank, int64_t n, int64_t num_masks, int64_t blk, Isa isa,
                    double* out) {
  alignas(64) float u[kGradBlock];
  const int64_t j0 = blk * kGradBlock, len = std::min(kGradBlock, n - j0);
  products(j0, len, u);
  detail::block_bit_sums(bank, n, num_masks, j0, len, u, isa, out);
}

// Two full blocks a, a + 1 at once on AVX-512 (combine_kernels.h).
void block_pair_bit_sums(const Products& products, const uint8_t* bank, int64_t n, int64_t num_masks, int64_t a,
                         double* out_a, double* out_b) {
  const int64_t planes = (num_masks + 7) / 8;
  alignas(64) float u[2][kGradBlock];
  alignas(64) float u_pair[2 * kGradBlock];
  products(a * kGradBlock, kGradBlock, u[0]);
  products((a + 1) * kGradBlock, kGradBlock, u[1]);
  for (int64_t q = 0; q < kGradBlock / 8; ++q)
    for (int h = 0; h < 2; ++h) std::memcpy(u_pair + 16 * q + 8 * h, u[h] + 8 * q, 8 * sizeof(float));
  for (int64_t g = 0; g < planes; ++g) {
    const uint8_t* pa = bank + g * n + a * kGradBlock;
    const int bits = int(std::min<int64_t>(8, num_masks - 8 * g));
    detail::plane_pair_bit_sums_avx512(pa, pa + kGradBlock, u_pair, bits, out_a + 8 * g, out_b + 8 * g);
  }
}

}  // namespace

void combine_masks(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                   int64_t n, void* out, int num_threads, Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const std::vector<PlaneTables> tables = plane_tables(alpha, num_masks, planes);
  // The AVX2 ISA runs the table loop too: on Zen 1 it beats the vpshufb loop (see the top;
  // combine_rows.cpp, whose tables change per channel block, keeps the vpshufb one).
  const bool table_loop = isa != Isa::avx512;
  std::vector<float> table256;
  if (table_loop) {
    table256.resize(256 * planes);
    for (int64_t g = 0; g < planes; ++g)
      for (unsigned v = 0; v < 256; ++v) table256[256 * g + v] = plane_value(tables[g], v);
  }
  const int64_t blocks = (n + kFwdBlock - 1) / kFwdBlock;
  // Dynamic: on a shared machine a preempted thread does not hold the others back.
  // One block at a time (each is 16384 weights): a layer of a few blocks still splits
  // over the threads. Each block is computed whole by one thread: the bits do not change.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    alignas(64) float acc[kFwdBlock];
    const int64_t j0 = blk * kFwdBlock, len = std::min(kFwdBlock, n - j0);
    std::fill(acc, acc + len, 0.0f);
    if (table_loop) detail::accumulate_planes_table(bank, n, planes, table256.data(), j0, len, acc);
    else detail::accumulate_planes_avx512(bank, n, planes, tables.data(), j0, len, acc);
    scale_by_weight(weight, dtype, j0, len, acc, out);
  }
}

void combine_masks_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                              const uint8_t* bank, int64_t num_masks, int64_t n, float* grad_alpha, int num_threads,
                              Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const int64_t blocks = (n + kGradBlock - 1) / kGradBlock;
  const int64_t slots = 8 * planes;
  const Products products{grad, grad_dtype, weight, weight_dtype};
  std::vector<double> partial(blocks * slots);  // [block, 8 * plane + bit]
  // AVX-512 takes the full blocks two at a time; a last partial or unpaired block
  // goes to the AVX2 loop, which sums in the same order.
  const int64_t step = isa == Isa::avx512 ? 2 : 1;
  const int64_t tasks = (blocks + step - 1) / step;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 8) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t a = task * step;
    if (step == 2 && (a + 2) * kGradBlock <= n) {
      block_pair_bit_sums(products, bank, n, num_masks, a, partial.data() + a * slots,
                          partial.data() + (a + 1) * slots);
      continue;
    }
    const Isa block_isa = isa == Isa::portable ? Isa::portable : Isa::avx2;
    for (int64_t blk = a; blk < std::min(a + step, blocks); ++blk)
      block_products_bit_sums(products, bank, n, num_masks, blk, block_isa, partial.data() + blk * slots);
  }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (blocks * num_masks > (1 << 16))
  for (int64_t k = 0; k < num_masks; ++k) {
    double s = 0.0;
    for (int64_t blk = 0; blk < blocks; ++blk) s += partial[blk * slots + k];
    grad_alpha[k] = static_cast<float>(s);
  }
}

}  // namespace impresslearn::cpu

// The per-ISA inner loops of combine.cpp, shared with combine_avx512.cpp (the
// AVX-512 loops live in their own file so that a ctest build can compile them on
// SIMDe's emulation and run them on a processor without AVX-512).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/convert.h"
#include "cpu/isa.h"

namespace impresslearn::cpu::detail {

// Forward blocks: an fp32 accumulator of kFwdBlock floats (64 KB, in L2) that every
// plane of the block's weights is added to, a few planes per pass. Longer blocks
// mean longer runs of each plane's bytes: n = 4M, K = 256, 2 threads on Zen 1 (quiet)
// took 31.1 ms with 2048 weights, 29.8 ms with 8192, 29.1-29.6 ms with 16384. The
// per-weight sum does not depend on it (each weight is one thread's, in plane order).
constexpr int64_t kFwdBlock = 16384;
// Alpha-gradient blocks: u = grad * W of kGradBlock floats (8 KB), 8 fp32 lane sums
// per bit within a block, fp64 across blocks. Part of the result's definition (it
// fixes the summation order), identical for every ISA and thread count.
constexpr int64_t kGradBlock = 2048;

// A byte's 8 bits split 4 + 4: each nibble indexes a 16-entry table of partial
// sums. The vector loops hold a table as 4 byte planes (byte q of every entry, 16
// bytes: one vpshufb table) and rebuild the fp32 entries with byte and word
// unpacks; the portable loop reads the 256-entry table T[v] = plane_value(v).
struct alignas(16) PlaneTables {
  float lo[16];               // lo[v] = sum_{b<4} alpha[8g+b]   * bit_b(v), in b order
  float hi[16];               // hi[v] = sum_{b<4} alpha[8g+4+b] * bit_b(v), in b order
  uint8_t lo_bytes[4][16];    // lo_bytes[q][v] = byte q of lo[v] (little-endian)
  uint8_t hi_bytes[4][16];    // hi_bytes[q][v] = byte q of hi[v]
};

// The value every path adds for byte v of plane g: one fp32 addition.
inline float plane_value(const PlaneTables& t, unsigned v) { return t.lo[v & 15] + t.hi[v >> 4]; }

// The tables of planes [0, planes), planes = ceil(num_masks / 8); masks >= num_masks
// count as alpha = 0 (combine.cpp; combine_rows.cpp builds each row block's with it,
// into a buffer of its thread).
void plane_tables(const float* alpha, int64_t num_masks, int64_t planes, PlaneTables* tables);
std::vector<PlaneTables> plane_tables(const float* alpha, int64_t num_masks, int64_t planes);

// acc[0, len) += plane_value(tables[g], bank[g * n + j0 + j]) for every plane g, planes
// taken two at a time as ((acc + value_g) + value_g+1), a last odd plane alone.
void accumulate_planes_avx2(const uint8_t* bank, int64_t n, int64_t planes, const PlaneTables* tables, int64_t j0,
                            int64_t len, float* acc);
void accumulate_planes_avx512(const uint8_t* bank, int64_t n, int64_t planes, const PlaneTables* tables, int64_t j0,
                              int64_t len, float* acc);

// The same sums from 256-entry tables, table256[256 g + v] = plane_value(tables[g], v):
// plain C++ (scalar look-ups), the per-layer forward's loop on the portable and AVX2 ISAs.
void accumulate_planes_table(const uint8_t* bank, int64_t n, int64_t planes, const float* table256, int64_t j0,
                             int64_t len, float* acc);

// sums[b] = sum_j u[j] bit_b(p[j]) for b < bits (1..8: the last plane of a bank may
// hold fewer than 8 masks; sums[b >= bits] are not written), one plane of one block,
// in the canonical order: lane i (0..7) sums, in fp32 and in index order, u[j] over
// the j < len - len % 8 with j % 8 == i and bit b set; then
// sums[b] = ((lane 0 + lane 1) + ... + lane 7) in fp64, plus the tail
// j >= len - len % 8 in index order, in fp64.
void plane_bit_sums_portable(const uint8_t* p, const float* u, int64_t len, int bits, double* sums);
void plane_bit_sums_avx2(const uint8_t* p, const float* u, int64_t len, int bits, double* sums);

// u[0, len) = grad[j0 + j] * weight[j0 + j] in fp32 (len <= kGradBlock): the products
// every alpha gradient sums, per layer (combine.cpp) or per channel block (combine_rows.cpp).
void load_products(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype, int64_t j0,
                   int64_t len, float* u);

// out[8 g + b] = the plane_bit_sums of every plane g of one block [j0, j0 + len) (len <=
// kGradBlock) from its products u: the portable loop, else the AVX2 one (also for the
// AVX-512 ISA, whose pair loop needs two full blocks; the bits are the same).
void block_bit_sums(const uint8_t* bank, int64_t n, int64_t num_masks, int64_t j0, int64_t len, const float* u,
                    Isa isa, double* out);

// The same for two full blocks (kGradBlock weights each) at once, one per half of a
// zmm register: pa, pb their bytes of one plane; u_pair their products interleaved
// in groups of 8 (u_a[0..7], u_b[0..7], u_a[8..15], ...). Bit-identical to
// plane_bit_sums_avx2 on each block.
void plane_pair_bit_sums_avx512(const uint8_t* pa, const uint8_t* pb, const float* u_pair, int bits, double* sums_a,
                                double* sums_b);

}  // namespace impresslearn::cpu::detail

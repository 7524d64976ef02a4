// combine with coefficients per block of output channels (see combine_rows.h).
//
// A driver around combine.cpp's inner loops (combine_kernels.h): the forward runs
// accumulate_planes_* on one chunk of at most kFwdBlock weights of one group, with
// that group's plane tables, so it costs per weight what combine_masks does. A
// chunk builds its group's tables itself (planes x sizeof(PlaneTables), a few KB
// that stay in L1) from alpha transposed once to [group][k]: tables of every group
// built up front were as large as the bank itself for one channel of 256 weights
// (measured 5x the per-layer forward, 1 thread, n = 1M, K = 256; gathering a column
// of the untransposed alpha costs a cache miss per mask). The alpha gradient
// runs plane_bit_sums_* on blocks of kGradBlock weights that start at each group's
// first weight, one partial result per (group, block), then adds each group's blocks
// in order in fp64.
//
// Threads take whole chunks (forward) or whole blocks (gradient), so the bits do not
// depend on the thread count. The AVX-512 ISA runs the AVX2 gradient loop: the
// AVX-512 pair loop needs two full blocks side by side, which groups of one channel
// (a few hundred weights) rarely have; both give the same bits by definition.
#include "cpu/combine_rows.h"

#include <algorithm>
#include <vector>

#include "cpu/combine_kernels.h"

namespace impresslearn::cpu {

namespace {

using detail::kFwdBlock;
using detail::kGradBlock;
using detail::PlaneTables;

// alpha[num_masks, groups] as [groups][num_masks], so a group's coefficients are contiguous;
// in tiles of 64 groups, so reads are sequential and the written rows stay in cache.
std::vector<float> columns_by_group(const float* alpha, int64_t num_masks, int64_t groups) {
  constexpr int64_t kTile = 64;
  std::vector<float> columns(groups * num_masks);
  for (int64_t r0 = 0; r0 < groups; r0 += kTile) {
    const int64_t r1 = std::min(r0 + kTile, groups);
    for (int64_t k = 0; k < num_masks; ++k)
      for (int64_t r = r0; r < r1; ++r) columns[r * num_masks + k] = alpha[k * groups + r];
  }
  return columns;
}

// The portable loop: plane_value, the value the 256-entry table of combine.cpp holds.
void accumulate_planes_portable(const uint8_t* bank, int64_t n, int64_t planes, const PlaneTables* tables, int64_t j0,
                                int64_t len, float* acc) {
  for (int64_t g = 0; g < planes; ++g) {
    const uint8_t* p = bank + g * n + j0;
    for (int64_t j = 0; j < len; ++j) acc[j] += detail::plane_value(tables[g], p[j]);
  }
}

// A (group, chunk) work item: chunk c of group r covers [r * group_len + c * block, ...).
struct Chunk {
  int64_t j0, len;
};

Chunk chunk_of(int64_t item, int64_t chunks_per_group, int64_t block, int64_t group_len, int64_t n) {
  const int64_t r = item / chunks_per_group, c = item % chunks_per_group;
  const int64_t start = r * group_len + c * block;
  const int64_t end = std::min({start + block, (r + 1) * group_len, n});
  return {start, std::max<int64_t>(0, end - start)};
}

}  // namespace

void combine_masks_rows(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                        int64_t n, int64_t group_len, void* out, int num_threads, Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const int64_t groups = num_groups(n, group_len);
  const std::vector<float> columns = columns_by_group(alpha, num_masks, groups);
  const int64_t chunks_per_group = (group_len + kFwdBlock - 1) / kFwdBlock;
  const int64_t items = groups * chunks_per_group;
#pragma omp parallel num_threads(num_threads) if (items > 1)
  {
    std::vector<PlaneTables> tables(planes);  // each chunk's group's tables, rebuilt per chunk
    PlaneTables* t = tables.data();
#pragma omp for schedule(dynamic, 8)
    for (int64_t item = 0; item < items; ++item) {
      const Chunk ch = chunk_of(item, chunks_per_group, kFwdBlock, group_len, n);
      if (ch.len == 0) continue;  // past the end of a last, shorter group
      detail::plane_tables(columns.data() + (item / chunks_per_group) * num_masks, num_masks, planes, t);
      alignas(64) float acc[kFwdBlock];
      std::fill(acc, acc + ch.len, 0.0f);
      switch (isa) {
        case Isa::avx512: detail::accumulate_planes_avx512(bank, n, planes, t, ch.j0, ch.len, acc); break;
        case Isa::avx2: detail::accumulate_planes_avx2(bank, n, planes, t, ch.j0, ch.len, acc); break;
        case Isa::portable: accumulate_planes_portable(bank, n, planes, t, ch.j0, ch.len, acc); break;
      }
      scale_by_weight(weight, dtype, ch.j0, ch.len, acc, out);
    }
  }
}

void combine_masks_rows_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                                   const uint8_t* bank, int64_t num_masks, int64_t n, int64_t group_len,
                                   float* grad_alpha, int num_threads, Isa isa) {
  const int64_t planes = (num_masks + 7) / 8;
  const int64_t slots = 8 * planes;
  const int64_t groups = num_groups(n, group_len);
  const int64_t blocks_per_group = (group_len + kGradBlock - 1) / kGradBlock;
  const int64_t items = groups * blocks_per_group;
  std::vector<double> partial(items * slots, 0.0);  // [group, block, 8 * plane + bit]
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 8) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const Chunk ch = chunk_of(item, blocks_per_group, kGradBlock, group_len, n);
    if (ch.len == 0) continue;  // an empty block adds 0.0: its partial stays zero
    alignas(64) float u[kGradBlock];
    detail::load_products(grad, grad_dtype, weight, weight_dtype, ch.j0, ch.len, u);
    detail::block_bit_sums(bank, n, num_masks, ch.j0, ch.len, u, isa, partial.data() + item * slots);
  }
#pragma omp parallel for num_threads(num_threads) schedule(static) if (groups * num_masks > (1 << 16))
  for (int64_t r = 0; r < groups; ++r) {
    for (int64_t k = 0; k < num_masks; ++k) {
      double s = 0.0;
      for (int64_t b = 0; b < blocks_per_group; ++b) s += partial[(r * blocks_per_group + b) * slots + k];
      grad_alpha[k * groups + r] = static_cast<float>(s);
    }
  }
}

}  // namespace impresslearn::cpu

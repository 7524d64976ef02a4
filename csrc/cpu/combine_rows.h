// combine with coefficients per block of output channels ("rows"): the weight
// W[n] is split into groups of group_len consecutive flat weights (row-major
// [C, L] weights: group_len = channels per block * L), the last group possibly
// shorter, and group r has its own coefficients alpha[:, r]:
//   W_eff[j] = W[j] * sum_k alpha[k, r(j)] bit_k(j),      r(j) = j / group_len
//   grad_alpha[k, r] = sum_{j in group r} grad[j] W[j] bit_k(j)
// bank is the byte-plane bank of combine.h. Same inner loops as combine_masks, so
// a weight's value is computed by the same fp32 operations in the same order: with
// every group given the same coefficients the forward is bit-identical to
// combine_masks. Results are bit-identical for any thread count and ISA.
#pragma once

#include <cstdint>

#include "cpu/convert.h"
#include "cpu/isa.h"

namespace impresslearn::cpu {

// Groups: num_groups(n, group_len) = ceil(n / group_len).
inline int64_t num_groups(int64_t n, int64_t group_len) { return (n + group_len - 1) / group_len; }

// weight[n], out[n] of `dtype`; alpha fp32[num_masks, groups] row-major (alpha[k * groups + r]).
void combine_masks_rows(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                        int64_t n, int64_t group_len, void* out, int num_threads, Isa isa = active_isa());

// grad[n] of grad_dtype, weight[n] of weight_dtype -> grad_alpha fp32[num_masks, groups].
// Order (part of the definition): per group, blocks of kGradBlock weights from the
// group's first weight, each summed as plane_bit_sums does (8 fp32 lanes, then fp64),
// the blocks added in fp64 in order.
void combine_masks_rows_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                                   const uint8_t* bank, int64_t num_masks, int64_t n, int64_t group_len,
                                   float* grad_alpha, int num_threads, Isa isa = active_isa());

}  // namespace impresslearn::cpu

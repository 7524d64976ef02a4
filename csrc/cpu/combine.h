// combine (paper Eq. 1) on byte-plane banks: W_eff[j] = W[j] * sum_k alpha[k] bit_k(j),
// and its alpha gradient grad_alpha[k] = sum_j grad[j] W[j] bit_k(j).
// bank is uint8[G * n], G = ceil(K/8), bit b of bank[g * n + j] is mask 8g+b (DESIGN 2).
// Bits of masks >= K are ignored (treated as alpha = 0), as the reference does.
#pragma once

#include <cstdint>

#include "cpu/convert.h"
#include "cpu/isa.h"

namespace impresslearn::cpu {

// weight[n] and out[n] are of `dtype`; alpha fp32[num_masks]; fp32 accumulation.
// The result is bit-identical for any thread count and either ISA.
void combine_masks(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                   int64_t n, void* out, int num_threads, Isa isa = best_isa());

// grad[n] of grad_dtype, weight[n] of weight_dtype -> grad_alpha fp32[num_masks].
// Deterministic for any thread count (fixed blocks, reduced in block order);
// the two ISAs sum in different orders, so they agree to rounding only.
void combine_masks_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                              const uint8_t* bank, int64_t num_masks, int64_t n, float* grad_alpha, int num_threads,
                              Isa isa = best_isa());

}  // namespace impresslearn::cpu

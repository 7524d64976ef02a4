// combine (paper Eq. 1) on byte-plane banks: W_eff[j] = W[j] * sum_k alpha[k] bit_k(j),
// and its alpha gradient grad_alpha[k] = sum_j grad[j] W[j] bit_k(j).
// bank is uint8[G * n], G = ceil(K/8), bit b of bank[g * n + j] is mask 8g+b (docs/design.md).
// Bits of masks >= K are ignored (treated as alpha = 0), as the reference does.
#pragma once

#include <cstdint>

#include "cpu/convert.h"
#include "cpu/isa.h"

namespace impresslearn::cpu {

// weight[n] and out[n] are of `dtype`; alpha fp32[num_masks]; fp32 accumulation.
// The result is bit-identical for any thread count and any ISA. `isa` must be one
// isa_supported() accepts (active_isa() is).
void combine_masks(const void* weight, Dtype dtype, const uint8_t* bank, const float* alpha, int64_t num_masks,
                   int64_t n, void* out, int num_threads, Isa isa = active_isa());

// grad[n] of grad_dtype, weight[n] of weight_dtype -> grad_alpha fp32[num_masks].
// Bit-identical for any thread count and any ISA: every ISA adds in one fixed
// order (fp32 lane sums within fixed blocks, fp64 across them, in block order).
void combine_masks_alpha_grad(const void* grad, Dtype grad_dtype, const void* weight, Dtype weight_dtype,
                              const uint8_t* bank, int64_t num_masks, int64_t n, float* grad_alpha, int num_threads,
                              Isa isa = active_isa());

}  // namespace impresslearn::cpu

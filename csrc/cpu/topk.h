// topk_mask: the edge-popup mask, exactly k ones at the k largest |scores|, ties
// broken towards the lower flat index (the order of a stable descending sort).
#pragma once

#include <cstdint>

#include "cpu/convert.h"

namespace impresslearn::cpu {

// scores[n] of `dtype` -> mask bool[n]; 1 <= k <= n < 2^32 (the caller checks).
// The mask is identical for any thread count.
void topk_mask(const void* scores, Dtype dtype, int64_t n, int64_t k, bool* mask, int num_threads);

// The same mask written as mask `index` of a byte-plane bank uint8[G * n]: bit
// index % 8 of plane index / 8; the other 7 bits of every byte are left as they were.
void topk_mask_into(const void* scores, Dtype dtype, int64_t n, int64_t k, uint8_t* bank, int64_t index,
                    int num_threads);

}  // namespace impresslearn::cpu

// Radix select of the k-th largest |score|, then one pass that writes the mask.
//
// Key: the bits of a score with the sign bit cleared. For IEEE floats of one width
// the magnitudes order exactly like these unsigned integers (and -0.0 == 0.0).
//
// 1. Radix select, 8 bits a pass from the top (4 passes for fp32, 2 for fp16/bf16):
//    a histogram of the next digit over the keys that match the prefix found so far,
//    then one block of 256 threads (one per digit) scans the counts from the top and
//    the thread whose bin holds the k-th key records its digit. All of it stays on the
//    device (no host sync): the state lives in the workspace.
//    After the last pass: T = the k-th largest key, need = how many keys equal to T
//    belong in the mask (keys > T all do), equal_total = how many keys equal T.
// 2. If equal_total == need (the usual case for real-valued scores) every key >= T
//    is in. Otherwise the first `need` keys equal to T by flat index are: each tile
//    counts its equal keys, one block scans the counts, and the write pass ranks
//    equal keys inside its tile with warp ballots. Steps 2a/2b exit at once in the
//    usual case, so they cost two empty launches.
// 3. The write pass stores bool bytes, or sets one bit of a bank plane (other bits
//    intact; each thread owns its bytes, so no atomics).

#include <cooperative_groups.h>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstring>

#include "topk.h"

namespace impresslearn::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 16;
constexpr int64_t kTile = int64_t(kThreads) * kItems;  // scores per tile of the ranking passes
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;

struct State {
  unsigned long long hist[kBins];
  unsigned long long k_left;       // ones still to place among the keys that match `prefix`
  unsigned long long equal_total;  // keys equal to the threshold (set by the last pass)
  uint32_t prefix;                 // the digits of the threshold found so far
  uint32_t prefix_mask;            // which bits of `prefix` are found
};

template <typename Bits>
__device__ __forceinline__ uint32_t key_at(const Bits* scores, int64_t i) {
  constexpr uint32_t kMagnitude = sizeof(Bits) == 4 ? 0x7fffffffu : 0x7fffu;
  return uint32_t(__ldg(scores + i)) & kMagnitude;
}

__global__ void init_kernel(State* st, int64_t k) {
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) st->hist[b] = 0;
  if (threadIdx.x == 0) {
    st->k_left = static_cast<unsigned long long>(k);
    st->equal_total = 0;
    st->prefix = 0;
    st->prefix_mask = 0;
  }
}

// Adds a key to the block's histogram if it matches the prefix found so far.
//
// Lanes whose keys share a digit add once, together: the keys of real scores pile
// into a few digits (in the first pass nearly all share one exponent byte), and 32
// lanes adding 1 to one shared counter are 32 serialised atomics; grouped, they are
// one. labeled_partition is one match.any instruction (sm_70+) on the active lanes.
__device__ __forceinline__ void count_key(uint32_t* local, uint32_t key, uint32_t prefix, uint32_t prefix_mask,
                                          int shift) {
  namespace cg = cooperative_groups;
  if ((key & prefix_mask) != prefix) return;
  const uint32_t digit = (key >> shift) & (kBins - 1);
  const auto same_digit = cg::labeled_partition(cg::coalesced_threads(), digit);
  if (same_digit.thread_rank() == 0) atomicAdd(&local[digit], same_digit.size());
}

// Histogram of digit (key >> shift) & 0xff over the keys that match the prefix.
// Shared-memory counts are 32-bit: a block sees far fewer than 2^32 scores.
//
// The scores are read 16 bytes per load (4 fp32 or 8 fp16/bf16 keys) when they are
// 16-byte aligned, the rest one key at a time: a pass is a stream over n scores, and
// wide loads keep more bytes in flight per instruction than 2- or 4-byte ones.
template <typename Bits>
__global__ void histogram_kernel(const Bits* scores, int64_t n, State* st, int shift) {
  constexpr int kPerVector = 16 / sizeof(Bits);
  constexpr uint32_t kMagnitude = sizeof(Bits) == 4 ? 0x7fffffffu : 0x7fffu;
  __shared__ uint32_t local[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = st->prefix, prefix_mask = st->prefix_mask;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if (reinterpret_cast<uintptr_t>(scores) % 16 == 0) {  // the same in every thread
    const int64_t vectors = n / kPerVector;
    const auto* wide = reinterpret_cast<const uint4*>(scores);
    for (int64_t v = first; v < vectors; v += stride) {
      const uint4 word = __ldg(wide + v);
      Bits keys[kPerVector];
      memcpy(keys, &word, sizeof(word));
#pragma unroll
      for (int j = 0; j < kPerVector; ++j) count_key(local, uint32_t(keys[j]) & kMagnitude, prefix, prefix_mask, shift);
    }
    scalar_from = vectors * kPerVector;
  }
  for (int64_t i = scalar_from + first; i < n; i += stride)
    count_key(local, key_at(scores, i), prefix, prefix_mask, shift);
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (local[b]) atomicAdd(&st->hist[b], static_cast<unsigned long long>(local[b]));
}

// The digit d with count(digit > d) < k_left <= count(digit >= d), by kBins threads.
//
// Thread t holds the count of digit kBins-1-t, so an exclusive prefix sum over the
// threads (CUB's block scan, in shared memory) is count(digit > d) for each d. A
// single thread walking the 256 bins from the top did a dependent global load per
// bin: up to 256 round trips to L2 per pass, 4 passes per call. Exactly one thread
// sees above < k <= above + count (bins with no keys have above == above + count).
__global__ void __launch_bounds__(kBins) select_digit_kernel(State* st, int shift, bool last) {
  using Scan = cub::BlockScan<unsigned long long, kBins>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int digit = kBins - 1 - int(threadIdx.x);
  const unsigned long long count = st->hist[digit];
  const unsigned long long k = st->k_left;
  unsigned long long above = 0;
  Scan(scan_storage).ExclusiveSum(count, above);
  __syncthreads();  // every thread has read k_left and its bin before one of them writes
  st->hist[digit] = 0;  // ready for the next pass
  if (above < k && k <= above + count) {
    st->k_left = k - above;
    st->prefix |= uint32_t(digit) << shift;
    st->prefix_mask |= uint32_t(kBins - 1) << shift;
    if (last) st->equal_total = count;
  }
}

__device__ __forceinline__ bool take_every_tie(const State* st) { return st->equal_total == st->k_left; }

// Keys equal to the threshold in each tile (only when ties must be ranked).
template <typename Bits>
__global__ void count_ties_kernel(const Bits* scores, int64_t n, const State* st, unsigned long long* tile_counts) {
  if (take_every_tie(st)) return;
  __shared__ unsigned int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  const uint32_t threshold = st->prefix;
  const int64_t start = int64_t(blockIdx.x) * kTile;
  unsigned int mine = 0;
  for (int item = 0; item < kItems; ++item) {
    const int64_t i = start + int64_t(item) * kThreads + threadIdx.x;
    if (i < n && key_at(scores, i) == threshold) ++mine;
  }
  if (mine) atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0) tile_counts[blockIdx.x] = count;
}

// Exclusive scan of the tile counts in place; one block of 1024 threads, each
// owning a contiguous chunk (a few thousand tiles at most for 25M scores).
__global__ void scan_ties_kernel(const State* st, unsigned long long* tile_counts, int64_t tiles) {
  if (take_every_tie(st)) return;
  __shared__ unsigned long long sums[1024];
  const int64_t chunk = (tiles + blockDim.x - 1) / blockDim.x;
  const int64_t begin = min(tiles, chunk * int64_t(threadIdx.x));  // CUDA's device min, not std::
  const int64_t end = min(tiles, begin + chunk);
  unsigned long long sum = 0;
  for (int64_t t = begin; t < end; ++t) sum += tile_counts[t];
  sums[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long run = 0;
    for (int t = 0; t < blockDim.x; ++t) {
      const unsigned long long c = sums[t];
      sums[t] = run;
      run += c;
    }
  }
  __syncthreads();
  unsigned long long run = sums[threadIdx.x];
  for (int64_t t = begin; t < end; ++t) {
    const unsigned long long c = tile_counts[t];
    tile_counts[t] = run;
    run += c;
  }
}

// bit < 0: out[i] = in-mask (0/1); else bit `bit` of out[i] = in-mask.
template <typename Bits>
__global__ void write_mask_kernel(const Bits* scores, int64_t n, const State* st,
                                  const unsigned long long* tile_offsets, uint8_t* out, int bit) {
  __shared__ unsigned int warp_ties[kWarps];
  const uint32_t threshold = st->prefix;
  const unsigned long long need = st->k_left;
  const bool all_ties = take_every_tie(st);  // the same in every thread: the branch below is uniform
  unsigned long long rank = all_ties ? 0 : tile_offsets[blockIdx.x];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t start = int64_t(blockIdx.x) * kTile;
  for (int item = 0; item < kItems; ++item) {
    // item-major, thread-minor: flat order, so ranks follow the flat index
    const int64_t i = start + int64_t(item) * kThreads + threadIdx.x;
    const bool valid = i < n;
    const uint32_t key = valid ? key_at(scores, i) : 0;
    const bool tie = valid && key == threshold;
    bool take = valid && key > threshold;
    if (all_ties) {
      take = take || tie;
    } else {
      const unsigned int ballot = __ballot_sync(0xffffffffu, tie);
      if (lane == 0) warp_ties[warp] = __popc(ballot);
      __syncthreads();
      unsigned long long before = __popc(ballot & ((1u << lane) - 1u)), total = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (w < warp) before += warp_ties[w];
        total += warp_ties[w];
      }
      if (tie) take = rank + before < need;
      rank += total;
      __syncthreads();  // warp_ties is rewritten by the next item
    }
    if (!valid) continue;
    if (bit < 0) {
      out[i] = take ? 1 : 0;
    } else {
      const uint8_t cleared = out[i] & uint8_t(~(1u << bit));
      out[i] = cleared | uint8_t(uint32_t(take) << bit);
    }
  }
}

int64_t num_tiles(int64_t n) { return (n + kTile - 1) / kTile; }

size_t state_bytes() { return (sizeof(State) + 255) / 256 * 256; }

int histogram_blocks(int64_t n) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    sms = 80;
  // a few blocks per SM keep the loads in flight; more only add global atomics
  return int(std::max<int64_t>(1, std::min<int64_t>(num_tiles(n), int64_t(sms) * 4)));
}

template <typename Bits>
cudaError_t launch(const Bits* scores, int64_t n, int64_t k, uint8_t* out, int bit, void* workspace,
                   cudaStream_t stream) {
  auto* st = static_cast<State*>(workspace);
  auto* tile_counts = reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + state_bytes());
  const int64_t tiles = num_tiles(n);
  constexpr int key_bits = sizeof(Bits) == 4 ? 32 : 16;

  init_kernel<<<1, kBins, 0, stream>>>(st, k);
  const int blocks = histogram_blocks(n);
  for (int shift = key_bits - kDigitBits; shift >= 0; shift -= kDigitBits) {
    histogram_kernel<Bits><<<blocks, kThreads, 0, stream>>>(scores, n, st, shift);
    select_digit_kernel<<<1, kBins, 0, stream>>>(st, shift, shift == 0);
  }
  count_ties_kernel<Bits><<<tiles, kThreads, 0, stream>>>(scores, n, st, tile_counts);
  scan_ties_kernel<<<1, 1024, 0, stream>>>(st, tile_counts, tiles);
  write_mask_kernel<Bits><<<tiles, kThreads, 0, stream>>>(scores, n, st, tile_counts, out, bit);
  return cudaGetLastError();
}

cudaError_t dispatch(const void* scores, ScoreBits bits, int64_t n, int64_t k, uint8_t* out, int bit,
                     void* workspace, cudaStream_t stream) {
  if (n < 1 || k < 1 || k > n || bit > 7) return cudaErrorInvalidValue;
  if (bits == ScoreBits::k32)
    return launch(static_cast<const uint32_t*>(scores), n, k, out, bit, workspace, stream);
  return launch(static_cast<const uint16_t*>(scores), n, k, out, bit, workspace, stream);
}

}  // namespace

int compiled_archs(int* out, int max) {
  // nvcc defines __CUDA_ARCH_LIST__ as the virtual architectures of this compilation
  // (TORCH_CUDA_ARCH_LIST), e.g. 800,860,890,900, in host code too
  constexpr int kArchs[] = {__CUDA_ARCH_LIST__};
  constexpr int kCount = int(sizeof(kArchs) / sizeof(kArchs[0]));
  for (int i = 0; i < kCount && i < max; ++i) out[i] = kArchs[i];
  return kCount;
}

cudaError_t kernel_image(int* binary_version, int* ptx_version) {
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, histogram_kernel<uint32_t>);
  if (status != cudaSuccess) {
    cudaGetLastError();  // not a sticky error: clear it so the next CUDA call does not report it
    return status;
  }
  *binary_version = attributes.binaryVersion;
  *ptx_version = attributes.ptxVersion;
  return cudaSuccess;
}

size_t topk_workspace_bytes(int64_t n) { return state_bytes() + size_t(num_tiles(n)) * sizeof(unsigned long long); }

cudaError_t topk_mask(const void* scores, ScoreBits bits, int64_t n, int64_t k, uint8_t* mask, void* workspace,
                      cudaStream_t stream) {
  return dispatch(scores, bits, n, k, mask, -1, workspace, stream);
}

cudaError_t topk_mask_into(const void* scores, ScoreBits bits, int64_t n, int64_t k, uint8_t* plane, int bit,
                           void* workspace, cudaStream_t stream) {
  if (bit < 0) return cudaErrorInvalidValue;
  return dispatch(scores, bits, n, k, plane, bit, workspace, stream);
}

}  // namespace impresslearn::cuda

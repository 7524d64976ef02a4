// topk_mask by radix select (see topk.h for the contract).
//
// Key: |x| as an unsigned integer. Clearing the sign bit of an IEEE float leaves
// bits whose integer order is the order of |x| (for fp32, fp16 and bf16 alike; NaN
// sorts above inf, as in torch.sort; -0.0 and 0.0 get the same key and tie).
//
//   pass 1  thread-private histogram of the high digit of every key (fp32: the top
//           16 of 31 bits, 256 KB of counts per thread, L2-resident; fp16/bf16: the
//           whole 15-bit key). Summed, it names the digit d1 that holds the k-th
//           largest key and how many keys lie above it.
//   pass 2  one fused write pass: every key above d1 is in the mask, every key below
//           is out, and the indices with digit d1 are kept as candidates (in index
//           order, per thread chunk). Uniform scores put about 0.4% of n there.
//           A chunk whose candidates would take more than 1/8 byte per score (many
//           ties: 2^28 equal scores once made 2 GB of indices) keeps none and scans
//           its scores again instead, so the extra memory is at most n / 8 bytes
//           plus the fixed histograms, whatever the scores.
//   select  fp32 only: a histogram of the low 15 bits over the candidates gives the
//           exact threshold key; fp16/bf16 already have it.
//   ties    the keys equal to the threshold are all candidates; each thread knows
//           how many it holds, so a prefix over threads gives each its quota of the
//           (k - #keys above) ties still to take, lowest indices first.
//
// Memory traffic: two reads of the scores and one write of the mask (or one
// read-modify-write of the bank plane), against the O(n log n) sort of the reference.
// Every step depends on the data only, never on how it was split across threads.
#include "cpu/topk.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace impresslearn::cpu {
namespace {

// How scores of one storage type become keys and digits.
template <Dtype D>
struct KeyOf;
template <>
struct KeyOf<Dtype::f32> {
  using raw = uint32_t;
  static constexpr int kLowBits = 15;  // high digit: bits 15-30 (16 bits), low digit: bits 0-14
  static uint32_t key(uint32_t bits) { return bits & 0x7FFFFFFFu; }
};
template <Dtype D>
struct KeyOf16 {
  using raw = uint16_t;
  static constexpr int kLowBits = 0;  // the 15-bit key is the high digit
  static uint32_t key(uint16_t bits) { return bits & 0x7FFFu; }
};
template <>
struct KeyOf<Dtype::f16> : KeyOf16<Dtype::f16> {};
template <>
struct KeyOf<Dtype::bf16> : KeyOf16<Dtype::bf16> {};

struct BoolSink {
  bool* mask;
  void write(int64_t j, bool on) const { mask[j] = on; }
  void set(int64_t j) const { mask[j] = true; }
};

struct PlaneSink {
  uint8_t* plane;
  int bit;
  void write(int64_t j, bool on) const {
    plane[j] = uint8_t((plane[j] & ~(1u << bit)) | (unsigned(on) << bit));
  }
  void set(int64_t j) const { plane[j] = uint8_t(plane[j] | (1u << bit)); }
};

struct ThreadState {
  std::vector<uint32_t> hist;     // high-digit counts of this thread's chunk
  std::vector<uint32_t> low;      // low-digit counts of this thread's candidates
  std::vector<uint32_t> cand;     // indices with the threshold's high digit, ascending (n < 2^32)
  bool rescan = false;            // too many candidates to keep: find them by scanning the chunk
  int64_t ties = 0;               // candidates equal to the threshold key
};

// Finds the digit d of a histogram (scanned from the top) that holds the k-th
// largest; returns d and sets *above to the count strictly above d.
template <class Count>
int64_t digit_of_kth(const std::vector<Count>& hist, int64_t k, int64_t* above) {
  int64_t cum = 0;
  for (int64_t d = int64_t(hist.size()) - 1; d >= 0; --d) {
    if (cum + int64_t(hist[d]) >= k) {
      *above = cum;
      return d;
    }
    cum += int64_t(hist[d]);
  }
  *above = cum;  // unreachable for 1 <= k <= n
  return 0;
}

template <Dtype D, class Sink>
void topk_select(const void* scores_ptr, int64_t n, int64_t k, const Sink& sink, int num_threads) {
  using K = KeyOf<D>;
  using Raw = typename K::raw;
  constexpr int kLowBits = K::kLowBits;
  constexpr int64_t kHighBins = kLowBits ? (int64_t(1) << (31 - kLowBits)) : (int64_t(1) << 15);
  constexpr int64_t kLowBins = int64_t(1) << kLowBits;
  const Raw* scores = static_cast<const Raw*>(scores_ptr);

  std::vector<ThreadState> state;
  std::vector<int64_t> total(kHighBins);
  int64_t d1 = 0, above1 = 0;  // high digit of the threshold, keys with a larger high digit
  uint32_t threshold = 0;      // the k-th largest key
  int64_t ties_needed = 0;     // how many keys equal to the threshold go in the mask

  // Below ~32K scores a second thread costs more than it saves.
  const int team = n >= (int64_t(1) << 15) ? std::max(1, num_threads) : 1;
#pragma omp parallel num_threads(team)
  {
    const int t = omp_get_thread_num(), threads = omp_get_num_threads();
#pragma omp single
    state.resize(threads);
    ThreadState& me = state[t];
    const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;

    // pass 1: histogram of the high digit
    me.hist.assign(kHighBins, 0);
    uint32_t* hist = me.hist.data();
    for (int64_t j = lo; j < hi; ++j) ++hist[K::key(scores[j]) >> kLowBits];
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t d = 0; d < kHighBins; ++d) {
      int64_t s = 0;
      for (int u = 0; u < threads; ++u) s += state[u].hist[d];
      total[d] = s;
    }
#pragma omp single
    d1 = digit_of_kth(total, k, &above1);

    // pass 2: decide every key off the threshold digit; keep the others as candidates
    // (4 bytes each) while they take at most 1/8 byte per score of the chunk
    const uint32_t digit = uint32_t(d1);
    const int64_t count = me.hist[d1];
    me.rescan = count > (hi - lo) / 32;
    if (me.rescan) {
      for (int64_t j = lo; j < hi; ++j) sink.write(j, (K::key(scores[j]) >> kLowBits) > digit);
    } else {
      me.cand.resize(count + 1);  // +1: the branch-free append writes one slot ahead
      uint32_t* cand = me.cand.data();
      int64_t kept = 0;
      for (int64_t j = lo; j < hi; ++j) {
        const uint32_t d = K::key(scores[j]) >> kLowBits;
        sink.write(j, d > digit);
        cand[kept] = uint32_t(j);
        kept += d == digit;
      }
      me.cand.resize(kept);
    }
    // visits this chunk's candidates in index order, kept or found again
    auto for_each_candidate = [&](auto&& visit) {
      if (!me.rescan) {
        for (uint32_t j : me.cand) visit(int64_t(j));
        return;
      }
      for (int64_t j = lo; j < hi; ++j)
        if ((K::key(scores[j]) >> kLowBits) == digit) visit(j);
    };

    if constexpr (kLowBits > 0) {
      me.low.assign(kLowBins, 0);
      uint32_t* low = me.low.data();
      for_each_candidate([&](int64_t j) { ++low[K::key(scores[j]) & (kLowBins - 1)]; });
#pragma omp barrier
#pragma omp single
      {
        std::vector<int64_t> low_total(kLowBins, 0);
        for (const ThreadState& s : state)
          for (int64_t d = 0; d < kLowBins; ++d) low_total[d] += s.low[d];
        int64_t above2 = 0;
        const int64_t d2 = digit_of_kth(low_total, k - above1, &above2);
        threshold = uint32_t((d1 << kLowBits) | d2);
        ties_needed = k - above1 - above2;
      }
      me.ties = me.low[threshold & (kLowBins - 1)];
    } else {
#pragma omp single
      {
        threshold = uint32_t(d1);
        ties_needed = k - above1;
      }
      me.ties = count;
    }
#pragma omp barrier
    // ties: this thread's quota is what the lower-index threads leave over
    int64_t before = 0;
    for (int u = 0; u < t; ++u) before += state[u].ties;
    int64_t quota = std::clamp<int64_t>(ties_needed - before, 0, me.ties);
    for_each_candidate([&](int64_t j) {
      const uint32_t key = K::key(scores[j]);
      if (key > threshold) {
        sink.set(j);
      } else if (key == threshold && quota > 0) {
        sink.set(j);
        --quota;
      }
    });
  }
}

template <class Sink>
void topk_dispatch(const void* scores, Dtype dtype, int64_t n, int64_t k, const Sink& sink, int num_threads) {
  switch (dtype) {
    case Dtype::f32: return topk_select<Dtype::f32>(scores, n, k, sink, num_threads);
    case Dtype::f16: return topk_select<Dtype::f16>(scores, n, k, sink, num_threads);
    case Dtype::bf16: return topk_select<Dtype::bf16>(scores, n, k, sink, num_threads);
  }
}

}  // namespace

void topk_mask(const void* scores, Dtype dtype, int64_t n, int64_t k, bool* mask, int num_threads) {
  topk_dispatch(scores, dtype, n, k, BoolSink{mask}, num_threads);
}

void topk_mask_into(const void* scores, Dtype dtype, int64_t n, int64_t k, uint8_t* bank, int64_t index,
                    int num_threads) {
  topk_dispatch(scores, dtype, n, k, PlaneSink{bank + (index / 8) * n, int(index % 8)}, num_threads);
}

}  // namespace impresslearn::cpu

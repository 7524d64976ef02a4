// topk_mask on the GPU: the k largest |scores| as a mask, by radix select.
//
// Plain CUDA on raw pointers (no torch headers): this file and topk.cu compile in
// seconds; csrc/cuda/bindings.cpp wraps them for torch.library.
//
// Result: exactly k ones; among equal |scores| the lower flat indices win, which is
// what a stable descending sort gives (impresslearn/ops/topk.py, the reference).
// -0.0 and 0.0 tie. Scores must be finite.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace impresslearn::cuda {

// Width of one score: fp16 and bf16 are both 16-bit sign-magnitude, so with the
// sign bit cleared their bits order like the magnitudes; fp32 likewise in 32 bits.
enum class ScoreBits { k16, k32 };

// Bytes of device scratch memory the launchers below need for n scores.
size_t topk_workspace_bytes(int64_t n);

// mask[j] = 1 if score j is among the k largest |scores|, else 0 (one byte per score,
// the layout of a bool tensor). 1 <= k <= n.
cudaError_t topk_mask(const void* scores, ScoreBits bits, int64_t n, int64_t k, uint8_t* mask,
                      void* workspace, cudaStream_t stream);

// The same mask, written as bit `bit` (0..7) of each byte of `plane` (the byte plane
// index / 8 of a bank, n bytes); the other seven bits are left as they are.
cudaError_t topk_mask_into(const void* scores, ScoreBits bits, int64_t n, int64_t k, uint8_t* plane, int bit,
                           void* workspace, cudaStream_t stream);

// The compute capabilities this build holds code for (e.g. 800, 860, 890, 900: nvcc's
// __CUDA_ARCH_LIST__): writes at most `max` to `out`, returns how many there are.
int compiled_archs(int* out, int max);

// Whether the kernels above can run on the current device: cudaSuccess and the
// versions of the image the driver chose (e.g. 80 for sm_80 code on an sm_86 card,
// ptx 90 for PTX JIT-compiled for a newer one), or the error loading them gives
// (cudaErrorNoKernelImageForDevice when the build holds nothing this device runs).
cudaError_t kernel_image(int* binary_version, int* ptx_version);

}  // namespace impresslearn::cuda

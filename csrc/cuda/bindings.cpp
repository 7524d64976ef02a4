// Registers the CUDA kernels of csrc/cuda with torch.library as impresslearn::<op>_cuda.
// Compiled only in CUDA builds (setup.py globs csrc/cuda/*.cpp with the .cu files).
// The Python op layer (impresslearn/ops/_checks.py) has checked shapes, dtypes,
// devices and ranges; the checks here only keep memory safe.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "topk.h"

namespace {

namespace kernels = impresslearn::cuda;

kernels::ScoreBits score_bits(const at::Tensor& scores) {
  switch (scores.scalar_type()) {
    case at::kFloat:
      return kernels::ScoreBits::k32;
    case at::kHalf:
    case at::kBFloat16:
      return kernels::ScoreBits::k16;
    default:
      TORCH_CHECK(false, "impresslearn: topk_mask_cuda takes float32, float16 or bfloat16 scores, got ",
                  scores.scalar_type());
  }
}

void check_scores(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.is_cuda() && scores.is_contiguous(), "impresslearn: topk_mask_cuda takes contiguous CUDA scores");
  TORCH_CHECK(k >= 1 && k <= scores.numel(), "impresslearn: k must be in [1, ", scores.numel(), "], got ", k);
}

// Scratch memory from PyTorch's caching allocator: no cudaMalloc per call.
at::Tensor workspace(const at::Tensor& scores) {
  const auto bytes = static_cast<int64_t>(kernels::topk_workspace_bytes(scores.numel()));
  return at::empty({bytes}, scores.options().dtype(at::kByte));
}

at::Tensor topk_mask_cuda(const at::Tensor& scores, int64_t k) {
  check_scores(scores, k);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  auto scratch = workspace(scores);
  C10_CUDA_CHECK(kernels::topk_mask(scores.data_ptr(), score_bits(scores), scores.numel(), k,
                                    reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()), scratch.data_ptr(),
                                    c10::cuda::getCurrentCUDAStream()));
  return mask;
}

void topk_mask_into_cuda(at::Tensor& bank, int64_t index, const at::Tensor& scores, int64_t k) {
  check_scores(scores, k);
  TORCH_CHECK(bank.is_cuda() && bank.dim() == 2 && bank.scalar_type() == at::kByte && bank.is_contiguous() &&
                  bank.size(1) == scores.numel() && bank.device() == scores.device(),
              "impresslearn: topk_mask_into_cuda takes a contiguous uint8[G, n] bank on the scores' device");
  TORCH_CHECK(index >= 0 && index < 8 * bank.size(0), "impresslearn: mask index ", index, " out of range");
  const c10::cuda::CUDAGuard guard(scores.device());
  auto scratch = workspace(scores);
  uint8_t* plane = bank.data_ptr<uint8_t>() + (index / 8) * bank.size(1);
  C10_CUDA_CHECK(kernels::topk_mask_into(scores.data_ptr(), score_bits(scores), scores.numel(), k, plane,
                                         static_cast<int>(index % 8), scratch.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream()));
}

// The compute capabilities the CUDA kernels were compiled for, as 10 * major + minor.
std::vector<int64_t> cuda_archs() {
  int archs[64];
  const int count = std::min(kernels::compiled_archs(archs, 64), 64);
  std::vector<int64_t> out;
  for (int i = 0; i < count; ++i) out.push_back(archs[i] / 10);
  return out;
}

// Empty if the CUDA kernels can run on `device`, else why not: a build without code
// for the device fails at the first launch with "no kernel image is available".
std::string cuda_kernel_reason(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  int binary = 0, ptx = 0;
  const cudaError_t status = kernels::kernel_image(&binary, &ptx);
  if (status == cudaSuccess) return "";
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, static_cast<int>(device));
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, static_cast<int>(device));
  std::string built;
  for (const int64_t arch : cuda_archs()) built += (built.empty() ? "" : ", ") + std::to_string(arch / 10) + "." +
                                                  std::to_string(arch % 10);
  return "impresslearn._C was built for compute capabilities " + built + " (TORCH_CUDA_ARCH_LIST), which cuda:" +
         std::to_string(device) + " (" + std::to_string(major) + "." + std::to_string(minor) +
         ") cannot run: " + cudaGetErrorString(status) + "; rebuild with TORCH_CUDA_ARCH_LIST including " +
         std::to_string(major) + "." + std::to_string(minor);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(impresslearn, m) {
  m.def("topk_mask_cuda(Tensor scores, int k) -> Tensor");
  m.def("topk_mask_into_cuda(Tensor(a!) bank, int index, Tensor scores, int k) -> ()");
  // no tensors: registered for every dispatch key (CompositeImplicit), callable without a GPU
  m.def("cuda_archs() -> int[]", &cuda_archs);
  m.def("cuda_kernel_reason(int device) -> str", &cuda_kernel_reason);
}

TORCH_LIBRARY_IMPL(impresslearn, CUDA, m) {
  m.impl("topk_mask_cuda", &topk_mask_cuda);
  m.impl("topk_mask_into_cuda", &topk_mask_into_cuda);
}

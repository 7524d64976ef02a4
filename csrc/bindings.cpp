// Registers the kernels of csrc/cpu and csrc/cuda with torch.library as
// impresslearn::<op>_cpp and impresslearn::<op>_cuda. The only file that includes
// torch headers on the CPU side: it checks nothing the Python op layer has not
// already checked (impresslearn/ops/_checks.py) beyond what keeps memory safe.

#include <torch/extension.h>

#ifdef WITH_CPU
#include "cpu/bank.h"
#endif

namespace {

#ifdef WITH_CPU
namespace cpu = impresslearn::cpu;

void expect(bool ok, const char* what) { TORCH_CHECK(ok, "impresslearn: ", what); }

at::Tensor pack_masks_cpp(const at::Tensor& masks) {
  expect(masks.dim() == 2 && masks.scalar_type() == at::kBool && masks.is_contiguous() && masks.is_cpu(),
         "pack_masks_cpp takes a contiguous CPU bool[K, n]");
  const int64_t k = masks.size(0), n = masks.size(1);
  auto bank = at::empty({(k + 7) / 8, n}, masks.options().dtype(at::kByte));
  cpu::pack_masks(masks.data_ptr<bool>(), k, n, bank.data_ptr<uint8_t>());
  return bank;
}

at::Tensor unpack_masks_cpp(const at::Tensor& bank, int64_t num_masks) {
  expect(bank.dim() == 2 && bank.scalar_type() == at::kByte && bank.is_contiguous() && bank.is_cpu(),
         "unpack_masks_cpp takes a contiguous CPU uint8[G, n]");
  expect(num_masks >= 1 && (num_masks + 7) / 8 == bank.size(0), "num_masks does not match the bank's planes");
  auto masks = at::empty({num_masks, bank.size(1)}, bank.options().dtype(at::kBool));
  cpu::unpack_masks(bank.data_ptr<uint8_t>(), num_masks, bank.size(1), masks.data_ptr<bool>());
  return masks;
}

void set_mask_cpp(at::Tensor& bank, int64_t index, const at::Tensor& mask) {
  expect(bank.dim() == 2 && bank.scalar_type() == at::kByte && bank.is_contiguous() && bank.is_cpu(),
         "set_mask_cpp takes a contiguous CPU uint8[G, n]");
  expect(mask.dim() == 1 && mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.size(0) == bank.size(1),
         "set_mask_cpp takes a contiguous bool[n] mask");
  expect(index >= 0 && index < 8 * bank.size(0), "mask index out of range");
  cpu::set_mask(bank.data_ptr<uint8_t>(), bank.size(1), index, mask.data_ptr<bool>());
}
#endif

}  // namespace

TORCH_LIBRARY(impresslearn, m) {
#ifdef WITH_CPU
  m.def("pack_masks_cpp(Tensor masks) -> Tensor");
  m.def("unpack_masks_cpp(Tensor bank, int num_masks) -> Tensor");
  m.def("set_mask_cpp(Tensor(a!) bank, int index, Tensor mask) -> ()");
#endif
}

#ifdef WITH_CPU
TORCH_LIBRARY_IMPL(impresslearn, CPU, m) {
  m.impl("pack_masks_cpp", &pack_masks_cpp);
  m.impl("unpack_masks_cpp", &unpack_masks_cpp);
  m.impl("set_mask_cpp", &set_mask_cpp);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CPU
  m.attr("WITH_CPU") = true;
#else
  m.attr("WITH_CPU") = false;
#endif
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}

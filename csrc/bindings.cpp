// Registers the kernels of csrc/cpu and csrc/cuda with torch.library as
// impresslearn::<op>_cpp and impresslearn::<op>_cuda. The only file that includes
// torch headers on the CPU side: it checks nothing the Python op layer has not
// already checked (impresslearn/ops/_checks.py) beyond what keeps memory safe.

#include <torch/extension.h>

#include <utility>

#ifdef WITH_CPU
#include "cpu/bank.h"
#include "cpu/combine.h"
#include "cpu/combine_rows.h"
#include "cpu/isa.h"
#include "cpu/topk.h"
#endif

namespace {

#ifdef WITH_CPU
namespace cpu = impresslearn::cpu;

void expect(bool ok, const char* what) { TORCH_CHECK(ok, "impresslearn: ", what); }

// The kernels' element type for a torch dtype; fp32, fp16 and bf16 only.
cpu::Dtype element_type(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return cpu::Dtype::f32;
    case at::kHalf: return cpu::Dtype::f16;
    case at::kBFloat16: return cpu::Dtype::bf16;
    default: TORCH_CHECK(false, "impresslearn: ", op, " takes float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

bool is_flat_cpu(const at::Tensor& t) { return t.dim() == 1 && t.is_contiguous() && t.is_cpu(); }

bool is_bank_for(const at::Tensor& bank, int64_t n) {
  return bank.dim() == 2 && bank.scalar_type() == at::kByte && bank.is_contiguous() && bank.is_cpu() &&
         bank.size(1) == n;
}

// The kernels run their own OpenMP regions; torch.set_num_threads must govern them too.
int threads() { return static_cast<int>(at::get_num_threads()); }

// The ISA the kernels run (IMPRESSLEARN_CPU_ISA or the widest this processor has);
// a value that names no ISA, or one this processor lacks, is a ValueError naming it.
cpu::Isa kernel_isa() {
  try {
    return cpu::active_isa();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "impresslearn: ", e.what());
  }
  return cpu::Isa::portable;  // unreachable: TORCH_CHECK_VALUE(false, ...) throws
}

at::Tensor combine_masks_cpp(const at::Tensor& weight, const at::Tensor& bank, const at::Tensor& alpha) {
  expect(is_flat_cpu(weight), "combine_masks_cpp takes a contiguous 1-D CPU weight");
  const cpu::Dtype dtype = element_type(weight, "combine_masks_cpp");
  const int64_t n = weight.size(0);
  expect(is_bank_for(bank, n), "combine_masks_cpp takes a contiguous CPU uint8[G, n] bank covering the weight");
  expect(is_flat_cpu(alpha) && alpha.scalar_type() == at::kFloat, "combine_masks_cpp takes a contiguous fp32 alpha[K]");
  const int64_t k = alpha.size(0);
  expect(k >= 1 && (k + 7) / 8 == bank.size(0), "alpha[K] and the bank disagree: ceil(K/8) != bank planes");
  auto out = at::empty_like(weight);
  cpu::combine_masks(weight.data_ptr(), dtype, bank.data_ptr<uint8_t>(), alpha.data_ptr<float>(), k, n,
                     out.data_ptr(), threads(), kernel_isa());
  return out;
}

// grad and weight flat of one length, the bank covering them with ceil(num_masks / 8)
// planes: the memory-safety checks of both alpha-gradient ops (per layer and rows).
// Returns the element types of grad and weight.
std::pair<cpu::Dtype, cpu::Dtype> check_alpha_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                                         const at::Tensor& bank, int64_t num_masks, const char* op) {
  TORCH_CHECK(is_flat_cpu(grad) && is_flat_cpu(weight) && grad.size(0) == weight.size(0), "impresslearn: ", op,
              " takes contiguous 1-D CPU grad and weight of one length");
  const cpu::Dtype grad_dtype = element_type(grad, op), weight_dtype = element_type(weight, op);
  TORCH_CHECK(is_bank_for(bank, weight.size(0)), "impresslearn: ", op,
              " takes a contiguous CPU uint8[G, n] bank covering the weight");
  expect(num_masks >= 1 && (num_masks + 7) / 8 == bank.size(0), "num_masks does not match the bank's planes");
  return {grad_dtype, weight_dtype};
}

at::Tensor combine_masks_alpha_grad_cpp(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bank,
                                        int64_t num_masks) {
  const auto [grad_dtype, weight_dtype] = check_alpha_grad_args(grad, weight, bank, num_masks, "combine_masks_alpha_grad_cpp");
  const int64_t n = weight.size(0);
  auto out = at::empty({num_masks}, weight.options().dtype(at::kFloat));
  cpu::combine_masks_alpha_grad(grad.data_ptr(), grad_dtype, weight.data_ptr(), weight_dtype, bank.data_ptr<uint8_t>(),
                                num_masks, n, out.data_ptr<float>(), threads(), kernel_isa());
  return out;
}

// The combine ops' autograd, in C++: per layer (combine_masks_cpp) and per block of
// channels (combine_masks_rows_cpp, group_len > 0); the same as impresslearn/ops/combine.py's
// Python one for the Triton ops (save weight, bank, alpha; grad_weight = combine(grad),
// grad_alpha = alpha_grad(grad, weight)), without a Python call per forward and backward,
// which at small K is a visible share of a training step (benchmarks/small_k_step.py).
// The kernels are called through the dispatcher, below autograd, so fake tensors,
// torch.compile and opcheck see the ops they registered.
class CombineMasksFunction : public torch::autograd::Function<CombineMasksFunction> {
 public:
  static constexpr int64_t kPerLayer = 0;  // group_len of the per-layer op

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& bank,
                            const at::Tensor& alpha, int64_t group_len) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({weight, bank, alpha});
    ctx->saved_data["group_len"] = group_len;
    return combine(weight, bank, alpha, group_len);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &weight = saved[0], &bank = saved[1], &alpha = saved[2];
    const int64_t group_len = ctx->saved_data["group_len"].toInt();
    const at::Tensor grad = grads[0].contiguous();
    at::Tensor grad_weight, grad_alpha;
    if (ctx->needs_input_grad(0)) grad_weight = combine(grad, bank, alpha, group_len);  // elementwise: grad * coeff
    if (ctx->needs_input_grad(2))
      grad_alpha = alpha_grad(grad, weight, bank, alpha.size(0), group_len).to(alpha.scalar_type());
    return {grad_weight, at::Tensor(), grad_alpha, at::Tensor()};
  }

 private:
  template <class Signature>
  static c10::TypedOperatorHandle<Signature> op(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  }

  static at::Tensor combine(const at::Tensor& weight, const at::Tensor& bank, const at::Tensor& alpha,
                            int64_t group_len) {
    static const auto per_layer =
        op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("impresslearn::combine_masks_cpp");
    static const auto rows = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
        "impresslearn::combine_masks_rows_cpp");
    return group_len == kPerLayer ? per_layer.call(weight, bank, alpha) : rows.call(weight, bank, alpha, group_len);
  }

  static at::Tensor alpha_grad(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bank,
                               int64_t num_masks, int64_t group_len) {
    static const auto per_layer = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
        "impresslearn::combine_masks_alpha_grad_cpp");
    static const auto rows =
        op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
            "impresslearn::combine_masks_rows_alpha_grad_cpp");
    return group_len == kPerLayer ? per_layer.call(grad, weight, bank, num_masks)
                                  : rows.call(grad, weight, bank, num_masks, group_len);
  }
};

void check_group_len(int64_t group_len, const char* op) {
  TORCH_CHECK(group_len >= 1, "impresslearn: ", op, " needs group_len >= 1");
}

at::Tensor combine_masks_cpp_autograd(const at::Tensor& weight, const at::Tensor& bank, const at::Tensor& alpha) {
  return CombineMasksFunction::apply(weight, bank, alpha, CombineMasksFunction::kPerLayer);
}

at::Tensor combine_masks_rows_cpp_autograd(const at::Tensor& weight, const at::Tensor& bank, const at::Tensor& alpha,
                                           int64_t group_len) {
  check_group_len(group_len, "combine_masks_rows_cpp");  // before autograd too: 0 would mean the per-layer op
  return CombineMasksFunction::apply(weight, bank, alpha, group_len);
}

// Coefficients per group of group_len flat weights (combine_rows.h): alpha fp32[K, ceil(n / group_len)].
at::Tensor combine_masks_rows_cpp(const at::Tensor& weight, const at::Tensor& bank, const at::Tensor& alpha,
                                  int64_t group_len) {
  expect(is_flat_cpu(weight), "combine_masks_rows_cpp takes a contiguous 1-D CPU weight");
  const cpu::Dtype dtype = element_type(weight, "combine_masks_rows_cpp");
  const int64_t n = weight.size(0);
  expect(is_bank_for(bank, n), "combine_masks_rows_cpp takes a contiguous CPU uint8[G, n] bank covering the weight");
  check_group_len(group_len, "combine_masks_rows_cpp");
  expect(alpha.dim() == 2 && alpha.is_contiguous() && alpha.is_cpu() && alpha.scalar_type() == at::kFloat &&
             alpha.size(1) == cpu::num_groups(n, group_len),
         "combine_masks_rows_cpp takes a contiguous fp32 alpha[K, ceil(n / group_len)]");
  const int64_t k = alpha.size(0);
  expect(k >= 1 && (k + 7) / 8 == bank.size(0), "alpha[K, groups] and the bank disagree: ceil(K/8) != bank planes");
  auto out = at::empty_like(weight);
  cpu::combine_masks_rows(weight.data_ptr(), dtype, bank.data_ptr<uint8_t>(), alpha.data_ptr<float>(), k, n, group_len,
                          out.data_ptr(), threads(), kernel_isa());
  return out;
}

at::Tensor combine_masks_rows_alpha_grad_cpp(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& bank,
                                             int64_t num_masks, int64_t group_len) {
  const auto [grad_dtype, weight_dtype] = check_alpha_grad_args(grad, weight, bank, num_masks, "combine_masks_rows_alpha_grad_cpp");
  const int64_t n = weight.size(0);
  check_group_len(group_len, "combine_masks_rows_alpha_grad_cpp");
  auto out = at::empty({num_masks, cpu::num_groups(n, group_len)}, weight.options().dtype(at::kFloat));
  cpu::combine_masks_rows_alpha_grad(grad.data_ptr(), grad_dtype, weight.data_ptr(), weight_dtype,
                                     bank.data_ptr<uint8_t>(), num_masks, n, group_len, out.data_ptr<float>(),
                                     threads(), kernel_isa());
  return out;
}

void check_topk_args(const at::Tensor& scores, int64_t k, const char* op) {
  expect(is_flat_cpu(scores), "topk_mask takes contiguous 1-D CPU scores");
  element_type(scores, op);
  expect(k >= 1 && k <= scores.size(0), "topk_mask needs 1 <= k <= number of scores");
  expect(scores.size(0) < (int64_t(1) << 32), "topk_mask_cpp counts in 32 bits: at most 2^32 - 1 scores");
}

at::Tensor topk_mask_cpp(const at::Tensor& scores, int64_t k) {
  check_topk_args(scores, k, "topk_mask_cpp");
  auto mask = at::empty({scores.size(0)}, scores.options().dtype(at::kBool));
  cpu::topk_mask(scores.data_ptr(), element_type(scores, "topk_mask_cpp"), scores.size(0), k, mask.data_ptr<bool>(),
                 threads());
  return mask;
}

void topk_mask_into_cpp(at::Tensor& bank, int64_t index, const at::Tensor& scores, int64_t k) {
  check_topk_args(scores, k, "topk_mask_into_cpp");
  expect(is_bank_for(bank, scores.size(0)), "topk_mask_into_cpp takes a contiguous CPU uint8[G, n] bank covering the scores");
  expect(index >= 0 && index < 8 * bank.size(0), "mask index out of range");
  cpu::topk_mask_into(scores.data_ptr(), element_type(scores, "topk_mask_into_cpp"), scores.size(0), k,
                      bank.data_ptr<uint8_t>(), index, threads());
}

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
  m.def("combine_masks_cpp(Tensor weight, Tensor bank, Tensor alpha) -> Tensor");
  m.def("combine_masks_alpha_grad_cpp(Tensor grad, Tensor weight, Tensor bank, int num_masks) -> Tensor");
  m.def("combine_masks_rows_cpp(Tensor weight, Tensor bank, Tensor alpha, int group_len) -> Tensor");
  m.def("combine_masks_rows_alpha_grad_cpp(Tensor grad, Tensor weight, Tensor bank, int num_masks, int group_len) -> Tensor");
  m.def("topk_mask_cpp(Tensor scores, int k) -> Tensor");
  m.def("topk_mask_into_cpp(Tensor(a!) bank, int index, Tensor scores, int k) -> ()");
#endif
}

#ifdef WITH_CPU
TORCH_LIBRARY_IMPL(impresslearn, CPU, m) {
  m.impl("pack_masks_cpp", &pack_masks_cpp);
  m.impl("unpack_masks_cpp", &unpack_masks_cpp);
  m.impl("set_mask_cpp", &set_mask_cpp);
  m.impl("combine_masks_cpp", &combine_masks_cpp);
  m.impl("combine_masks_alpha_grad_cpp", &combine_masks_alpha_grad_cpp);
  m.impl("combine_masks_rows_cpp", &combine_masks_rows_cpp);
  m.impl("combine_masks_rows_alpha_grad_cpp", &combine_masks_rows_alpha_grad_cpp);
  m.impl("topk_mask_cpp", &topk_mask_cpp);
  m.impl("topk_mask_into_cpp", &topk_mask_into_cpp);
}

TORCH_LIBRARY_IMPL(impresslearn, Autograd, m) {
  m.impl("combine_masks_cpp", &combine_masks_cpp_autograd);
  m.impl("combine_masks_rows_cpp", &combine_masks_rows_cpp_autograd);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CPU
  m.attr("WITH_CPU") = true;
  m.def(
      "cpu_isa", [] { return std::string(cpu::isa_name(kernel_isa())); },
      "The ISA the CPU kernels run: IMPRESSLEARN_CPU_ISA (portable, avx2, avx512, auto) or the widest this "
      "processor supports. ValueError, with the reason, if the variable names no ISA or one this processor lacks.");
  m.def(
      "cpu_isas",
      [] {
        std::vector<std::string> names;
        for (cpu::Isa isa : {cpu::Isa::portable, cpu::Isa::avx2, cpu::Isa::avx512})
          if (cpu::isa_supported(isa)) names.emplace_back(cpu::isa_name(isa));
        return names;
      },
      "The ISAs this processor can run the CPU kernels with, narrowest first.");
  m.def("cpu_features", &cpu::isa_features, "The processor's ISA extensions that the CPU kernels look for.");
#else
  m.attr("WITH_CPU") = false;
#endif
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}

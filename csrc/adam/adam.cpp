// Operator schemas of the native Adam fallback and their CPU kernels.
//
// The maths is in adam.h. Unlike TorchOpt's op, every input is made contiguous first (so
// transposed or sliced tensors give the right answer), the backward is exact (with the safe
// sqrt rule at v' = 0), and step_size gets a gradient. Fake (meta) kernels are registered in
// Python (lowering/backends/native.py) so the ops trace under torch.compile.
#include "adam.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace optcompile::adam {
namespace {

// Elements per task: big enough to amortise waking a thread, as ATen's own GRAIN_SIZE.
constexpr int64_t kGrain = 32768;
// Elements summed in the compute type before adding into a double: short enough that float
// round-off stays ~1e-6 relative, long enough to vectorise.
constexpr int64_t kChunk = 256;

// The loops live in templates rather than in the AT_DISPATCH lambdas because a #pragma
// cannot appear inside a macro argument.
template <typename scalar_t>
void forward_loop(
    int64_t n, const scalar_t* gp, const scalar_t* mp, const scalar_t* vp,
    const Coef<at::opmath_type<scalar_t>>& c, scalar_t* up, scalar_t* mop, scalar_t* vop) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const Forward<opmath_t> r = forward<opmath_t>(
          static_cast<opmath_t>(gp[i]), static_cast<opmath_t>(mp[i]),
          static_cast<opmath_t>(vp[i]), c);
      up[i] = static_cast<scalar_t>(r.update);
      mop[i] = static_cast<scalar_t>(r.new_m);
      vop[i] = static_cast<scalar_t>(r.new_v);
    }
  });
}

// Absent cotangents (HasMBar / HasVBar false) are compile-time zeros, so the loop has no
// per-element branch and still vectorises. grad_s = sum(U dir) is summed in opmath_t over
// chunks of kChunk elements (gcc vectorises a float reduction but not a float-to-double
// one), in double over the chunks of a block of kGrain, and over blocks in order, so it does
// not depend on the number of threads.
template <typename scalar_t, bool HasMBar, bool HasVBar>
double backward_loop(
    int64_t n, const scalar_t* ubp, const scalar_t* mbp, const scalar_t* vbp,
    const scalar_t* gp, const scalar_t* mp, const scalar_t* vp,
    const Coef<at::opmath_type<scalar_t>>& c, scalar_t* ggp, scalar_t* gmp, scalar_t* gvp) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t n_blocks = (n + kGrain - 1) / kGrain;
  std::vector<double> partial(static_cast<size_t>(n_blocks), 0.0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t begin = block * kGrain;
      const int64_t end = std::min(n, begin + kGrain);
      double acc = 0.0;
      for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
        const int64_t chunk_end = std::min(end, chunk + kChunk);
        opmath_t chunk_acc = 0;
#pragma omp simd reduction(+ : chunk_acc)
        for (int64_t i = chunk; i < chunk_end; ++i) {
          opmath_t m_bar = 0, v_bar = 0;
          if constexpr (HasMBar) {
            m_bar = static_cast<opmath_t>(mbp[i]);
          }
          if constexpr (HasVBar) {
            v_bar = static_cast<opmath_t>(vbp[i]);
          }
          const Backward<opmath_t> r = backward<opmath_t>(
              static_cast<opmath_t>(ubp[i]), m_bar, v_bar, static_cast<opmath_t>(gp[i]),
              static_cast<opmath_t>(mp[i]), static_cast<opmath_t>(vp[i]), c);
          chunk_acc += r.u_dir;
          ggp[i] = static_cast<scalar_t>(r.grad_g);
          gmp[i] = static_cast<scalar_t>(r.grad_m);
          gvp[i] = static_cast<scalar_t>(r.grad_v);
        }
        acc += static_cast<double>(chunk_acc);
      }
      partial[static_cast<size_t>(block)] = acc;
    }
  });
  double sum = 0.0;
  for (const double p : partial) {
    sum += p;
  }
  return sum;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_forward_cpu(
    const at::Tensor& g, const at::Tensor& mu, const at::Tensor& nu, const at::Tensor& step_size,
    const at::Tensor& count, double b1, double b2, double eps, double eps_root) {
  constexpr const char* op = "optcompile::adam_forward";
  check_inputs(op, g, mu, nu, step_size, count);
  const at::Tensor gc = g.contiguous(), mc = mu.contiguous(), vc = nu.contiguous();
  at::Tensor update = at::empty(g.sizes(), gc.options());
  at::Tensor new_mu = at::empty(g.sizes(), gc.options());
  at::Tensor new_nu = at::empty(g.sizes(), gc.options());
  const double s = step_size.item<double>();
  const double t = count.item<double>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), op, [&] {
    forward_loop<scalar_t>(
        gc.numel(), gc.const_data_ptr<scalar_t>(), mc.const_data_ptr<scalar_t>(),
        vc.const_data_ptr<scalar_t>(),
        make_coef<at::opmath_type<scalar_t>>(s, t, b1, b2, eps, eps_root),
        update.mutable_data_ptr<scalar_t>(), new_mu.mutable_data_ptr<scalar_t>(),
        new_nu.mutable_data_ptr<scalar_t>());
  });
  return {update, new_mu, new_nu};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adam_backward_cpu(
    const at::Tensor& grad_update, const std::optional<at::Tensor>& grad_new_mu,
    const std::optional<at::Tensor>& grad_new_nu, const at::Tensor& g, const at::Tensor& mu,
    const at::Tensor& nu, const at::Tensor& step_size, const at::Tensor& count, double b1,
    double b2, double eps, double eps_root) {
  constexpr const char* op = "optcompile::adam_backward";
  check_inputs(op, g, mu, nu, step_size, count);
  const at::Tensor gc = g.contiguous(), mc = mu.contiguous(), vc = nu.contiguous();
  const at::Tensor uc = like_g(op, "grad_update", grad_update, g);
  const std::optional<at::Tensor> mbc = maybe_like_g(op, "grad_new_mu", grad_new_mu, g);
  const std::optional<at::Tensor> vbc = maybe_like_g(op, "grad_new_nu", grad_new_nu, g);
  at::Tensor grad_g = at::empty(g.sizes(), gc.options());
  at::Tensor grad_mu = at::empty(g.sizes(), gc.options());
  at::Tensor grad_nu = at::empty(g.sizes(), gc.options());
  const double s = step_size.item<double>();
  const double t = count.item<double>();
  double grad_s = 0.0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), op, [&] {
    const scalar_t* mbp = mbc ? mbc->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* vbp = vbc ? vbc->const_data_ptr<scalar_t>() : nullptr;
    const auto loop = mbp ? (vbp ? &backward_loop<scalar_t, true, true>
                                 : &backward_loop<scalar_t, true, false>)
                          : (vbp ? &backward_loop<scalar_t, false, true>
                                 : &backward_loop<scalar_t, false, false>);
    grad_s = loop(
        gc.numel(), uc.const_data_ptr<scalar_t>(), mbp, vbp, gc.const_data_ptr<scalar_t>(),
        mc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
        make_coef<at::opmath_type<scalar_t>>(s, t, b1, b2, eps, eps_root),
        grad_g.mutable_data_ptr<scalar_t>(), grad_mu.mutable_data_ptr<scalar_t>(),
        grad_nu.mutable_data_ptr<scalar_t>());
  });
  return {grad_g, grad_mu, grad_nu, at::scalar_tensor(grad_s, step_size.options())};
}

}  // namespace
}  // namespace optcompile::adam

// pt2_compliant_tag: the schemas are functional and the fake kernels exact, which
// torch.library.opcheck verifies in tests/test_native_adam.py.
TORCH_LIBRARY(optcompile, m) {
  m.def(
      "adam_forward(Tensor g, Tensor mu, Tensor nu, Tensor step_size, Tensor count, float b1, "
      "float b2, float eps, float eps_root) -> (Tensor update, Tensor new_mu, Tensor new_nu)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "adam_backward(Tensor grad_update, Tensor? grad_new_mu, Tensor? grad_new_nu, Tensor g, "
      "Tensor mu, Tensor nu, Tensor step_size, Tensor count, float b1, float b2, float eps, "
      "float eps_root) -> (Tensor grad_g, Tensor grad_mu, Tensor grad_nu, Tensor grad_step_size)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(optcompile, CPU, m) {
  m.impl("adam_forward", &optcompile::adam::adam_forward_cpu);
  m.impl("adam_backward", &optcompile::adam::adam_backward_cpu);
}

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

// Vector width. The library is built on the user's machine, but its cache may be shared by
// different CPUs (NFS homes), so it targets the x86-64 baseline (SSE2; no -march). On x86-64
// glibc the element loops are also cloned for AVX2, and the loader picks the clone the CPU
// runs (an ifunc; gcc >= 6, clang >= 14); elsewhere (aarch64, where NEON is the baseline;
// musl, which has no ifunc) each is one plain function. Measured at one thread on float32, AVX2 runs the in-cache backward
// ~1.6x faster than SSE2; an AVX-512 clone on top was a wash (forward 6-10% faster at 1M-5M
// elements, both 5-7% slower at 32K, backward within 5%), so there is none. Every clone
// rounds each element alike (IEEE operations, and no FMA: -ffp-contract=off in native_ops.py)
// and grad_s is summed in a fixed order, so results do not depend on the CPU.
// (at::vec::Vectorized would not choose at run time: outside ATen's own per-ISA builds it
// compiles for the baseline.)
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define OPTCOMPILE_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef OPTCOMPILE_SIMD_CLONES
#define OPTCOMPILE_SIMD_CLONES
#endif

namespace optcompile::adam {
namespace {

// Elements per task: big enough to amortise waking a thread, as ATen's own GRAIN_SIZE.
constexpr int64_t kGrain = 32768;
// grad_s = sum(U dir). gcc vectorises a float sum only if allowed to reorder it (`omp simd
// reduction`), in an order that then depends on the vector width. So each element's term is
// kept in a buffer of kChunk and summed in opmath_t over kLanes fixed lanes (element i into
// lane i % kLanes), the lanes and chunks of a block of kGrain in double, and the blocks in
// order: an order fixed by the source, whatever the vector width or number of threads.
// kChunk is short enough that float round-off stays ~1e-6 relative.
constexpr int64_t kChunk = 256;
constexpr int64_t kLanes = 16;
static_assert(kGrain % kChunk == 0 && kChunk % kLanes == 0);

// The loops are free functions (a lambda would not inherit its caller's clone target), with
// __restrict__ pointers and Coef by value, so that gcc sees that no store aliases a load and
// vectorises them. (No `omp simd`: it keeps Half/BFloat16 temporaries in memory per lane,
// and those loops then do not vectorise at all.)
template <typename scalar_t>
OPTCOMPILE_SIMD_CLONES void forward_range(
    int64_t begin, int64_t end, const scalar_t* __restrict__ gp, const scalar_t* __restrict__ mp,
    const scalar_t* __restrict__ vp, const Coef<at::opmath_type<scalar_t>> c,
    scalar_t* __restrict__ up, scalar_t* __restrict__ mop, scalar_t* __restrict__ vop) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const Forward<opmath_t> r = forward<opmath_t>(
        static_cast<opmath_t>(gp[i]), static_cast<opmath_t>(mp[i]),
        static_cast<opmath_t>(vp[i]), c);
    up[i] = static_cast<scalar_t>(r.update);
    mop[i] = static_cast<scalar_t>(r.new_m);
    vop[i] = static_cast<scalar_t>(r.new_v);
  }
}

template <typename scalar_t>
void forward_loop(
    int64_t n, const scalar_t* gp, const scalar_t* mp, const scalar_t* vp,
    const Coef<at::opmath_type<scalar_t>>& c, scalar_t* up, scalar_t* mop, scalar_t* vop) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    forward_range<scalar_t>(begin, end, gp, mp, vp, c, up, mop, vop);
  });
}

// One block [begin, end) of the backward; returns its grad_s term. Absent cotangents
// (HasMBar / HasVBar false) are compile-time zeros, so the loop has no per-element branch.
template <typename scalar_t, bool HasMBar, bool HasVBar>
OPTCOMPILE_SIMD_CLONES double backward_block(
    int64_t begin, int64_t end, const scalar_t* __restrict__ ubp,
    const scalar_t* __restrict__ mbp, const scalar_t* __restrict__ vbp,
    const scalar_t* __restrict__ gp, const scalar_t* __restrict__ mp,
    const scalar_t* __restrict__ vp, const Coef<at::opmath_type<scalar_t>> c,
    scalar_t* __restrict__ ggp, scalar_t* __restrict__ gmp, scalar_t* __restrict__ gvp) {
  using opmath_t = at::opmath_type<scalar_t>;
  alignas(64) opmath_t u_dir[kChunk];
  double acc = 0.0;
  for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
    const int64_t len = std::min(end - chunk, kChunk);
    for (int64_t i = chunk; i < chunk + len; ++i) {
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
      u_dir[i - chunk] = r.u_dir;
      ggp[i] = static_cast<scalar_t>(r.grad_g);
      gmp[i] = static_cast<scalar_t>(r.grad_m);
      gvp[i] = static_cast<scalar_t>(r.grad_v);
    }
    std::fill(u_dir + len, u_dir + (len + kLanes - 1) / kLanes * kLanes, opmath_t(0));
    opmath_t lanes[kLanes] = {};
    for (int64_t j = 0; j < len; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        lanes[k] += u_dir[j + k];
      }
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      acc += static_cast<double>(lanes[k]);
    }
  }
  return acc;
}

template <typename scalar_t, bool HasMBar, bool HasVBar>
double backward_loop(
    int64_t n, const scalar_t* ubp, const scalar_t* mbp, const scalar_t* vbp,
    const scalar_t* gp, const scalar_t* mp, const scalar_t* vp,
    const Coef<at::opmath_type<scalar_t>>& c, scalar_t* ggp, scalar_t* gmp, scalar_t* gvp) {
  const int64_t n_blocks = (n + kGrain - 1) / kGrain;
  std::vector<double> partial(static_cast<size_t>(n_blocks), 0.0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t begin = block * kGrain;
      partial[static_cast<size_t>(block)] = backward_block<scalar_t, HasMBar, HasVBar>(
          begin, std::min(n, begin + kGrain), ubp, mbp, vbp, gp, mp, vp, c, ggp, gmp, gvp);
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

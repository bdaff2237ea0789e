// CUDA kernels of the native Adam fallback (schemas in adam.cpp, maths in adam.h).
//
// step_size and count may live on the GPU (a learned or scheduled step size); reading them on
// the host would synchronise every step, so a one-thread kernel turns them into the step's
// scalars in device memory and the element-wise kernels read those.
#include "adam.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace optcompile::adam {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void coef_kernel(
    const double* step_size, const double* count, double b1, double b2, double eps,
    double eps_root, Coef<T>* out) {
  *out = make_coef<T>(*step_size, *count, b1, b2, eps, eps_root);
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(
    int64_t n, const scalar_t* __restrict__ g, const scalar_t* __restrict__ m,
    const scalar_t* __restrict__ v, const Coef<T>* __restrict__ coef,
    scalar_t* __restrict__ update, scalar_t* __restrict__ new_m, scalar_t* __restrict__ new_v) {
  const Coef<T> c = *coef;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const Forward<T> r =
        forward<T>(static_cast<T>(g[i]), static_cast<T>(m[i]), static_cast<T>(v[i]), c);
    update[i] = static_cast<scalar_t>(r.update);
    new_m[i] = static_cast<scalar_t>(r.new_m);
    new_v[i] = static_cast<scalar_t>(r.new_v);
  }
}

// m_bar / v_bar may be null (an unused new_mu / new_nu): the branch is uniform per launch.
// u_dir gets U * dir per element; grad_step_size is its sum, taken by at::sum so that it is
// deterministic (no atomics).
template <typename scalar_t, typename T>
__global__ void backward_kernel(
    int64_t n, const scalar_t* __restrict__ u_bar, const scalar_t* __restrict__ m_bar,
    const scalar_t* __restrict__ v_bar, const scalar_t* __restrict__ g,
    const scalar_t* __restrict__ m, const scalar_t* __restrict__ v,
    const Coef<T>* __restrict__ coef, scalar_t* __restrict__ grad_g,
    scalar_t* __restrict__ grad_m, scalar_t* __restrict__ grad_v, T* __restrict__ u_dir) {
  const Coef<T> c = *coef;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const T mb = m_bar ? static_cast<T>(m_bar[i]) : T(0);
    const T vb = v_bar ? static_cast<T>(v_bar[i]) : T(0);
    const Backward<T> r = backward<T>(
        static_cast<T>(u_bar[i]), mb, vb, static_cast<T>(g[i]), static_cast<T>(m[i]),
        static_cast<T>(v[i]), c);
    grad_g[i] = static_cast<scalar_t>(r.grad_g);
    grad_m[i] = static_cast<scalar_t>(r.grad_m);
    grad_v[i] = static_cast<scalar_t>(r.grad_v);
    u_dir[i] = r.u_dir;
  }
}

void check_cuda(const char* op, const at::Tensor& g) {
  TORCH_CHECK(
      g.is_cuda(), op, ": g, mu and nu must be CUDA tensors when another argument is, got g on ",
      g.device());
}

// Enough blocks to fill every SM (8 x 256 threads each), no more: the loops are grid-strided.
// (c10 headers only, not ATen/cuda/CUDAContext.h, which pulls in cuBLAS and cuSPARSE.)
int64_t blocks_for(int64_t n) {
  int sms = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t fill = static_cast<int64_t>(sms) * 8;
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, fill));
}

// The step's scalars in device memory, as Coef<T>. step_size and count may be on the CPU
// (then .to() is a small copy) or on this GPU.
template <typename T>
at::Tensor make_coef_on_device(
    const at::Tensor& g, const at::Tensor& step_size, const at::Tensor& count, double b1,
    double b2, double eps, double eps_root) {
  const at::Tensor s = step_size.to(g.device(), at::kDouble);
  const at::Tensor t = count.to(g.device(), at::kDouble);
  at::Tensor coef =
      at::empty({static_cast<int64_t>(sizeof(Coef<T>))}, g.options().dtype(at::kByte));
  coef_kernel<T><<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
      s.const_data_ptr<double>(), t.const_data_ptr<double>(), b1, b2, eps, eps_root,
      reinterpret_cast<Coef<T>*>(coef.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return coef;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_forward_cuda(
    const at::Tensor& g, const at::Tensor& mu, const at::Tensor& nu, const at::Tensor& step_size,
    const at::Tensor& count, double b1, double b2, double eps, double eps_root) {
  constexpr const char* op = "optcompile::adam_forward";
  check_cuda(op, g);
  check_inputs(op, g, mu, nu, step_size, count);
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gc = g.contiguous(), mc = mu.contiguous(), vc = nu.contiguous();
  at::Tensor update = at::empty(g.sizes(), gc.options());
  at::Tensor new_mu = at::empty(g.sizes(), gc.options());
  at::Tensor new_nu = at::empty(g.sizes(), gc.options());
  const int64_t n = gc.numel();

  if (n == 0) {
    return {update, new_mu, new_nu};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), op, [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor coef =
        make_coef_on_device<opmath_t>(g, step_size, count, b1, b2, eps, eps_root);
    forward_kernel<scalar_t, opmath_t>
        <<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            n, gc.const_data_ptr<scalar_t>(), mc.const_data_ptr<scalar_t>(),
            vc.const_data_ptr<scalar_t>(),
            reinterpret_cast<const Coef<opmath_t>*>(coef.const_data_ptr()),
            update.mutable_data_ptr<scalar_t>(), new_mu.mutable_data_ptr<scalar_t>(),
            new_nu.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {update, new_mu, new_nu};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adam_backward_cuda(
    const at::Tensor& grad_update, const std::optional<at::Tensor>& grad_new_mu,
    const std::optional<at::Tensor>& grad_new_nu, const at::Tensor& g, const at::Tensor& mu,
    const at::Tensor& nu, const at::Tensor& step_size, const at::Tensor& count, double b1,
    double b2, double eps, double eps_root) {
  constexpr const char* op = "optcompile::adam_backward";
  check_cuda(op, g);
  check_inputs(op, g, mu, nu, step_size, count);
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gc = g.contiguous(), mc = mu.contiguous(), vc = nu.contiguous();
  const at::Tensor uc = like_g(op, "grad_update", grad_update, g);
  const std::optional<at::Tensor> mbc = maybe_like_g(op, "grad_new_mu", grad_new_mu, g);
  const std::optional<at::Tensor> vbc = maybe_like_g(op, "grad_new_nu", grad_new_nu, g);
  at::Tensor grad_g = at::empty(g.sizes(), gc.options());
  at::Tensor grad_mu = at::empty(g.sizes(), gc.options());
  at::Tensor grad_nu = at::empty(g.sizes(), gc.options());
  const int64_t n = gc.numel();
  at::Tensor grad_step_size;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), op, [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor coef =
        make_coef_on_device<opmath_t>(g, step_size, count, b1, b2, eps, eps_root);
    at::Tensor u_dir =
        at::empty({n}, gc.options().dtype(c10::CppTypeToScalarType<opmath_t>::value));
    if (n > 0) {
      backward_kernel<scalar_t, opmath_t>
          <<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              n, uc.const_data_ptr<scalar_t>(),
              mbc ? mbc->const_data_ptr<scalar_t>() : nullptr,
              vbc ? vbc->const_data_ptr<scalar_t>() : nullptr, gc.const_data_ptr<scalar_t>(),
              mc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
              reinterpret_cast<const Coef<opmath_t>*>(coef.const_data_ptr()),
              grad_g.mutable_data_ptr<scalar_t>(), grad_mu.mutable_data_ptr<scalar_t>(),
              grad_nu.mutable_data_ptr<scalar_t>(), u_dir.mutable_data_ptr<opmath_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // Summed in double, then cast to step_size's dtype and device.
    grad_step_size = at::sum(u_dir, at::kDouble).to(step_size.device(), step_size.scalar_type());
  });
  return {grad_g, grad_mu, grad_nu, grad_step_size};
}

}  // namespace
}  // namespace optcompile::adam

TORCH_LIBRARY_IMPL(optcompile, CUDA, m) {
  m.impl("adam_forward", &optcompile::adam::adam_forward_cuda);
  m.impl("adam_backward", &optcompile::adam::adam_backward_cuda);
}

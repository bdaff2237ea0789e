// Adam's element-wise maths, shared by the CPU (adam.cpp) and CUDA (adam_cuda.cu) kernels.
//
// One step, element-wise, with t = count (1-based) and s = step_size:
//   m' = b1 m + (1 - b1) g            v' = b2 v + (1 - b2) g^2
//   bc1 = 1 - b1^t                    bc2 = 1 - b2^t          (scalars, in double)
//   x = v' / bc2 + eps_root           D = sqrt(x) + eps
//   dir = (m' / bc1) / D              update = s dir
// Backward (U, M', V' = cotangents of update, m', v'):
//   M = M' + U s / (bc1 D)
//   V = V' - U s (m' / bc1) / D^2 * dsqrt(x) / bc2,   dsqrt(x) = x > 0 ? 1 / (2 sqrt(x)) : 0
//   grad_g = (1 - b1) M + 2 (1 - b2) g V,   grad_m = b1 M,   grad_v = b2 V,   grad_s = sum(U dir)
// dsqrt(0) = 0 is the "safe sqrt" rule: autograd of the naive formula gives inf * 0 = NaN
// wherever v' = 0 (a parameter whose gradients were all zero so far).
//
// The maths lives here once, as host/device functions; the kernels only load, call, store.
// A division costs several multiplications, so those by the step's constants (bc1, bc2, 2)
// are multiplications by reciprocals made once per call in make_coef. Per element, the forward
// divides once (by D) and the backward twice (by D, and by sqrt(x) for dsqrt). One division,
// by D sqrt(x), could give both, but it overflows where D sqrt(x) does (eps = 0, tiny x), and
// it measured no faster: vectorised, the loops are bound by memory traffic.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace optcompile::adam {

// Scalars of one step in the compute type T (float for float/half/bfloat16, double for
// double). Built from doubles so that b^t, 1 - b, the reciprocals and their products with s
// are rounded once, in double.
template <typename T>
struct Coef {
  T b1, b2, one_minus_b1, one_minus_b2, two_one_minus_b2, eps, eps_root;
  T inv_bc1, inv_bc2, step_size;
  T s_inv_bc1, half_s_inv_bc2;  // s / bc1 and s / (2 bc2), the backward's factors
};

template <typename T>
C10_HOST_DEVICE inline Coef<T> make_coef(
    double step_size, double count, double b1, double b2, double eps, double eps_root) {
  const double inv_bc1 = 1.0 / (1.0 - ::pow(b1, count));
  const double inv_bc2 = 1.0 / (1.0 - ::pow(b2, count));
  Coef<T> c;
  c.b1 = static_cast<T>(b1);
  c.b2 = static_cast<T>(b2);
  c.one_minus_b1 = static_cast<T>(1.0 - b1);
  c.one_minus_b2 = static_cast<T>(1.0 - b2);
  c.two_one_minus_b2 = static_cast<T>(2.0 * (1.0 - b2));
  c.eps = static_cast<T>(eps);
  c.eps_root = static_cast<T>(eps_root);
  c.inv_bc1 = static_cast<T>(inv_bc1);
  c.inv_bc2 = static_cast<T>(inv_bc2);
  c.step_size = static_cast<T>(step_size);
  c.s_inv_bc1 = static_cast<T>(step_size * inv_bc1);
  c.half_s_inv_bc2 = static_cast<T>(0.5 * step_size * inv_bc2);
  return c;
}

// std::sqrt is not a device function; CUDA's global ::sqrt has the float overload.
template <typename T>
C10_HOST_DEVICE inline T sqrt_(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

template <typename T>
struct Forward {
  T update, new_m, new_v;
};

template <typename T>
C10_HOST_DEVICE inline Forward<T> forward(T g, T m, T v, const Coef<T>& c) {
  const T new_m = c.b1 * m + c.one_minus_b1 * g;
  const T new_v = c.b2 * v + c.one_minus_b2 * g * g;
  const T denom = sqrt_(new_v * c.inv_bc2 + c.eps_root) + c.eps;
  return {c.step_size * (new_m * c.inv_bc1 / denom), new_m, new_v};
}

// u_dir = U * dir is this element's term of grad_s. (Results are returned by value, not
// through references, so that gcc's loops vectorise.)
template <typename T>
struct Backward {
  T grad_g, grad_m, grad_v, u_dir;
};

// The forward is recomputed rather than saved: a few flops against three more tensors of
// memory traffic. With inv_d = 1 / D and dir = (m' / bc1) / D:
//   M = M' + U (s / bc1) inv_d
//   V = V' - U (s / (2 bc2)) dir inv_d / sqrt(x)     (the last factor 0 at x = 0, as dsqrt)
template <typename T>
C10_HOST_DEVICE inline Backward<T> backward(T u_bar, T m_bar, T v_bar, T g, T m, T v,
                                            const Coef<T>& c) {
  const T new_m = c.b1 * m + c.one_minus_b1 * g;
  const T new_v = c.b2 * v + c.one_minus_b2 * g * g;
  const T x = new_v * c.inv_bc2 + c.eps_root;
  const T r = sqrt_(x);
  const T inv_d = T(1) / (r + c.eps);
  const T dir = new_m * c.inv_bc1 * inv_d;
  // Safe sqrt: 2 dsqrt(x) = 1 / sqrt(x), and 0 at x = 0. (gcc vectorises this select only
  // with -fno-trapping-math, see native_ops.py.)
  const T inv_r = x > T(0) ? T(1) / r : T(0);
  const T mt = m_bar + u_bar * (c.s_inv_bc1 * inv_d);
  const T vt = v_bar - u_bar * (c.half_s_inv_bc2 * dir * inv_d * inv_r);
  return {c.one_minus_b1 * mt + c.two_one_minus_b2 * g * vt, c.b1 * mt, c.b2 * vt,
          u_bar * dir};
}

// Argument checks shared by both devices; messages name the argument and the fix.
inline void check_inputs(
    const char* op, const at::Tensor& g, const at::Tensor& mu, const at::Tensor& nu,
    const at::Tensor& step_size, const at::Tensor& count) {
  TORCH_CHECK(
      at::isFloatingType(g.scalar_type()), op, ": g must be a floating tensor, got ",
      g.scalar_type());
  const auto check_state = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(
        t.sizes() == g.sizes(), op, ": ", name, " must have g's shape ", g.sizes(), ", got ",
        t.sizes());
    TORCH_CHECK(
        t.scalar_type() == g.scalar_type(), op, ": ", name, " must have g's dtype ",
        g.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(
        t.device() == g.device(), op, ": ", name, " must be on g's device ", g.device(),
        ", got ", t.device());
  };
  check_state("mu", mu);
  check_state("nu", nu);
  TORCH_CHECK(
      step_size.dim() == 0 && at::isFloatingType(step_size.scalar_type()), op,
      ": step_size must be a 0-d floating tensor, got shape ", step_size.sizes(), " and dtype ",
      step_size.scalar_type());
  TORCH_CHECK(count.dim() == 0, op, ": count must be a 0-d tensor, got shape ", count.sizes());
}

// Cotangents arrive in any layout (an expanded ones() from .sum(), say) and, in principle,
// any dtype; the kernels want g's dtype, contiguous. Both calls are no-ops when already so.
inline at::Tensor like_g(
    const char* op, const char* name, const at::Tensor& t, const at::Tensor& g) {
  TORCH_CHECK(
      t.sizes() == g.sizes() && t.device() == g.device(), op, ": ", name,
      " must have g's shape ", g.sizes(), " and device ", g.device(), ", got ", t.sizes(),
      " on ", t.device());
  return t.to(g.scalar_type()).contiguous();
}

inline std::optional<at::Tensor> maybe_like_g(
    const char* op, const char* name, const std::optional<at::Tensor>& t, const at::Tensor& g) {
  if (!t.has_value() || !t->defined()) {
    return std::nullopt;
  }
  return like_g(op, name, *t, g);
}

}  // namespace optcompile::adam

//! GELU in both of its Hugging Face forms, fused and multi-threaded on flex.
//!
//! On `Device::flex()` (plain or autodiff) these run this crate's own kernels through a burn
//! backend extension: one pass over the input forward and one over input and gradient backward,
//! vectorised for the CPU's widest unit and split across rayon's threads. burn-flex 0.22.1 runs
//! GELU on one thread with a scalar software `erf`, and `gelu_new` as six separate element-wise
//! ops; docs/benchmarks.md measures both. On every other device they are burn's own operations.

mod host;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

/// Which GELU: Hugging Face's `gelu` (exact, `erf`) or `gelu_new` (the tanh approximation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GeluKind {
    Erf,
    Tanh,
}

/// Exact GELU, `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`: Hugging Face's `gelu` (BERT, RoBERTa).
///
/// On flex it is the fused kernel (within 3e-7 of the exact value, forward and backward). On
/// other devices it is composed from burn's `erf`: burn 0.22.1's own
/// [`gelu`](burn::tensor::activation::gelu) has the exact forward everywhere, but outside flex
/// and libtorch its backward is the derivative of the *tanh approximation* (burn-backend's
/// default `gelu_backward`), up to ~3e-3 away from PyTorch's gradient.
///
/// # Shapes
/// - `x`: any → same
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if is_flex(&x) {
        return fused(x, GeluKind::Erf);
    }
    let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() * 0.5 + 0.5;
    x * cdf
}

/// GPT-2's `gelu_new`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Off flex it is computed as `x·σ(2·√(2/π)·(x + 0.044715·x³))`, the same function
/// (`0.5·(1 + tanh u) = σ(2u)`) in three fewer ops than burn's `gelu_approximate` and with a
/// one-op backward for the sigmoid. Equals `gelu_approximate` to within 1e-6.
///
/// # Shapes
/// - `x`: any → same
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if is_flex(&x) {
        return fused(x, GeluKind::Tanh);
    }
    // 2·√(2/π)
    const C: f64 = 1.595_769_121_605_730_7;
    let z = x.clone() * (x.clone().square() * (C * 0.044_715) + C);
    x * sigmoid(z)
}

/// Whether `x` lives on flex (plain or autodiff), where the fused kernels exist.
fn is_flex<const D: usize>(x: &Tensor<D>) -> bool {
    crate::device::is_flex(&x.device())
}

fn fused<const D: usize>(x: Tensor<D>, kind: GeluKind) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedGelu>::fused_gelu(x.into_dispatch(), kind))
}

/// The backend extension: one fused GELU op and its backward, with kernels for flex and a
/// hand-written backward pass under autodiff.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub(crate) trait FusedGelu: Backend {
    /// `gelu(x)` of the given kind.
    fn fused_gelu(x: FloatTensor<Self>, kind: GeluKind) -> FloatTensor<Self>;
    /// `grad · gelu'(x)`.
    fn fused_gelu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        kind: GeluKind,
    ) -> FloatTensor<Self>;
}

#[cfg(feature = "flex")]
mod flex {
    use super::{GeluKind, host};
    use crate::kernel::flex::{contiguous_f32, tensor, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;

    impl super::FusedGelu for Flex {
        fn fused_gelu(x: FlexTensor, kind: GeluKind) -> FlexTensor {
            match kind {
                GeluKind::Erf => run::<host::GeluErf>(x, None),
                GeluKind::Tanh => run::<host::GeluTanh>(x, None),
            }
        }

        fn fused_gelu_backward(x: FlexTensor, grad: FlexTensor, kind: GeluKind) -> FlexTensor {
            match kind {
                GeluKind::Erf => run::<host::GeluErfGrad>(x, Some(grad)),
                GeluKind::Tanh => run::<host::GeluTanhGrad>(x, Some(grad)),
            }
        }
    }

    /// `K(x)`, or `grad · K(x)`, in `x`'s dtype: the kernels exist for f32 only, so other float
    /// dtypes are cast to f32 and back.
    fn run<K: host::Pointwise>(x: FlexTensor, grad: Option<FlexTensor>) -> FlexTensor {
        let dtype = x.dtype();
        let shape = x.layout().shape().clone();
        let x = contiguous_f32(x);
        let grad = grad.map(contiguous_f32);
        tensor(
            host::map::<K>(values(&x), grad.as_ref().map(values)),
            shape,
            dtype,
        )
    }
}

/// The autodiff wrapper: burn's `Autodiff<B, C>` only knows its own ops, so the fused op's
/// backward pass is registered here.
mod autodiff {
    use super::{FusedGelu, GeluKind};
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{AutodiffBackend, Backend};

    type AdTensor<B, C> = FloatTensor<Autodiff<B, C>>;

    /// The backward step: `grad · gelu'(x)`, with `x` kept from the forward pass.
    #[derive(Debug)]
    struct GeluStep(GeluKind);

    impl<B: Backend + FusedGelu> Backward<B, 1> for GeluStep {
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                B::fused_gelu_backward(x, grad, self.0)
            });
        }
    }

    impl<B: Backend + FusedGelu, C: CheckpointStrategy> FusedGelu for Autodiff<B, C> {
        fn fused_gelu(x: AdTensor<B, C>, kind: GeluKind) -> AdTensor<B, C> {
            // Compute-bound to burn's checkpointing: the input is kept, never recomputed.
            match GeluStep(kind)
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let input = x.primitive().clone();
                    prep.finish(input.clone(), B::fused_gelu(input, kind))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.into_primitive(), kind)),
            }
        }

        /// Not differentiable itself (no second derivatives): only the backward step calls it,
        /// on the inner backend.
        fn fused_gelu_backward(
            x: AdTensor<B, C>,
            grad: AdTensor<B, C>,
            kind: GeluKind,
        ) -> AdTensor<B, C> {
            Self::from_inner(B::fused_gelu_backward(
                x.into_primitive(),
                grad.into_primitive(),
                kind,
            ))
        }
    }
}

#[cfg(all(test, feature = "flex", feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu_approximate;

    type Act = fn(Tensor<3>) -> Tensor<3>;

    /// The value and the input's gradient of `sum(f(x) · w)` for a fixed random `x` and `w`.
    fn value_and_grad(f: Act, device: &Device, transposed: bool) -> (Vec<f32>, Vec<f32>) {
        // Fixed values, not the device's generator, which tests running alongside also draw from.
        let values = |f: fn(f32) -> f32| {
            let v: Vec<f32> = (0..6000).map(|i| f(i as f32)).collect();
            Tensor::<3>::from_data(TensorData::new(v, [3, 40, 50]), device)
        };
        let x = values(|i| 5.0 * (0.61 * i).sin()).require_grad();
        let w = values(|i| (1.3 * i).cos());
        // A transposed view reaches the kernels as a non-contiguous tensor.
        let y = if transposed {
            f(x.clone().swap_dims(1, 2)).swap_dims(1, 2)
        } else {
            f(x.clone())
        };
        let grads = (y.clone() * w).sum().backward();
        let g = x.grad(&grads).expect("x takes part in the loss");
        let flat = |t: Tensor<3>| t.into_data().try_into_vec::<f32>().expect("f32 values");
        (flat(y.inner()), flat(g))
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn fused_gelus_equal_burns_ops_forward_and_backward() {
        let cases: [(Act, Act); 2] = [
            (gelu, burn::tensor::activation::gelu),
            (gelu_tanh, gelu_approximate),
        ];
        for (ours, burns) in cases {
            // flex's own `gelu_backward` is the exact derivative; burn-backend's default, which
            // ndarray uses, is the tanh form's (see `gelu`), so the reference runs on flex.
            let reference = value_and_grad(burns, &Device::flex().autodiff(), false);
            // The fused kernels on flex, contiguous and strided, and the composed form elsewhere.
            // The composed form's f32 rounding reaches 5e-6 here; burn's own `gelu` gradient
            // off flex is 2.7e-3 away, so 1e-5 still tells them apart.
            #[allow(deprecated)]
            let ndarray = Device::ndarray();
            let runs = [
                (Device::flex(), false, 2e-6),
                (Device::flex(), true, 2e-6),
                (ndarray, false, 1e-5),
            ];
            for (device, transposed, tol) in runs {
                let (y, g) = value_and_grad(ours, &device.clone().autodiff(), transposed);
                let (dy, dg) = (max_diff(&y, &reference.0), max_diff(&g, &reference.1));
                assert!(dy < tol && dg < tol, "{device:?} {transposed}: {dy} {dg}");
            }
        }
    }

    #[test]
    fn outside_autodiff_and_in_other_dtypes_it_is_the_same_function() {
        let device = Device::flex();
        let x = Tensor::<2>::random([64, 33], Distribution::Normal(0.0, 3.0), &device);
        let reference = burn::tensor::activation::gelu(x.clone()).into_data();
        let ours = gelu(x.clone()).into_data();
        ours.assert_approx_eq::<f32>(&reference, burn::tensor::Tolerance::absolute(1e-6));
        let x64 = x.cast(burn::tensor::DType::F64);
        let ours64 = gelu(x64.clone());
        assert_eq!(ours64.dtype(), burn::tensor::DType::F64);
        ours64
            .cast(burn::tensor::DType::F32)
            .into_data()
            .assert_approx_eq::<f32>(&reference, burn::tensor::Tolerance::absolute(1e-6));
    }
}

//! Layer normalisation as one fused op with a one-pass backward on flex.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::module::{Content, DisplaySettings, ModuleDisplay};
use burn::nn::LayerNorm;
use burn::prelude::*;

/// [`LayerNorm::forward`], fused forward and backward on flex.
///
/// On `Device::flex()` (plain or autodiff) the forward pass is one kernel over the rows, and the
/// backward pass another that gives the input's gradient and, when they are trained, `gamma`'s
/// and `beta`'s; both are vectorised and split across rayon's threads. burn 0.22.1 has no
/// autodiff rule for layer norm: under autodiff it records the nine ops of its decomposition
/// (mean, subtract, square, mean, add, square root, divide, scale, shift) and their backward
/// passes, each a single-threaded pass over the activations. On other devices it is the layer's
/// own `forward`.
///
/// Statistics are the biased variance in f32, as burn and PyTorch compute them; values and
/// gradients are within 1e-5 of burn's decomposition.
///
/// # Shapes
/// - `x`: `[..., d_model]` → the same
///
/// # Panics
/// If the last axis of `x` is not the layer's `d_model`, as [`LayerNorm::forward`] does.
pub fn layer_norm<const D: usize>(layer: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    let epsilon = match epsilon(layer) {
        Some(epsilon) if crate::device::is_flex(&x.device()) => epsilon,
        _ => return layer.forward(x),
    };
    let gamma = layer.gamma.val();
    let [d_model] = gamma.dims();
    assert!(
        D > 0 && x.dims()[D - 1] == d_model,
        "layer_norm: input {:?} does not end in d_model = {d_model}",
        x.dims()
    );
    // A missing bias is a constant zero: one small tensor keeps a single op signature.
    let beta = match &layer.beta {
        Some(beta) => beta.val(),
        None => Tensor::zeros([d_model], &gamma.device()),
    };
    Tensor::from_dispatch(<Dispatch as FusedLayerNorm>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// The layer's `epsilon`. burn-nn 0.22.1 keeps the field private; the layer's display content
/// carries it, written by f64's `Display`, which round-trips exactly. Should that ever change,
/// this is `None` and [`layer_norm`] runs the layer's own `forward`: slower, never different.
fn epsilon(layer: &LayerNorm) -> Option<f64> {
    let content = layer.custom_content(Content::new(DisplaySettings::new()))?;
    let attribute = content.attributes.iter().find(|a| a.name == "epsilon")?;
    attribute.value.parse().ok()
}

/// The backend extension: layer norm over the last axis and its backward pass, with kernels for
/// flex and a hand-written backward step under autodiff.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub(crate) trait FusedLayerNorm: Backend {
    /// `(x − mean) / √(var + epsilon) · gamma + beta` over the last axis.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// The gradients of `x`, `gamma` and `beta` from the output's gradient.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The row kernels on host slices.
mod host {
    use rayon::prelude::*;

    use crate::kernel::{Vectorised, row_task_len, sum_lanes, vectorised};

    /// The mean and `1/√(var + eps)` of one row.
    #[inline(always)]
    fn stats(x: &[f32], eps: f32) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = sum_lanes(x, x, |x, _| x) / n;
        let var = sum_lanes(x, x, |x, _| (x - mean) * (x - mean)) / n;
        (mean, 1.0 / (var + eps).sqrt())
    }

    /// Layer norm of each `gamma.len()`-long row of `x`.
    ///
    /// # Panics
    /// If `beta`'s length differs from `gamma`'s.
    pub(super) fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
        assert_eq!(gamma.len(), beta.len(), "gamma and beta differ in length");
        let mut out = vec![0.0; x.len()];
        if !gamma.is_empty() {
            let n = row_task_len(gamma.len());
            out.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .for_each(|(out, x)| {
                    vectorised(Forward {
                        x,
                        gamma,
                        beta,
                        eps,
                        out,
                    })
                });
        }
        out
    }

    /// The gradients of `x`, `gamma` and `beta` from the output's gradient `g`.
    ///
    /// `gamma`'s and `beta`'s are summed over rows per rayon task, then over tasks in order, so
    /// a run gives the same bits every time.
    ///
    /// # Panics
    /// If `g`'s length differs from `x`'s.
    pub(super) fn backward(
        x: &[f32],
        gamma: &[f32],
        g: &[f32],
        eps: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        assert_eq!(x.len(), g.len(), "gradient and input differ in length");
        let d = gamma.len();
        let mut dx = vec![0.0; x.len()];
        let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
        if d == 0 {
            return (dx, dgamma, dbeta);
        }
        let n = row_task_len(d);
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .map(|(dx, (x, g))| {
                let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
                vectorised(Backward {
                    x,
                    g,
                    gamma,
                    eps,
                    dx,
                    dgamma: &mut dgamma,
                    dbeta: &mut dbeta,
                });
                (dgamma, dbeta)
            })
            .collect();
        for (pg, pb) in partials {
            for (sum, p) in dgamma.iter_mut().zip(pg) {
                *sum += p;
            }
            for (sum, p) in dbeta.iter_mut().zip(pb) {
                *sum += p;
            }
        }
        (dx, dgamma, dbeta)
    }

    /// Forward over whole rows.
    struct Forward<'a> {
        x: &'a [f32],
        gamma: &'a [f32],
        beta: &'a [f32],
        eps: f32,
        out: &'a mut [f32],
    }

    impl Vectorised for Forward<'_> {
        type Output = ();

        #[inline(always)]
        fn run(self) {
            let d = self.gamma.len();
            for (x, out) in self.x.chunks(d).zip(self.out.chunks_mut(d)) {
                let (mean, rstd) = stats(x, self.eps);
                let params = self.gamma.iter().zip(self.beta);
                for ((o, &x), (&gamma, &beta)) in out.iter_mut().zip(x).zip(params) {
                    *o = (x - mean) * rstd * gamma + beta;
                }
            }
        }
    }

    /// Backward over whole rows, with `x̂ = (x − mean)·rstd` and `gy = g·gamma`:
    /// `dx = rstd·(gy − mean(gy) − x̂·mean(gy·x̂))`, `dgamma += g·x̂`, `dbeta += g`.
    struct Backward<'a> {
        x: &'a [f32],
        g: &'a [f32],
        gamma: &'a [f32],
        eps: f32,
        dx: &'a mut [f32],
        dgamma: &'a mut [f32],
        dbeta: &'a mut [f32],
    }

    impl Vectorised for Backward<'_> {
        type Output = ();

        #[inline(always)]
        fn run(self) {
            let d = self.gamma.len();
            let inv_n = 1.0 / d as f32;
            let rows = self.x.chunks(d).zip(self.g.chunks(d));
            for ((x, g), dx) in rows.zip(self.dx.chunks_mut(d)) {
                let (mean, rstd) = stats(x, self.eps);
                // `dx` holds `gy` until the last loop overwrites it.
                for ((gy, &g), &gamma) in dx.iter_mut().zip(g).zip(self.gamma) {
                    *gy = g * gamma;
                }
                let mean_gy = sum_lanes(dx, dx, |gy, _| gy) * inv_n;
                let mean_gy_xhat = sum_lanes(dx, x, |gy, x| gy * (x - mean)) * rstd * inv_n;
                for (dx, &x) in dx.iter_mut().zip(x) {
                    let xhat = (x - mean) * rstd;
                    *dx = rstd * (*dx - mean_gy - xhat * mean_gy_xhat);
                }
                let params = self.dgamma.iter_mut().zip(self.dbeta.iter_mut());
                for (((dgamma, dbeta), &x), &g) in params.zip(x).zip(g) {
                    *dgamma += g * (x - mean) * rstd;
                    *dbeta += g;
                }
            }
        }
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::host;
    use crate::kernel::flex::{contiguous_f32, tensor, values};
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;

    impl super::FusedLayerNorm for Flex {
        fn fused_layer_norm(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            epsilon: f64,
        ) -> FlexTensor {
            let (dtype, shape) = (x.dtype(), x.layout().shape().clone());
            let [x, gamma, beta] = [x, gamma, beta].map(contiguous_f32);
            let out = host::forward(values(&x), values(&gamma), values(&beta), epsilon as f32);
            tensor(out, shape, dtype)
        }

        fn fused_layer_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            grad: FlexTensor,
            epsilon: f64,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let (dtype, shape) = (x.dtype(), x.layout().shape().clone());
            let (param_dtype, param_shape) = (gamma.dtype(), gamma.layout().shape().clone());
            let [x, gamma, grad] = [x, gamma, grad].map(contiguous_f32);
            let (dx, dgamma, dbeta) =
                host::backward(values(&x), values(&gamma), values(&grad), epsilon as f32);
            (
                tensor(dx, shape, dtype),
                tensor(dgamma, param_shape.clone(), param_dtype),
                tensor(dbeta, param_shape, param_dtype),
            )
        }
    }
}

/// The autodiff wrapper: the backward step keeps the input and `gamma` and recomputes each row's
/// mean and variance, one extra read of the input instead of two saved statistics.
mod autodiff {
    use super::FusedLayerNorm;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{AutodiffBackend, Backend};

    type AdTensor<B, C> = FloatTensor<Autodiff<B, C>>;

    /// The backward step: parents are `x`, `gamma` and `beta`; the state is `x` and `gamma`.
    #[derive(Debug)]
    struct LayerNormStep {
        epsilon: f64,
    }

    impl<B: Backend + FusedLayerNorm> Backward<B, 3> for LayerNormStep {
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let (x, gamma) = ops.state;
            let (dx, dgamma, dbeta) = B::fused_layer_norm_backward(x, gamma, grad, self.epsilon);
            for (parent, grad) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    impl<B: Backend + FusedLayerNorm, C: CheckpointStrategy> FusedLayerNorm for Autodiff<B, C> {
        fn fused_layer_norm(
            x: AdTensor<B, C>,
            gamma: AdTensor<B, C>,
            beta: AdTensor<B, C>,
            epsilon: f64,
        ) -> AdTensor<B, C> {
            let step = LayerNormStep { epsilon };
            let nodes = [x.node(), gamma.node(), beta.node()];
            let (x, gamma, beta) = (
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
            );
            match step.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let state = (x.clone(), gamma.clone());
                    prep.finish(state, B::fused_layer_norm(x, gamma, beta, epsilon))
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::fused_layer_norm(x, gamma, beta, epsilon))
                }
            }
        }

        /// Not differentiable itself (no second derivatives): only the backward step calls it,
        /// on the inner backend.
        fn fused_layer_norm_backward(
            x: AdTensor<B, C>,
            gamma: AdTensor<B, C>,
            grad: AdTensor<B, C>,
            epsilon: f64,
        ) -> (AdTensor<B, C>, AdTensor<B, C>, AdTensor<B, C>) {
            let (dx, dgamma, dbeta) = B::fused_layer_norm_backward(
                x.into_primitive(),
                gamma.into_primitive(),
                grad.into_primitive(),
                epsilon,
            );
            (
                Self::from_inner(dx),
                Self::from_inner(dgamma),
                Self::from_inner(dbeta),
            )
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    use burn::tensor::{DType, Tolerance};

    /// A layer of width 67 (a tail past the 16-lane sums) with non-trivial `gamma` and `beta`.
    fn test_layer(device: &Device, bias: bool) -> LayerNorm {
        let mut layer = LayerNormConfig::new(67)
            .with_epsilon(1e-5)
            .with_bias(bias)
            .init(device);
        let ramp = |a: f32, b: f32| {
            let v: Vec<f32> = (0..67).map(|i| a + b * (0.3 * i as f32).sin()).collect();
            Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v, [67]), device))
        };
        layer.gamma = ramp(1.0, 0.5);
        if bias {
            layer.beta = Some(ramp(0.1, 0.3));
        }
        layer
    }

    /// The output and the gradients of `x`, `gamma` and `beta` (if any) of `sum(f(x) · w)`,
    /// with `f` given the layer's parameters cast to `dtype` and the layer's epsilon.
    fn run(
        f: impl Fn(Tensor<3>, Tensor<1>, Option<Tensor<1>>) -> Tensor<3>,
        dtype: DType,
        bias: bool,
        transposed: bool,
    ) -> Vec<TensorData> {
        let device = Device::flex().autodiff();
        let layer = test_layer(&device, bias);
        let dims = if transposed { [2, 67, 9] } else { [2, 9, 67] };
        let values = |f: fn(f32) -> f32| {
            let v: Vec<f32> = (0..2 * 9 * 67).map(|i| f(i as f32)).collect();
            Tensor::<3>::from_data(TensorData::new(v, dims), &device).cast(dtype)
        };
        // Rows with a large offset test the two-pass variance.
        let x = values(|i| 3.0 * (0.61 * i).sin() + if i < 67.0 { 400.0 } else { 0.0 });
        let x = x.require_grad();
        let w = values(|i| (1.3 * i).cos());
        let (input, w) = if transposed {
            (x.clone().swap_dims(1, 2), w.swap_dims(1, 2))
        } else {
            (x.clone(), w)
        };
        let leaf = |p: &Param<Tensor<1>>| {
            let t = Tensor::<1>::from_data(p.val().into_data(), &device);
            t.cast(dtype).require_grad()
        };
        let (gamma, beta) = (leaf(&layer.gamma), layer.beta.as_ref().map(leaf));
        let y = f(input, gamma.clone(), beta.clone());
        let grads = (y.clone() * w).sum().backward();
        let f32_data = |t: Tensor<3>| t.cast(DType::F32).into_data();
        let mut out = vec![f32_data(y.inner()), f32_data(x.grad(&grads).unwrap())];
        out.push(gamma.grad(&grads).unwrap().cast(DType::F32).into_data());
        if let Some(beta) = beta {
            out.push(beta.grad(&grads).unwrap().cast(DType::F32).into_data());
        }
        out
    }

    /// Ours, in f32, against burn's decomposition in f64 (an independent reference, precise
    /// enough to judge f32 rounding on rows offset by 400).
    #[test]
    fn fused_layer_norm_equals_burns_forward_and_backward() {
        for bias in [true, false] {
            for transposed in [false, true] {
                let burns = |x, gamma, beta| burn::tensor::module::layer_norm(x, gamma, beta, 1e-5);
                let reference = run(burns, DType::F64, bias, transposed);
                let ours = |x: Tensor<3>, gamma, beta: Option<Tensor<1>>| {
                    let mut layer = test_layer(&x.device(), bias);
                    layer.gamma = Param::from_tensor(gamma);
                    layer.beta = beta.map(Param::from_tensor);
                    layer_norm(&layer, x)
                };
                let ours = run(ours, DType::F32, bias, transposed);
                assert_eq!(ours.len(), reference.len());
                for (o, r) in ours.iter().zip(&reference) {
                    o.assert_approx_eq::<f32>(r, Tolerance::absolute(1e-5));
                }
            }
        }
    }

    #[test]
    fn epsilon_is_read_back_exactly() {
        for eps in [1e-5, 1e-12, 0.1, 3.7e-9] {
            let layer = LayerNormConfig::new(4)
                .with_epsilon(eps)
                .init(&Device::flex());
            assert_eq!(epsilon(&layer), Some(eps));
        }
    }

    #[test]
    fn frozen_parameters_and_other_dtypes() {
        let device = Device::flex();
        let layer = test_layer(&device, true);
        let x = Tensor::<2>::random([33, 67], burn::tensor::Distribution::Default, &device);
        let reference = layer.forward(x.clone()).into_data();
        layer_norm(&layer, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&reference, Tolerance::absolute(1e-5));
        let wide = layer_norm(&layer, x.cast(burn::tensor::DType::F64));
        assert_eq!(wide.dtype(), burn::tensor::DType::F64);
        wide.cast(burn::tensor::DType::F32)
            .into_data()
            .assert_approx_eq::<f32>(&reference, Tolerance::absolute(1e-5));
        // Frozen gamma and beta (LoRA's case): only the input's gradient is registered.
        let ad = device.autodiff();
        let layer = test_layer(&ad, true).no_grad();
        let x = Tensor::<2>::random([5, 67], burn::tensor::Distribution::Default, &ad);
        let x = x.require_grad();
        let grads = layer_norm(&layer, x.clone()).sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(layer.gamma.val().grad(&grads).is_none());
    }
}

//! Softmax over the last axis as one fused op with a one-pass backward on flex.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;

/// [`burn::tensor::activation::softmax`], fused forward and backward on flex.
///
/// On `Device::flex()` (plain or autodiff) and along the last axis, the forward pass is one
/// kernel over the rows and the backward pass `y·(g − Σ g·y)` another, both vectorised (with
/// this crate's vectorisable `exp`) and split across rayon's threads. burn-flex 0.22.1 has a
/// fused forward too, but under autodiff burn decomposes softmax into five ops (max, subtract,
/// `exp`, sum, divide) and records the backward of each: about a dozen single-threaded passes
/// over an attention-score tensor per training step. Along another axis, or on another device,
/// it is burn's softmax.
///
/// Values are within 1e-6 of burn's. Probabilities and gradients below f32's smallest normal
/// value (1.2e-38), masked keys among them, are exactly 0: subnormal floats make every later
/// multiply on x86 take a slow microcode path, and with them in the attention probabilities the
/// README main job's GEMMs ran 9× slower.
///
/// # Shapes
/// - `x`: any → same
///
/// # Panics
/// If `dim` is not below the tensor's rank, as burn's softmax does.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if dim + 1 != D || !crate::device::is_flex(&x.device()) {
        return burn::tensor::activation::softmax(x, dim);
    }
    Tensor::from_dispatch(<Dispatch as FusedSoftmax>::fused_softmax(x.into_dispatch()))
}

/// The backend extension: softmax over the last axis and its backward pass, with kernels for
/// flex and a hand-written backward step under autodiff.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub(crate) trait FusedSoftmax: Backend {
    /// `softmax(x)` over the last axis.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The input's gradient, `y·(g − Σ g·y)` per row, from the output `y` and its gradient `g`.
    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The row kernels on host slices.
mod host {
    use rayon::prelude::*;

    use crate::kernel::{Vectorised, exp, flush, max_lanes, row_task_len, sum_lanes, vectorised};

    /// Softmax of each `row`-long run of `x`.
    pub(super) fn forward(x: &[f32], row: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        if row > 0 {
            let n = row_task_len(row);
            out.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .for_each(|(out, x)| vectorised(Forward { x, out, row }));
        }
        out
    }

    /// The input's gradient per `row`-long run, from the output `y` and its gradient `g`.
    ///
    /// # Panics
    /// If `g`'s length differs from `y`'s.
    pub(super) fn backward(y: &[f32], g: &[f32], row: usize) -> Vec<f32> {
        assert_eq!(y.len(), g.len(), "gradient and output differ in length");
        let mut out = vec![0.0; y.len()];
        if row > 0 {
            let n = row_task_len(row);
            out.par_chunks_mut(n)
                .zip(y.par_chunks(n).zip(g.par_chunks(n)))
                .for_each(|(out, (y, g))| vectorised(Backward { y, g, out, row }));
        }
        out
    }

    /// Forward over whole rows: max, `exp` of the shifted values and their sum, then scale.
    struct Forward<'a> {
        x: &'a [f32],
        out: &'a mut [f32],
        row: usize,
    }

    impl Vectorised for Forward<'_> {
        type Output = ();

        #[inline(always)]
        fn run(self) {
            for (x, out) in self.x.chunks(self.row).zip(self.out.chunks_mut(self.row)) {
                let max = max_lanes(x);
                for (o, &x) in out.iter_mut().zip(x) {
                    // Below −87, `exp` clamps; the true value is 0 to f32 after normalising.
                    let d = x - max;
                    *o = if d < -87.0 { 0.0 } else { exp(d) };
                }
                let scale = 1.0 / sum_lanes(out, out, |e, _| e);
                for o in out.iter_mut() {
                    *o = flush(*o * scale);
                }
            }
        }
    }

    /// Backward over whole rows: `y·(g − Σ g·y)`.
    struct Backward<'a> {
        y: &'a [f32],
        g: &'a [f32],
        out: &'a mut [f32],
        row: usize,
    }

    impl Vectorised for Backward<'_> {
        type Output = ();

        #[inline(always)]
        fn run(self) {
            let rows = self.y.chunks(self.row).zip(self.g.chunks(self.row));
            for ((y, g), out) in rows.zip(self.out.chunks_mut(self.row)) {
                let dot = sum_lanes(y, g, |y, g| y * g);
                for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                    *o = flush(y * (g - dot));
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

    impl super::FusedSoftmax for Flex {
        fn fused_softmax(x: FlexTensor) -> FlexTensor {
            let (dtype, shape) = (x.dtype(), x.layout().shape().clone());
            let row = shape.last().copied().unwrap_or(1);
            let x = contiguous_f32(x);
            tensor(host::forward(values(&x), row), shape, dtype)
        }

        fn fused_softmax_backward(y: FlexTensor, grad: FlexTensor) -> FlexTensor {
            let (dtype, shape) = (y.dtype(), y.layout().shape().clone());
            let row = shape.last().copied().unwrap_or(1);
            let (y, grad) = (contiguous_f32(y), contiguous_f32(grad));
            tensor(host::backward(values(&y), values(&grad), row), shape, dtype)
        }
    }
}

/// The autodiff wrapper: the backward step keeps the output, which the forward pass returns
/// anyway, so it costs no memory of its own.
mod autodiff {
    use super::FusedSoftmax;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{AutodiffBackend, Backend};

    type AdTensor<B, C> = FloatTensor<Autodiff<B, C>>;

    /// The backward step, with the forward output as its state.
    #[derive(Debug)]
    struct SoftmaxStep;

    impl<B: Backend + FusedSoftmax> Backward<B, 1> for SoftmaxStep {
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let y = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                B::fused_softmax_backward(y, grad)
            });
        }
    }

    impl<B: Backend + FusedSoftmax, C: CheckpointStrategy> FusedSoftmax for Autodiff<B, C> {
        fn fused_softmax(x: AdTensor<B, C>) -> AdTensor<B, C> {
            match SoftmaxStep
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = B::fused_softmax(x.into_primitive());
                    prep.finish(y.clone(), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.into_primitive())),
            }
        }

        /// Not differentiable itself (no second derivatives): only the backward step calls it,
        /// on the inner backend.
        fn fused_softmax_backward(y: AdTensor<B, C>, grad: AdTensor<B, C>) -> AdTensor<B, C> {
            Self::from_inner(B::fused_softmax_backward(
                y.into_primitive(),
                grad.into_primitive(),
            ))
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Value and input gradient of `sum(f(x) · w)` on `device`, for fixed `x` (with masked
    /// keys, as the models have) and `w`; `transposed` hands `f` a strided view.
    fn value_and_grad(
        f: impl Fn(Tensor<4>) -> Tensor<4>,
        device: &Device,
        transposed: bool,
    ) -> (TensorData, TensorData) {
        let dims = if transposed {
            [2, 3, 37, 5]
        } else {
            [2, 3, 5, 37]
        };
        let values = |f: fn(usize) -> f32| {
            let v: Vec<f32> = (0..2 * 3 * 5 * 37).map(f).collect();
            Tensor::<4>::from_data(TensorData::new(v, dims), device)
        };
        let x = values(|i| {
            if i % 37 == 4 {
                -1e9
            } else {
                6.0 * (0.37 * i as f32).sin()
            }
        })
        .require_grad();
        let w = values(|i| (1.7 * i as f32).cos());
        let (y, w) = if transposed {
            (f(x.clone().swap_dims(2, 3)), w.swap_dims(2, 3))
        } else {
            (f(x.clone()), w)
        };
        let grads = (y.clone() * w).sum().backward();
        let g = x.grad(&grads).expect("x takes part in the loss");
        (y.inner().into_data(), g.into_data())
    }

    #[test]
    fn fused_softmax_equals_burns_forward_and_backward() {
        let device = Device::flex().autodiff();
        for transposed in [false, true] {
            let burns = |x: Tensor<4>| burn::tensor::activation::softmax(x, 3);
            let (y0, g0) = value_and_grad(burns, &device, transposed);
            let (y, g) = value_and_grad(|x| softmax(x, 3), &device, transposed);
            y.assert_approx_eq::<f32>(&y0, Tolerance::absolute(1e-6));
            g.assert_approx_eq::<f32>(&g0, Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn masked_and_vanishing_probabilities_are_zero_never_subnormal() {
        let row = [0.0, -1e9, -86.0, -88.0, -100.0, -1e30, 5.0];
        let x = Tensor::<2>::from_data(TensorData::new(row.to_vec(), [1, 7]), &Device::flex());
        let y = softmax(x, 1).into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|p| *p == 0.0 || p.is_normal()), "{y:?}");
        assert_eq!(&y[1..6], &[0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((y[0] + y[6] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rows_sum_to_one_and_other_axes_and_dtypes_fall_back() {
        let device = Device::flex();
        let x = Tensor::<3>::random([4, 7, 129], Distribution::Normal(0.0, 4.0), &device);
        let ours = softmax(x.clone(), 2);
        let sums = ours.clone().sum_dim(2).into_data();
        sums.assert_approx_eq::<f32>(
            &Tensor::<3>::ones([4, 7, 1], &device).into_data(),
            Tolerance::absolute(1e-6),
        );
        let burns = burn::tensor::activation::softmax(x.clone(), 2).into_data();
        ours.into_data()
            .assert_approx_eq::<f32>(&burns, Tolerance::absolute(1e-6));
        // Another axis is burn's own op; f64 goes through the f32 kernel and back.
        let mid = softmax(x.clone(), 1).into_data();
        mid.assert_approx_eq::<f32>(
            &burn::tensor::activation::softmax(x.clone(), 1).into_data(),
            Tolerance::absolute(1e-7),
        );
        let wide = softmax(x.cast(burn::tensor::DType::F64), 2);
        assert_eq!(wide.dtype(), burn::tensor::DType::F64);
        wide.cast(burn::tensor::DType::F32)
            .into_data()
            .assert_approx_eq::<f32>(&burns, Tolerance::absolute(1e-6));
    }
}

//! [`LoraLinear`]: a frozen linear layer plus named low-rank adapters, computed factored.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::linear;

use crate::config::AdapterSpec;
use crate::error::{LoraError, Result};
use crate::layer::{AdapterState, Factors, LayerKind, LoraLayer, check_shape, init_linear_factors};

/// `x · weight (+ bias)` over the last dimension, as **one 2-D matrix product**.
///
/// burn's [`linear`] multiplies a `[batch, seq, d_in]` input by the weight broadcast over the
/// batch, a batched product that is slower on the CPU backends, and whose weight gradient goes
/// through a `[batch, d_in, d_out]` intermediate summed afterwards. Folding the leading
/// dimensions into rows gives the same numbers with one GEMM each way.
///
/// # Shapes
/// - `x`: `[..., d_in]`, `weight`: `[d_in, d_out]`, `bias`: `[d_out]`
/// - output: `[..., d_out]`
pub fn linear_rows<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if D <= 2 {
        return linear(x, weight, bias);
    }
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y: Tensor<2> = linear(x.reshape([rows, dims[D - 1]]), weight, bias);
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// Configuration of a [`LoraLinear`] created from scratch (no adapters yet).
#[derive(Config, Debug)]
pub struct LoraLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the base layer has a bias (default `true`).
    #[config(default = true)]
    pub bias: bool,
}

impl LoraLinearConfig {
    /// Creates the layer with burn's default `Linear` initialisation and no adapter.
    /// Parameters stay lazy, so loading a checkpoint right after costs no random init.
    pub fn init(&self, device: &Device) -> LoraLinear {
        LoraLinear::from_linear(
            LinearConfig::new(self.d_input, self.d_output)
                .with_bias(self.bias)
                .init(device),
        )
    }
}

/// Bookkeeping of one adapter that burn does not record.
#[derive(Debug, Clone)]
pub struct AdapterMeta {
    /// Adapter name (`default` unless chosen otherwise).
    pub name: String,
    /// Rank of each slice.
    pub r: usize,
    /// Multiplier of the update (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f64,
    /// Whether the update is currently folded into the base weight.
    pub merged: bool,
    /// Output column ranges `(start, len)` the adapter writes to, one B factor each.
    /// A plain adapter has one slice covering all outputs.
    pub slices: Vec<(usize, usize)>,
    /// For a merged DoRA adapter: the per-output norms of `W + ΔW` the merge divided by, kept
    /// to undo it exactly (PEFT caches the same).
    pub dora_norm: Option<Tensor<1>>,
    /// The config's `bias` setting.
    pub bias: crate::config::BiasMode,
}

/// One adapter on a linear layer: `ΔW = scale · A · B`, with A `[d_in, k·r]` and one
/// B `[r, len]` per output slice (k = number of slices; k = 1 for plain LoRA).
#[derive(Module, Debug)]
pub struct LinearAdapter {
    /// A factor, `[d_in, k·r]` (PEFT's `lora_A.weight` transposed).
    pub lora_a: Param<Tensor<2>>,
    /// B factors, one `[r, len]` per slice (PEFT's `lora_B.weight` transposed).
    pub lora_b: Vec<Param<Tensor<2>>>,
    /// DoRA's magnitude `[d_out]` (PEFT's `lora_magnitude_vector`); `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter input; active only in training on an autodiff device.
    pub dropout: Dropout,
    /// Name, scale, merge state and slices.
    #[module(skip)]
    pub meta: AdapterMeta,
}

impl LinearAdapter {
    fn is_plain(&self, d_out: usize) -> bool {
        self.meta.slices.len() == 1 && self.meta.slices[0] == (0, d_out)
    }

    /// The adapter's contribution `scale · (dropout(x)·A)·B`.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]`
    /// - output: `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>, d_out: usize) -> Tensor<D> {
        self.branch(crate::dropout(&self.dropout, x), d_out)
    }

    /// DoRA's contribution (PEFT's `DoraLinearLayer`): with `f = m / ‖W + ΔW‖` per output
    /// (the norm detached, as in the DoRA paper's section 4.3) and `x̃ = dropout(x)`,
    /// `(f − 1)·(x̃·W) + f·scale·(x̃·A)·B`, which is `x̃·(f⊙(W + ΔW)) − x̃·W`.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]`, `weight`: `[d_in, d_out]`
    /// - output: `[..., d_out]`
    pub fn forward_dora<const D: usize>(&self, x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
        let d_out = weight.dims()[1];
        let Some(m) = &self.magnitude else {
            return self.forward(x, d_out);
        };
        let x = crate::dropout(&self.dropout, x);
        let norm = column_norm(weight.clone() + self.delta_weight(d_out)).detach();
        let mut shape = [1; D];
        shape[D - 1] = d_out;
        let f: Tensor<D> = (m.val() / norm).reshape(shape);
        let xw = linear_rows(x.clone(), weight, None);
        (f.clone() - 1.0) * xw + f * self.branch(x, d_out)
    }

    /// `scale · (x·A)·B` on an input already dropped out.
    fn branch<const D: usize>(&self, x: Tensor<D>, d_out: usize) -> Tensor<D> {
        let r = self.meta.r;
        // Scaling the rank-r activation is cheaper than scaling the d_out output; same result.
        let h = linear_rows(x, self.lora_a.val(), None).mul_scalar(self.meta.scale);
        if self.is_plain(d_out) {
            return linear_rows(h, self.lora_b[0].val(), None);
        }
        let mut dims = h.dims();
        let device = h.device();
        let mut pieces = Vec::with_capacity(2 * self.meta.slices.len() + 1);
        let mut at = 0;
        for (i, (&(start, len), b)) in self.meta.slices.iter().zip(&self.lora_b).enumerate() {
            if start > at {
                dims[D - 1] = start - at;
                pieces.push(Tensor::zeros(dims, &device));
            }
            pieces.push(linear_rows(
                h.clone().narrow(D - 1, i * r, r),
                b.val(),
                None,
            ));
            at = start + len;
        }
        if at < d_out {
            dims[D - 1] = d_out - at;
            pieces.push(Tensor::zeros(dims, &device));
        }
        Tensor::cat(pieces, D - 1)
    }

    /// The equivalent plain factors: A `[d_in, k·r]`, B `[k·r, d_out]` block-structured.
    pub fn factors(&self, d_out: usize) -> Factors {
        let a = self.lora_a.val();
        if self.is_plain(d_out) {
            return Factors {
                a,
                b: self.lora_b[0].val(),
                scale: self.meta.scale,
            };
        }
        let r = self.meta.r;
        let device = a.device();
        let rows = self
            .meta
            .slices
            .iter()
            .zip(&self.lora_b)
            .map(|(&(start, len), b)| {
                let mut parts = Vec::new();
                if start > 0 {
                    parts.push(Tensor::zeros([r, start], &device));
                }
                parts.push(b.val());
                if start + len < d_out {
                    parts.push(Tensor::zeros([r, d_out - start - len], &device));
                }
                Tensor::cat(parts, 1)
            })
            .collect();
        Factors {
            a,
            b: Tensor::cat(rows, 0),
            scale: self.meta.scale,
        }
    }

    /// `scale · A · B` as a `[d_in, d_out]` weight update, detached from any graph.
    pub fn delta_weight(&self, d_out: usize) -> Tensor<2> {
        let f = self.factors(d_out);
        f.a.matmul(f.b).mul_scalar(f.scale).detach()
    }
}

/// Per-output (column) L2 norm of a `[d_in, d_out]` weight: `[d_out]`.
pub(crate) fn column_norm(w: Tensor<2>) -> Tensor<1> {
    let d_out = w.dims()[1];
    w.powf_scalar(2.0).sum_dim(0).sqrt().reshape([d_out])
}

/// A linear layer `y = x·W + b` with LoRA adapters: `y = x·W + b + Σ scale·(dropout(x)·A)·B`
/// over the active, unmerged adapters.
///
/// `weight` is `[d_in, d_out]` as in [`burn::nn::Linear`]. The base weight and bias are frozen
/// when adapters are injected (see [`inject_adapter`](crate::inject_adapter)); only the factors
/// train. Fields are named like Hugging Face's (`weight`, `bias`) so parameter paths such as
/// `h.0.attn.c_attn.weight` equal the checkpoint's.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight `[d_in, d_out]`.
    pub weight: Param<Tensor<2>>,
    /// Base bias `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapters, in insertion order.
    pub adapters: Vec<LinearAdapter>,
    /// Active set and disable switch.
    #[module(skip)]
    pub state: AdapterState,
}

impl LoraLinear {
    /// Wraps a burn [`Linear`] (no adapter yet; it behaves exactly like the `Linear`).
    pub fn from_linear(linear: Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            adapters: Vec::new(),
            state: AdapterState::default(),
        }
    }

    /// Drops the adapters and returns the base as a burn [`Linear`]. Merged updates stay in the
    /// weight; call [`merge_and_unload`](Self::merge_and_unload) to keep the active adapters' effect.
    pub fn into_linear(self) -> Linear {
        Linear {
            weight: self.weight,
            bias: self.bias,
        }
    }

    /// Merges every active adapter into the weight and returns a plain [`Linear`].
    pub fn merge_and_unload(mut self) -> Result<Linear> {
        for name in self.state.active.clone() {
            self.merge(&name)?;
        }
        Ok(self.into_linear())
    }

    /// `(d_in, d_out)` of the base weight, without initialising lazy parameters.
    pub fn shape(&self) -> (usize, usize) {
        let s = self.weight.lazy_shape();
        (s[0], s[1])
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]`
    /// - output: `[..., d_out]`
    ///
    /// # Panics
    /// If the last dimension of `x` is not `d_in` (as burn-nn's `Linear` does, with a message
    /// that names both sizes).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let d_in = self.shape().0;
        assert_eq!(
            x.dims()[D - 1],
            d_in,
            "LoraLinear::forward: the input's last dimension is {}, the layer takes {d_in}",
            x.dims()[D - 1]
        );
        let base = linear_rows(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        if self.state.disabled {
            return base;
        }
        let d_out = self.shape().1;
        self.adapters
            .iter()
            .filter(|a| !a.meta.merged && self.state.active.contains(&a.meta.name))
            .fold(base, |y, a| match a.magnitude {
                None => y + a.forward(x.clone(), d_out),
                Some(_) => y + a.forward_dora(x.clone(), self.weight.val()),
            })
    }

    fn adapter(&self, name: &str) -> Result<&LinearAdapter> {
        self.adapters
            .iter()
            .find(|a| a.meta.name == name)
            .ok_or_else(|| unknown(name))
    }

    fn shift_weight(&mut self, delta: Tensor<2>, sign: f64) {
        let w = self.weight.val().detach();
        let shifted = w + delta.mul_scalar(sign);
        self.weight = replace(&self.weight, shifted);
    }
}

fn unknown(name: &str) -> LoraError {
    LoraError::UnknownAdapter {
        module: String::new(),
        adapter: name.to_string(),
    }
}

impl LoraLayer for LoraLinear {
    crate::layer::adapter_accessors!();

    fn kind(&self) -> LayerKind {
        LayerKind::Linear
    }

    fn dims(&self) -> (usize, usize) {
        self.shape()
    }

    fn add_adapter(&mut self, name: &str, spec: &AdapterSpec) -> Result<()> {
        let d_out = self.shape().1;
        self.add_sliced_adapter(name, spec, &[(0, d_out)])
    }

    fn add_sliced_adapter(
        &mut self,
        name: &str,
        spec: &AdapterSpec,
        slices: &[(usize, usize)],
    ) -> Result<()> {
        let (d_in, d_out) = self.shape();
        if self.adapter_index(name).is_ok() {
            return Err(LoraError::DuplicateAdapter {
                module: String::new(),
                adapter: name.to_string(),
            });
        }
        let sorted = checked_slices(slices, d_out)?;
        let plain = sorted == [(0, d_out)];
        if spec.dora && !plain {
            return Err(LoraError::Unsupported(
                "DoRA on an output-sliced adapter (e.g. q/v of a fused projection)".into(),
            ));
        }
        let (a, lora_b, residual) = if spec.init.changes_base() {
            // PiSSA / OLoRA take the adapter out of the base weight (computed and checked
            // before anything changes).
            if !plain || spec.dora {
                return Err(LoraError::Unsupported(format!(
                    "init_lora_weights {:?} with output slices or DoRA",
                    spec.init
                )));
            }
            let w = self.weight.val().detach();
            let (a, b, residual) = crate::base_init::base_factors(w, spec, name)?;
            (a, vec![Param::from_tensor(b)], Some(residual))
        } else {
            let device = self.weight.lazy_device();
            let k = sorted.len();
            let wide = AdapterSpec {
                r: spec.r * k,
                ..*spec
            };
            let (a, _) = init_linear_factors(d_in, 1, &wide, &device);
            let b = |len| Param::from_tensor(init_linear_factors(d_in, len, spec, &device).1);
            (a, sorted.iter().map(|&(_, len)| b(len)).collect(), None)
        };
        let mut adapter = LinearAdapter {
            lora_a: Param::from_tensor(a),
            lora_b,
            magnitude: None,
            dropout: DropoutConfig::new(spec.dropout).init(),
            meta: AdapterMeta {
                name: name.to_string(),
                r: spec.r,
                scale: spec.scale,
                merged: false,
                slices: sorted,
                dora_norm: None,
                bias: spec.bias,
            },
        };
        if spec.dora {
            // PEFT starts the magnitude at ‖W + ΔW‖, so DoRA starts where LoRA would.
            let w = self.weight.val().detach() + adapter.delta_weight(d_out);
            adapter.magnitude = Some(Param::from_tensor(column_norm(w).detach()));
        }
        if let Some(residual) = residual {
            self.weight = replace(&self.weight, residual);
        }
        self.adapters.push(adapter);
        self.state.active.push(name.to_string());
        Ok(())
    }

    fn merge(&mut self, name: &str) -> Result<()> {
        let i = self.adapter_index(name)?;
        if self.adapters[i].meta.merged {
            return Ok(());
        }
        let delta = self.adapters[i].delta_weight(self.shape().1);
        match self.adapters[i]
            .magnitude
            .as_ref()
            .map(|m| m.val().detach())
        {
            None => self.shift_weight(delta, 1.0),
            Some(m) => {
                // W' = f⊙(W + ΔW) with f = m / ‖W + ΔW‖ per output; the norm is kept to undo it.
                let w = self.weight.val().detach() + delta;
                let norm = column_norm(w.clone());
                let d_out = norm.dims()[0];
                let f: Tensor<2> = (m / norm.clone()).reshape([1, d_out]);
                self.weight = replace(&self.weight, w * f);
                self.adapters[i].meta.dora_norm = Some(norm);
            }
        }
        self.adapters[i].meta.merged = true;
        Ok(())
    }

    fn unmerge(&mut self, name: &str) -> Result<()> {
        let i = self.adapter_index(name)?;
        if !self.adapters[i].meta.merged {
            return Ok(());
        }
        let delta = self.adapters[i].delta_weight(self.shape().1);
        let magnitude = self.adapters[i]
            .magnitude
            .as_ref()
            .map(|m| m.val().detach());
        match (magnitude, self.adapters[i].meta.dora_norm.take()) {
            (Some(m), Some(norm)) => {
                let w = self.weight.val().detach();
                let d_out = norm.dims()[0];
                let f: Tensor<2> = (norm.to_device(&w.device()) / m).reshape([1, d_out]);
                self.weight = replace(&self.weight, w * f - delta);
            }
            _ => self.shift_weight(delta, -1.0),
        }
        self.adapters[i].meta.merged = false;
        Ok(())
    }

    fn factors(&self, name: &str) -> Result<Factors> {
        Ok(self.adapter(name)?.factors(self.shape().1))
    }

    fn set_factors(&mut self, name: &str, factors: Factors, key: &str) -> Result<()> {
        let (d_in, d_out) = self.shape();
        let i = self.adapter_index(name)?;
        if self.adapters[i].meta.merged {
            // Keep the base weight consistent with the factors it carries.
            self.unmerge(name)?;
        }
        let ad = &mut self.adapters[i];
        let r = ad.meta.r;
        let k = ad.meta.slices.len();
        check_shape(&format!("{key} (lora_A)"), &factors.a, [d_in, k * r])?;
        check_shape(&format!("{key} (lora_B)"), &factors.b, [k * r, d_out])?;
        ad.lora_a = replace(&ad.lora_a, factors.a);
        let slices = ad.meta.slices.clone();
        for (j, &(start, len)) in slices.iter().enumerate() {
            let block = factors
                .b
                .clone()
                .slice([j * r..(j + 1) * r, start..start + len]);
            ad.lora_b[j] = replace(&ad.lora_b[j], block);
        }
        ad.meta.scale = factors.scale;
        Ok(())
    }

    fn device(&self) -> Device {
        self.weight.lazy_device()
    }

    fn base_id(&self) -> burn::module::ParamId {
        self.weight.id
    }

    fn base_weight(&self) -> Tensor<2> {
        self.weight.base()
    }

    fn adapter_bias(&self, name: &str) -> Result<crate::config::BiasMode> {
        Ok(self.adapters[self.adapter_index(name)?].meta.bias)
    }

    fn magnitude(&self, name: &str) -> Result<Option<Tensor<1>>> {
        Ok(self.adapter(name)?.magnitude.as_ref().map(|m| m.val()))
    }

    fn set_magnitude(&mut self, name: &str, magnitude: Tensor<1>, key: &str) -> Result<()> {
        let d_out = self.shape().1;
        let i = self.adapter_index(name)?;
        if self.adapters[i].meta.merged {
            self.unmerge(name)?;
        }
        let found = magnitude.dims();
        let ad = &mut self.adapters[i];
        match &ad.magnitude {
            Some(m) if found == [d_out] => {
                ad.magnitude = Some(replace(m, magnitude));
                Ok(())
            }
            Some(_) => Err(LoraError::ShapeMismatch {
                key: key.to_string(),
                expected: vec![d_out],
                found: found.to_vec(),
            }),
            None => Err(LoraError::UnexpectedTensor {
                key: key.to_string(),
                file: Default::default(),
                reason: format!("adapter `{name}` is not a DoRA adapter"),
            }),
        }
    }

    fn has_bias(&self) -> bool {
        self.bias.is_some()
    }
}

/// A new value for an existing parameter: same id (so optimizer state keys stay valid), same
/// device and the same configured trainability. A lazy parameter is replaced without ever
/// running its initializer, so loading weights allocates no random init.
pub(crate) fn replace<const D: usize>(p: &Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    let id = p.id;
    p.clone().transform_for_load(value.detach(), id)
}

/// `slices` sorted, after checking they are non-empty, disjoint ranges inside `0..d_out`.
fn checked_slices(slices: &[(usize, usize)], d_out: usize) -> Result<Vec<(usize, usize)>> {
    if slices.is_empty() {
        return Err(LoraError::config("slices", "must not be empty"));
    }
    let mut sorted = slices.to_vec();
    sorted.sort();
    let mut end = 0;
    for &(start, len) in &sorted {
        if start < end || len == 0 || start.checked_add(len).is_none_or(|e| e > d_out) {
            return Err(LoraError::config(
                "slices",
                format!("{slices:?} must be non-empty, disjoint ranges inside 0..{d_out}"),
            ));
        }
        end = start + len;
    }
    Ok(sorted)
}

//! GPT-2's training step computed in segments, to trade compute for memory: activation
//! (gradient) checkpointing per block, and a causal-LM loss computed in token chunks so the
//! `[tokens, vocab]` logits never exist whole. See [`checkpoint`](crate::checkpoint) for how a
//! backward in segments works.

use burn::prelude::*;
use burn::tensor::Gradients;
use lora_core::LoraLayer;

use super::model::{Gpt2LmHeadModel, Gpt2Model};
use crate::checkpoint::{self, Stack, grad_of, push_vjp};
use crate::error::{ModelError, Result};
use lora_train::loss::{IGNORE_INDEX, cross_entropy_sum};

/// How a training step trades compute for memory. Both are off by default (one forward, one
/// backward, everything kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Activation checkpointing per transformer block: the forward keeps only each block's
    /// input; the backward runs the block again (with the same dropout masks) before
    /// differentiating it. About one extra forward per step; activations are held for one
    /// block at a time instead of all of them.
    pub checkpoint_blocks: bool,
    /// Compute the LM head and the loss this many target positions at a time, forward and
    /// backward of each chunk before the next, so the logits and their gradient exist for one
    /// chunk only (the idea of "cut cross-entropy"). `None`: all positions at once.
    pub loss_chunk: Option<usize>,
}

impl MemoryOptions {
    /// Whether nothing is traded: the plain forward and backward apply.
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }
}

/// A training step's mean loss and its gradients.
pub struct SegmentedStep {
    /// The mean loss `[1]`, detached.
    pub loss: Tensor<1>,
    /// Target positions the mean is over.
    pub count: usize,
    /// One `Gradients` per backward pass. A parameter used in several segments (the tied `wte`:
    /// input lookup and LM head) has its gradient split among them: sum them.
    pub parts: Vec<Gradients>,
}

/// GPT-2's body on one batch, as checkpointing sees it.
#[derive(Clone)]
struct Body<'a> {
    body: &'a Gpt2Model,
    ids: Tensor<2, Int>,
    positions: Tensor<2, Int>,
    mask: Tensor<4, Bool>,
}

impl Stack for Body<'_> {
    fn embed(&self) -> Tensor<3> {
        self.body.embed(self.ids.clone(), self.positions.clone())
    }
    fn len(&self) -> usize {
        self.body.h.len()
    }
    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3> {
        self.body.h[i].forward(x, self.mask.clone(), None).0
    }
}

impl Gpt2LmHeadModel {
    /// The mean next-token cross-entropy (with label smoothing `smoothing`) and its gradients,
    /// computed segment by segment as `options` says. The gradients equal those of
    /// `causal_lm_loss(self.forward(..), labels, smoothing).backward()` up to float rounding;
    /// with dropout the masks are drawn differently (checkpointing draws one seed per block so
    /// that the recomputation repeats its forward's masks). The model must be on an autodiff
    /// device.
    ///
    /// # Shapes
    /// - `ids`, `attention_mask`, `labels`: `[batch, seq]` (labels [`IGNORE_INDEX`] where ignored)
    pub fn loss_and_grads(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: Tensor<2, Int>,
        smoothing: f64,
        options: MemoryOptions,
    ) -> Result<SegmentedStep> {
        let body = &self.transformer;
        let (positions, mask) = body.inputs(&ids, attention_mask.as_ref(), None, 0, None)?;
        let [b, t] = ids.dims();
        if labels.dims() != [b, t] {
            return Err(ModelError::InvalidInput(format!(
                "labels are {:?}, expected [{b}, {t}]",
                labels.dims()
            )));
        }
        if options.loss_chunk == Some(0) {
            return Err(ModelError::InvalidInput(
                "loss_chunk must be at least 1".into(),
            ));
        }
        let count = target_count(&labels)?;
        let device = ids.device();
        let stack = Body {
            body,
            ids,
            positions,
            mask,
        };
        let chunk = options.loss_chunk;
        let mut parts = Vec::new();
        let loss = if options.checkpoint_blocks {
            let frozen_body = body.clone().no_grad();
            let frozen = Body {
                body: &frozen_body,
                ..stack.clone()
            };
            let (top, kept) = checkpoint::forward(&frozen, &device)?;
            let (loss, d_top) =
                self.head_backward(top, labels, smoothing, count, chunk, &mut parts)?;
            checkpoint::backward(&stack, kept, d_top, &device, &mut parts)?;
            loss
        } else {
            let top = (0..stack.len()).fold(stack.embed(), |x, i| stack.block(i, x));
            let detached = top.clone().detach();
            let (loss, d_top) =
                self.head_backward(detached, labels, smoothing, count, chunk, &mut parts)?;
            push_vjp(top, d_top, &mut parts);
            loss
        };
        Ok(SegmentedStep { loss, count, parts })
    }

    /// `ln_f`, the tied head and the loss, `chunk` target positions at a time: the mean loss
    /// and the gradient reaching the body's output.
    ///
    /// # Shapes
    /// - `top`: `[batch, seq ≥ 2, n_embd]` (detached), `labels`: `[batch, seq]`
    /// - output: loss `[1]`, gradient `[batch, seq, n_embd]` (zero at the last position, which
    ///   predicts nothing)
    fn head_backward(
        &self,
        top: Tensor<3>,
        labels: Tensor<2, Int>,
        smoothing: f64,
        count: usize,
        chunk: Option<usize>,
        parts: &mut Vec<Gradients>,
    ) -> Result<(Tensor<1>, Tensor<3>)> {
        let [b, t, d] = top.dims();
        let n = b * (t - 1);
        let device = top.device();
        let mut loss = Tensor::<1>::zeros([1], &device);
        let rows = top.narrow(1, 0, t - 1).reshape([n, d]);
        let targets = labels.narrow(1, 1, t - 1).reshape([n]);
        let size = chunk
            .unwrap_or(n)
            .min(self.max_logit_rows(&device))
            .clamp(1, n);
        let mut grads = Vec::with_capacity(n.div_ceil(size));
        for start in (0..n).step_by(size) {
            let len = size.min(n - start);
            let x = rows.clone().narrow(0, start, len).detach().require_grad();
            let z = lora_core::layer_norm(&self.transformer.ln_f, x.clone());
            // The head reads the table per chunk, since a backward consumes the graph of
            // everything it went through.
            let logits = self.transformer.lm_head(z);
            let part = cross_entropy_sum(logits, targets.clone().narrow(0, start, len), smoothing)
                .div_scalar(count as f64);
            let g = part.backward();
            grads.push(grad_of(&x, &g, "the head's input")?);
            loss = loss + part.detach();
            parts.push(g);
        }
        let d_rows: Tensor<3> = Tensor::cat(grads, 0).reshape([b, t - 1, d]);
        let last = Tensor::zeros([b, 1, d], &d_rows.device());
        Ok((loss, Tensor::cat(vec![d_rows, last], 1)))
    }
}

impl Gpt2LmHeadModel {
    /// The most target positions whose `[positions, vocab]` logits fit the device's per-tensor
    /// limit (unbounded on the CPU backends): the loss is chunked at least this finely.
    pub fn max_logit_rows(&self, device: &Device) -> usize {
        let vocab = self.transformer.wte.dims().0;
        lora_core::device::max_tensor_bytes(device)
            .map_or(usize::MAX, |limit| lora_core::rows_within(vocab, limit))
    }

    /// The mean next-token cross-entropy of a batch (label smoothing `smoothing`), with the
    /// head and loss computed [`memory`](Self::memory)`.loss_chunk` target positions at a time,
    /// or fewer where whole logits would exceed the device's per-tensor limit
    /// ([`max_logit_rows`](Self::max_logit_rows)); otherwise exactly
    /// `causal_lm_loss(self.forward(..), labels, smoothing)`. Differentiable: on an autodiff
    /// device its backward gives the step's gradients (every chunk's graph is kept; for lower
    /// memory see [`loss_and_grads`](Self::loss_and_grads)).
    ///
    /// # Shapes
    /// - `ids`, `attention_mask`, `labels`: `[batch, seq]` (labels [`IGNORE_INDEX`] where ignored)
    /// - output: `[1]`
    pub fn lm_loss(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        labels: Tensor<2, Int>,
        smoothing: f64,
    ) -> Result<Tensor<1>> {
        let [b, t] = ids.dims();
        let cap = self.max_logit_rows(&ids.device());
        let chunk = self.memory.loss_chunk.unwrap_or(usize::MAX).min(cap).max(1);
        if b * t <= chunk {
            let logits = self.forward(ids, attention_mask)?;
            return Ok(lora_train::loss::causal_lm_loss(logits, labels, smoothing));
        }
        if labels.dims() != [b, t] || t < 2 {
            return Err(ModelError::InvalidInput(format!(
                "labels are {:?} for ids {:?} (at least 2 positions)",
                labels.dims(),
                [b, t]
            )));
        }
        let (hidden, _) = self.transformer.forward(ids, attention_mask, None, None)?;
        let d = hidden.dims()[2];
        let n = b * (t - 1);
        let rows = hidden.narrow(1, 0, t - 1).reshape([n, d]);
        let targets = labels.narrow(1, 1, t - 1).reshape([n]);
        let count = targets.clone().not_equal_elem(IGNORE_INDEX).float().sum();
        let total = (0..n)
            .step_by(chunk)
            .fold(count.zeros_like(), |sum, start| {
                let len = chunk.min(n - start);
                let logits = self.transformer.lm_head(rows.clone().narrow(0, start, len));
                sum + cross_entropy_sum(logits, targets.clone().narrow(0, start, len), smoothing)
            });
        Ok(total / count)
    }
}

/// Target positions of a causal-LM batch: labels after the first position that are not ignored.
fn target_count(labels: &Tensor<2, Int>) -> Result<usize> {
    let t = labels.dims()[1];
    if t < 2 {
        return Err(ModelError::InvalidInput(
            "a causal-LM step needs at least 2 positions".into(),
        ));
    }
    let valid = labels
        .clone()
        .narrow(1, 1, t - 1)
        .not_equal_elem(IGNORE_INDEX);
    let count = valid.int().sum().into_scalar::<i64>();
    match usize::try_from(count) {
        Ok(0) | Err(_) => Err(ModelError::InvalidInput(
            "the batch has no target token".into(),
        )),
        Ok(n) => Ok(n),
    }
}

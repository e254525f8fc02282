//! Activation (gradient) checkpointing for any stack of transformer blocks, and the pieces of
//! a backward computed in segments.
//!
//! A segment (the embeddings, one block, a chunk of a loss) runs forward and then backward on its
//! own, from a detached input. The gradient reaching a segment's output becomes a backward pass
//! by differentiating `sum(output ⊙ grad)`, which gives the segment's parameter and input
//! gradients exactly (a vector-Jacobian product). burn's autodiff allows one backward per fresh
//! forward with parameters shared between them, so each segment yields a plain `Gradients`; a
//! parameter's gradient is the sum over the parts it appears in.

use burn::prelude::*;
use burn::tensor::Gradients;

use crate::error::{ModelError, Result};

/// A stack of blocks as checkpointing sees it: the embeddings that start it and one block
/// applied to a hidden state. Each call must draw dropout in the same order, so that a block run
/// again after the same seed repeats its masks.
pub(crate) trait Stack {
    /// The embeddings (after their dropout).
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    fn embed(&self) -> Tensor<3>;
    /// Number of blocks.
    fn len(&self) -> usize;
    /// Block `i`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3>;
}

/// What a checkpointed forward keeps for the backward: each block's input (untracked) and the
/// dropout seed of every segment.
pub(crate) struct Kept {
    /// Seeds: the embeddings, then each block.
    seeds: Vec<u64>,
    inputs: Vec<Tensor<3>>,
}

/// Runs the stack keeping only block inputs; the output is untracked.
///
/// `frozen` is the stack over the model's `no_grad()` copy: burn's autodiff keeps every
/// recorded operation (and the activations it saved) until the next backward, so the forward
/// must record nothing. Dropout stays on in a `no_grad` model (it keys on the device and the
/// training flag), so the backward's rerun on the live model repeats the same masks.
///
/// # Shapes
/// - output: `[batch, seq, hidden]`
pub(crate) fn forward(frozen: &impl Stack, device: &Device) -> Result<(Tensor<3>, Kept)> {
    let seeds = lora_core::device::draw_seeds(device, frozen.len() + 1)?;
    device.seed(seeds[0]);
    let mut x = frozen.embed();
    let mut inputs = Vec::with_capacity(frozen.len());
    for (i, &seed) in seeds[1..].iter().enumerate() {
        inputs.push(x.clone());
        device.seed(seed);
        x = frozen.block(i, x);
    }
    Ok((x, Kept { seeds, inputs }))
}

/// The backward of a checkpointed stack given the gradient at its output: each block again from
/// its kept input (same dropout seed), last to first, then the embeddings.
///
/// # Shapes
/// - `d_top`: `[batch, seq, hidden]`
pub(crate) fn backward(
    stack: &impl Stack,
    kept: Kept,
    d_top: Tensor<3>,
    device: &Device,
    parts: &mut Vec<Gradients>,
) -> Result<()> {
    let mut d = d_top;
    let blocks = kept.inputs.into_iter().zip(&kept.seeds[1..]).enumerate();
    for (i, (input, &seed)) in blocks.rev() {
        let x = input.require_grad();
        device.seed(seed);
        let g = (stack.block(i, x.clone()) * d).sum().backward();
        d = grad_of(&x, &g, "a block's input")?;
        parts.push(g);
    }
    device.seed(kept.seeds[0]);
    push_vjp(stack.embed(), d, parts);
    Ok(())
}

/// The backward of `sum(output ⊙ grad)`: `output`'s segment receives `grad`. Nothing when
/// nothing in the segment trains (the output is then untracked).
pub(crate) fn push_vjp<const D: usize>(
    output: Tensor<D>,
    grad: Tensor<D>,
    parts: &mut Vec<Gradients>,
) {
    if output.is_tracked() {
        parts.push((output * grad).sum().backward());
    }
}

/// The gradient that reached `x`, a segment's input.
pub(crate) fn grad_of<const D: usize>(
    x: &Tensor<D>,
    grads: &Gradients,
    what: &str,
) -> Result<Tensor<D>> {
    x.grad(grads).ok_or_else(|| {
        ModelError::InvalidInput(format!(
            "no gradient reached {what}: a segmented step needs the model on an autodiff device"
        ))
    })
}

//! Activation checkpointing per layer for the sequence classifiers' training step (see
//! [`checkpoint`](crate::checkpoint) for how a backward in segments works).

use burn::prelude::*;
use burn::tensor::Gradients;
use lora_core::dropout;

use super::model::{BertForSequenceClassification, BertModel, RobertaForSequenceClassification};
use crate::checkpoint::{self, Stack, grad_of};
use crate::error::{ModelError, Result};

/// The encoder body on one batch, as checkpointing sees it.
#[derive(Clone)]
struct Body<'a> {
    body: &'a BertModel,
    ids: Tensor<2, Int>,
    types: Tensor<2, Int>,
    mask: Tensor<4, Bool>,
}

impl Stack for Body<'_> {
    fn embed(&self) -> Tensor<3> {
        self.body
            .embeddings
            .forward(self.ids.clone(), self.types.clone())
    }
    fn len(&self) -> usize {
        self.body.encoder.layer.len()
    }
    fn block(&self, i: usize, x: Tensor<3>) -> Tensor<3> {
        self.body.encoder.layer[i].forward(x, self.mask.clone())
    }
}

/// A sequence classifier as [`checkpointed_step`] sees it: an encoder body and a head on its
/// last hidden state.
pub trait EncoderClassifier {
    /// The body.
    fn body(&self) -> &BertModel;
    /// The body, to set [`checkpoint_layers`](BertModel::checkpoint_layers).
    fn body_mut(&mut self) -> &mut BertModel;
    /// The head's logits.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, num_labels]`
    fn head(&self, hidden: Tensor<3>) -> Result<Tensor<2>>;
}

impl EncoderClassifier for RobertaForSequenceClassification {
    fn body(&self) -> &BertModel {
        &self.roberta
    }
    fn body_mut(&mut self) -> &mut BertModel {
        &mut self.roberta
    }
    fn head(&self, hidden: Tensor<3>) -> Result<Tensor<2>> {
        Ok(self.classifier.forward(hidden))
    }
}

impl EncoderClassifier for BertForSequenceClassification {
    fn body(&self) -> &BertModel {
        &self.bert
    }
    fn body_mut(&mut self) -> &mut BertModel {
        &mut self.bert
    }
    fn head(&self, hidden: Tensor<3>) -> Result<Tensor<2>> {
        let pooled = (self.bert.pooled_output(hidden))
            .ok_or_else(|| ModelError::InvalidInput("the BERT body has no pooler".into()))?;
        Ok(self.classifier.forward(dropout(&self.dropout, pooled)))
    }
}

/// A classifier's training step with activation checkpointing per layer: the forward keeps
/// only each layer's input, the backward runs each layer again (same dropout masks) before
/// differentiating it. `loss` turns the logits into the mean loss. Returns that loss
/// (detached) and the gradients, one `Gradients` per backward pass: sum a parameter's parts.
/// The gradients equal those of the plain `loss(model.forward(..)).backward()` (with dropout,
/// the masks are drawn differently). The model must be on an autodiff device.
///
/// # Shapes
/// - `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]`
pub fn checkpointed_step<M, E>(
    model: &M,
    input_ids: Tensor<2, Int>,
    attention_mask: Option<Tensor<2, Int>>,
    token_type_ids: Option<Tensor<2, Int>>,
    loss: impl FnOnce(Tensor<2>) -> std::result::Result<Tensor<1>, E>,
) -> std::result::Result<(Tensor<1>, Vec<Gradients>), E>
where
    M: EncoderClassifier,
    E: From<ModelError>,
{
    let body = model.body();
    let (types, mask) = body.inputs(&input_ids, attention_mask, token_type_ids)?;
    let device = input_ids.device();
    let stack = Body {
        body,
        ids: input_ids,
        types,
        mask,
    };
    let frozen_body = body.clone().no_grad();
    let frozen = Body {
        body: &frozen_body,
        ..stack.clone()
    };
    let (top, kept) = checkpoint::forward(&frozen, &device)?;
    let x = top.require_grad();
    let value = loss(model.head(x.clone())?)?;
    let grads = value.backward();
    let d_top = grad_of(&x, &grads, "the head's input")?;
    let mut parts = vec![grads];
    checkpoint::backward(&stack, kept, d_top, &device, &mut parts)?;
    Ok((value.detach(), parts))
}

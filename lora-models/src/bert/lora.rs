//! LoRA on the encoders with PEFT's defaults: `query` and `value` as targets, and for
//! sequence classification the classifier in `modules_to_save` (trained fully and saved with
//! the adapter).

use lora_core::{LoraConfig, TargetModules, inject_adapter};

use super::loader::EncoderCheckpoint;
use crate::error::Result;

/// PEFT's default targets for BERT and RoBERTa.
pub fn default_targets() -> TargetModules {
    TargetModules::List(vec!["query".into(), "value".into()])
}

/// Injects adapter `name` per `config`, filled in as PEFT does for the model's task: targets
/// `query`/`value` when the config names none, `task_type` (`SEQ_CLS` for the classifiers), and
/// the classifier added to `modules_to_save`. Returns the model and the config as used (save
/// the adapter with that one).
pub fn inject_encoder_lora<M: EncoderCheckpoint>(
    model: M,
    config: &LoraConfig,
    name: &str,
) -> Result<(M, LoraConfig)> {
    let mut config = config.clone();
    if config.target_modules.is_none() {
        config.target_modules = Some(default_targets());
    }
    if config.task_type.is_none() {
        config.task_type = Some(M::PEFT_TASK_TYPE.into());
    }
    if !M::PEFT_MODULES_TO_SAVE.is_empty() {
        let mut modules = config.modules_to_save.take().unwrap_or_default();
        for m in M::PEFT_MODULES_TO_SAVE {
            if !modules.iter().any(|x| x == m) {
                modules.push(m.to_string());
            }
        }
        config.modules_to_save = Some(modules);
    }
    config.fan_in_fan_out = false;
    let model = inject_adapter(model, &config, name)?;
    Ok((model, config))
}

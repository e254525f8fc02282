//! LoRA on GPT-2: PEFT's way (one adapter over the fused `c_attn`) or the paper's (q and v
//! slices only, loralib's `MergedLinear(enable_lora=[True, False, True])`).

use lora_core::{LoraConfig, TargetModules, inject_adapter_with};

use super::model::Gpt2LmHeadModel;
use crate::error::Result;

/// How an adapter on the fused `c_attn` (`[d, 3d]`: q, k, v) is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CAttnMode {
    /// One rank-r adapter over all of q, k and v (what PEFT does). Loads and saves PEFT adapters.
    #[default]
    Fused,
    /// A rank-r pair for q and one for v, k untouched (the LoRA paper's GPT-2 setup). Same
    /// parameter count as `Fused`; saved to PEFT as the equivalent rank-2r whole-matrix adapter
    /// (A = [A_q A_v], B block-structured, alpha doubled), which PEFT loads unchanged.
    QueryValue,
}

/// GPT-2's usual target: the fused attention projection.
pub fn default_targets() -> TargetModules {
    TargetModules::List(vec!["c_attn".into()])
}

/// Injects adapter `name` into GPT-2 per `config` (PEFT semantics; `c_attn` when the config
/// names no targets), with `c_attn` shaped by `mode`. PEFT users expect `fan_in_fan_out: true`
/// for GPT-2; it is set on the config used.
pub fn inject_gpt2_lora(
    model: Gpt2LmHeadModel,
    config: &LoraConfig,
    name: &str,
    mode: CAttnMode,
) -> Result<(Gpt2LmHeadModel, LoraConfig)> {
    let mut config = config.clone();
    if config.target_modules.is_none() {
        config.target_modules = Some(default_targets());
    }
    config.fan_in_fan_out = true;
    if config.task_type.is_none() {
        config.task_type = Some("CAUSAL_LM".into());
    }
    let slices = |path: &str, (_, d_out): (usize, usize)| match mode {
        CAttnMode::QueryValue if path.ends_with(".attn.c_attn") && d_out % 3 == 0 => {
            let d = d_out / 3;
            Some(vec![(0, d), (2 * d, d)])
        }
        _ => None,
    };
    let model = inject_adapter_with(model, &config, name, &slices)?;
    Ok((model, config))
}

//! The trainable-parameter report, in PEFT's words plus a per-module breakdown.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::Module;

use crate::config::LoraConfig;
use crate::model::{SavedRole, TrainPolicy, visit_params};
use crate::sites::LoraSites;

/// Parameter counts of one module (a LoRA site counts its adapters; other modules their own
/// parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleParams {
    /// Hugging Face module path.
    pub module: String,
    /// Parameters that train.
    pub trainable: usize,
    /// All parameters, adapters included.
    pub total: usize,
    /// Of `trainable`, how many are LoRA factors.
    pub lora: usize,
}

/// What trains and how much, under a config: `trainable params: X || all params: Y ||
/// trainable%: Z` (PEFT's `print_trainable_parameters`) and a per-module breakdown.
///
/// Trainability is derived from the config and the adapters present (the same rule that
/// [`inject_adapter`](crate::inject_adapter) applies), so the report is the same on every device,
/// autodiff or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamReport {
    /// Per module, in path order.
    pub modules: Vec<ModuleParams>,
    /// Total trainable parameters.
    pub trainable: usize,
    /// Total parameters (adapters and `modules_to_save` copies included, as PEFT counts).
    pub total: usize,
    /// `modules_to_save` entries that name no module of the model, so train nothing (PEFT
    /// says nothing; we list them). The heads PEFT adds for the task type are left out.
    pub unmatched_modules_to_save: Vec<String>,
}

impl ParamReport {
    /// Counts `model`'s parameters under `config`.
    pub fn new<M: Module + LoraSites>(model: &M, config: &LoraConfig) -> Self {
        let policy = TrainPolicy::new(model, config);
        Self::from_params(visit_params(model).into_iter().map(|p| {
            let n: usize = p.shape.iter().product();
            match &p.adapter_site {
                Some(site) => (site.clone(), n, p.adapter_active, true),
                None => {
                    let module = p
                        .hf_path
                        .rsplit_once('.')
                        .map_or(String::new(), |(m, _)| m.to_string());
                    let trains = match &p.saved {
                        None => policy.trains(&p.hf_path),
                        Some(SavedRole::Original) => false,
                        Some(SavedRole::Copy { trains, .. }) => *trains,
                    };
                    (module, n, trains, false)
                }
            }
        }))
        .with_unmatched(config)
    }

    /// Sums `(module, count, trains, is_lora)` rows per module.
    pub(crate) fn from_params(params: impl Iterator<Item = (String, usize, bool, bool)>) -> Self {
        let mut modules: BTreeMap<String, ModuleParams> = BTreeMap::new();
        for (module, n, trains, lora) in params {
            let row = modules.entry(module.clone()).or_insert(ModuleParams {
                module,
                trainable: 0,
                total: 0,
                lora: 0,
            });
            row.total += n;
            if trains {
                row.trainable += n;
            }
            if lora && trains {
                row.lora += n;
            }
        }
        let modules: Vec<ModuleParams> = modules.into_values().collect();
        Self {
            trainable: modules.iter().map(|m| m.trainable).sum(),
            total: modules.iter().map(|m| m.total).sum(),
            modules,
            unmatched_modules_to_save: Vec::new(),
        }
    }

    /// Fills [`unmatched_modules_to_save`](Self::unmatched_modules_to_save) from the module
    /// paths of the rows and their ancestors.
    pub(crate) fn with_unmatched(mut self, config: &LoraConfig) -> Self {
        let mut paths = std::collections::BTreeSet::new();
        for m in &self.modules {
            let ancestors = m.module.match_indices('.').map(|(i, _)| &m.module[..i]);
            paths.extend(ancestors.chain(std::iter::once(m.module.as_str())));
        }
        let heads = crate::targeting::task_head_modules(config.task_type.as_deref());
        self.unmatched_modules_to_save = config
            .unmatched_modules_to_save(paths.iter().copied())
            .into_iter()
            .filter(|m| !heads.contains(&m.as_str()))
            .collect();
        self
    }

    /// Trainable LoRA factor parameters.
    pub fn lora_params(&self) -> usize {
        self.modules.iter().map(|m| m.lora).sum()
    }

    /// `100 · trainable / total`.
    pub fn trainable_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        }
    }

    /// PEFT's one line: `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`,
    /// then, if any, the `modules_to_save` entries that matched nothing.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable),
            thousands(self.total),
            self.trainable_percent()
        );
        if !self.unmatched_modules_to_save.is_empty() {
            line.push_str(&format!(
                "\nmodules_to_save entries that match no module (nothing of them trains): {}",
                self.unmatched_modules_to_save.join(", ")
            ));
        }
        line
    }
}

impl fmt::Display for ParamReport {
    /// The summary line, then one line per module that trains.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        let width = self
            .modules
            .iter()
            .map(|m| m.module.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            f,
            "{:<width$}  {:>12}  {:>12}  {:>12}",
            "module", "trainable", "lora", "total"
        )?;
        for m in self.modules.iter().filter(|m| m.trainable > 0) {
            writeln!(
                f,
                "{:<width$}  {:>12}  {:>12}  {:>12}",
                m.module,
                thousands(m.trainable),
                thousands(m.lora),
                thousands(m.total)
            )?;
        }
        Ok(())
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

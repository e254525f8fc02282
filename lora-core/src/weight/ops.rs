//! Model-level operations on weight adapters: inject, switch, merge, delete, unload, report.
//!
//! Each one reads the model's adapter state ([`scan`]), computes the new state, checks
//! everything, and only then rebuilds the model: an error leaves nothing half-done.

use std::collections::{BTreeSet, HashMap};

use burn::module::{Module, Param};
use burn::prelude::*;

use crate::config::{AdapterSpec, LoraConfig, TargetModules};
use crate::error::{LoraError, Result};
use crate::layer::{init_embedding_factors, init_linear_factors};
use crate::model::{TrainPolicy, one_bias_adapter};
use crate::report::ParamReport;
use crate::saved::{self, SavedParam};

use super::paths::PathMap;
use super::reparam::{AdapterFactors, AdapterMeta, Layout, WeightLora, dora_norm};
use super::sites::{
    BaseParam, Edit, Scan, apply_trainability, rebuild, rebuild_without_copies, scan,
    sync_adapter_grads,
};

/// One parameter `config` selects.
pub(crate) struct Target {
    pub param: BaseParam,
    pub layout: Layout,
    pub spec: AdapterSpec,
}

/// The parameters `config` selects on a scanned model, after PEFT's rules applied to PEFT
/// paths. Errors when nothing matches (listing what could be targeted), and for DoRA where it
/// is not implemented.
pub(crate) fn select(scan: &Scan, config: &LoraConfig) -> Result<Vec<Target>> {
    let parameters = config.target_parameter_list()?;
    let mut out = Vec::new();
    for p in &scan.params {
        let by_module = match p.module_layout() {
            Some(layout) => config
                .is_target(p.peft_module(), layout == Layout::Linear)?
                .then_some(layout),
            None => None,
        };
        let by_param = parameters
            .iter()
            .any(|t| p.peft_path == *t || p.peft_path.ends_with(&format!(".{t}")));
        let layout = match (by_module, by_param) {
            (Some(layout), _) => layout,
            (None, true) => param_layout(p)?,
            (None, false) => continue,
        };
        if config.use_dora && layout != Layout::Linear {
            return Err(LoraError::Unsupported(format!(
                "use_dora on `{}` ({layout:?}): DoRA is implemented for Linear weights only",
                p.peft_module()
            )));
        }
        let spec = config.spec_for(p.peft_module())?;
        // An expert stack's factors have r·E rows; a corrupt rank must not overflow them.
        if layout == Layout::Experts && spec.r.checked_mul(p.shape[0]).is_none() {
            return Err(LoraError::config(
                "r",
                format!("{} times {} experts overflows", spec.r, p.shape[0]),
            ));
        }
        out.push(Target {
            param: p.clone(),
            layout,
            spec,
        });
    }
    if out.is_empty() {
        return Err(no_target(scan, config, &parameters));
    }
    shared_module_check(&out)?;
    Ok(out)
}

/// Two adapted parameters of one module would share PEFT's keys (`<module>.lora_A.weight`);
/// PEFT tells them apart by nesting wrappers in the order the module registers its parameters,
/// which burn does not record, so such a selection is refused rather than guessed.
fn shared_module_check(targets: &[Target]) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for t in targets {
        if let Some(other) = seen.insert(t.param.peft_module().to_string(), &t.param.peft_path) {
            return Err(LoraError::Unsupported(format!(
                "two adapted parameters in one module (`{other}` and `{}`): their PEFT keys \
                 would coincide",
                t.param.peft_path
            )));
        }
    }
    Ok(())
}

/// The layout of a raw parameter named by `target_parameters` (a Linear or Embedding weight
/// keeps its own).
fn param_layout(p: &BaseParam) -> Result<Layout> {
    if let Some(layout) = p.module_layout() {
        return Ok(layout);
    }
    match p.shape.len() {
        2 => Ok(Layout::Param2),
        3 => Ok(Layout::Experts),
        n => Err(LoraError::Unsupported(format!(
            "target_parameters `{}` is {n}-D; only 2-D and 3-D parameters can be adapted (as in PEFT)",
            p.peft_path
        ))),
    }
}

fn no_target(scan: &Scan, config: &LoraConfig, parameters: &[String]) -> LoraError {
    let mut targets = match &config.target_modules {
        None => "(none given)".to_string(),
        Some(TargetModules::List(l)) => format!("{l:?}"),
        Some(TargetModules::Regex(r)) => format!("\"{r}\""),
    };
    if !parameters.is_empty() {
        targets.push_str(&format!(" / target_parameters {parameters:?}"));
    }
    let modules: Vec<String> = scan
        .params
        .iter()
        .filter(|p| p.module_layout().is_some())
        .map(|p| p.peft_module().to_string())
        .collect();
    let raw: Vec<String> = scan
        .params
        .iter()
        .filter(|p| p.module_layout().is_none() && matches!(p.shape.len(), 2 | 3))
        .map(|p| p.peft_path.clone())
        .collect();
    LoraError::NoTargetMatched {
        targets,
        available: format!(
            "Linear/Embedding modules [{}]; 2-D/3-D parameters [{}]",
            modules.join(", "),
            raw.join(", ")
        ),
    }
}

/// What weight-level adapters cannot do, refused before anything is touched.
fn check_weight_config(config: &LoraConfig) -> Result<()> {
    config.validate()?;
    config.init_lora_weights.check_initialisable()?;
    if config.init_lora_weights.changes_base() {
        return Err(LoraError::Unsupported(format!(
            "init_lora_weights {} on weight-level adapters (PiSSA and OLoRA are implemented for \
             LoraLinear)",
            serde_json::json!(config.init_lora_weights)
        )));
    }
    if config.lora_dropout > 0.0 {
        return Err(LoraError::Unsupported(format!(
            "lora_dropout = {} on weight-level adapters: dropout acts on a layer's input, which a \
             weight reparameterization never sees (PEFT refuses it on target_parameters too); \
             use 0, or LoraLinear for models written for lora-burn",
            config.lora_dropout
        )));
    }
    Ok(())
}

/// Refuses `name` where a selected parameter already has an adapter of that name.
fn check_new_name(found: &Scan, targets: &[Target], name: &str) -> Result<()> {
    for t in targets {
        if let Some(l) = found.sites.get(&t.param.burn_path)
            && l.metas.iter().any(|m| m.name == name)
        {
            return Err(LoraError::DuplicateAdapter {
                module: t.param.peft_module().to_string(),
                adapter: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Attaches adapter `name` to every parameter `config` selects (PEFT's `get_peft_model` /
/// `add_adapter`) on any burn module, then freezes everything except the adapters and what
/// `bias` and `modules_to_save` select. As in PEFT, only a model's first adapter starts active;
/// later ones are added inactive (and frozen) until [`set_active_adapters`] names them.
///
/// Targets are matched against the paths `map` gives (see [`PathMap`]). All checks run before
/// the model is touched.
pub fn inject_adapter<M: Module>(
    model: M,
    config: &LoraConfig,
    name: &str,
    map: &PathMap,
) -> Result<M> {
    check_weight_config(config)?;
    let found = scan(&model, map);
    check_one_bias_adapter(&found, config, name)?;
    let first = found.adapter_names().is_empty();
    let targets = select(&found, config)?;
    check_new_name(&found, &targets, name)?;
    let values = base_values(
        &model,
        &targets.iter().map(|t| t.param.burn_path.clone()).collect(),
    );
    let mut edits = keep_all(&found);
    for t in targets {
        let value = values
            .get(&t.param.burn_path)
            .cloned()
            .ok_or_else(|| LoraError::Device(format!("no value for {}", t.param.burn_path)))?;
        let lora = edits
            .entry(t.param.burn_path.clone())
            .or_insert_with(|| Edit {
                base: None,
                lora: None,
            })
            .lora
            .get_or_insert_with(|| WeightLora {
                adapters: Vec::new(),
                metas: Vec::new(),
                layout: t.layout,
                experts: if t.layout == Layout::Experts {
                    t.param.shape[0]
                } else {
                    1
                },
                disabled: false,
            });
        let factors = init_factors(lora, &t, value, config.use_dora);
        lora.adapters.push(factors);
        lora.metas.push(AdapterMeta {
            name: name.to_string(),
            r: t.spec.r,
            scale: t.spec.scale,
            active: first,
            merged: false,
            bias: config.bias,
        });
    }
    let model = add_saved_copies(rebuild(model, edits), &found, config, name, first)?;
    if !first {
        return Ok(sync_adapter_grads(model));
    }
    let adapted = scan(&model, map).adapted_modules();
    Ok(apply_trainability(model, config, map, adapted))
}

/// Gives adapter `name` its copy of every parameter of the modules `config.modules_to_save`
/// names (PEFT's `ModulesToSaveWrapper`); the first adapter's copies start in use.
pub(crate) fn add_saved_copies<M: Module>(
    model: M,
    found: &Scan,
    config: &LoraConfig,
    name: &str,
    first: bool,
) -> Result<M> {
    let params: Vec<SavedParam> = (found.params.iter())
        .filter(|p| config.saves_module(p.peft_module()))
        .map(|p| SavedParam {
            burn_path: p.burn_path.clone(),
            leaf: p.leaf().to_string(),
            owner: p.owner.clone(),
        })
        .collect();
    if params.is_empty() {
        return Ok(model);
    }
    let sets = saved::with_new_copies(&model, &params, name, first)?;
    Ok(saved::replace_copies(model, sets))
}

/// PEFT allows one adapter per model whose config has `bias` other than `none`.
fn check_one_bias_adapter(found: &Scan, config: &LoraConfig, name: &str) -> Result<()> {
    let existing = found.sites.values().flat_map(|l| &l.metas);
    one_bias_adapter(existing.map(|m| (m.name.as_str(), m.bias)), config, name)
}
/// Fresh factors following PEFT's init for the layout (and DoRA's magnitude `‖W + ΔW‖`).
fn init_factors(lora: &WeightLora, t: &Target, w: Tensor<3>, dora: bool) -> AdapterFactors {
    let device = w.device();
    let s = &t.param.shape;
    let (a, b) = match t.layout {
        Layout::Linear => init_linear_factors(s[0], s[1], &t.spec, &device),
        Layout::Embedding => init_embedding_factors(s[0], s[1], &t.spec, &device),
        Layout::Param2 => init_linear_factors(s[1], s[0], &t.spec, &device),
        Layout::Experts => {
            let spec = AdapterSpec {
                r: t.spec.r * s[0],
                ..t.spec
            };
            init_linear_factors(s[2], s[1], &spec, &device)
        }
    };
    let mut factors = AdapterFactors {
        // Stored in PEFT's orientation; `detach` makes the transposed views leaves again.
        lora_a: Param::from_tensor(a.transpose().detach()),
        lora_b: Param::from_tensor(b.transpose().detach()),
        magnitude: None,
        merge_norm: None,
    };
    if dora {
        let meta = AdapterMeta {
            name: String::new(),
            r: t.spec.r,
            scale: t.spec.scale,
            active: true,
            merged: false,
            bias: t.spec.bias,
        };
        let delta = lora.delta_of(&factors, &meta).detach();
        let d_out = s[1];
        let norm: Tensor<1> = dora_norm(w, delta).reshape([d_out]);
        factors.magnitude = Some(Param::from_tensor(norm.detach()));
    }
    factors
}

/// Every existing adapter set, unchanged.
fn keep_all(found: &Scan) -> HashMap<String, Edit> {
    found
        .sites
        .iter()
        .map(|(path, l)| {
            let edit = Edit {
                base: None,
                lora: Some(l.clone()),
            };
            (path.clone(), edit)
        })
        .collect()
}

/// The stored (base) values of the named parameters, as rank-3 tensors (`[1, a, b]` for 2-D).
pub(crate) fn base_values<M: Module>(
    model: &M,
    paths: &BTreeSet<String>,
) -> HashMap<String, Tensor<3>> {
    let values = crate::model::stored_values(model, paths).into_iter();
    values
        .map(|(path, (v, s))| {
            let v3 = match s.as_slice() {
                [a, b] => v.reshape([1, *a, *b]),
                _ => v.reshape([s[0], s[1], s[2]]),
            };
            (path, v3.detach())
        })
        .collect()
}

/// Names of the weight adapters on the model, in first-seen order.
pub fn adapter_names<M: Module>(model: &M) -> Vec<String> {
    scan(model, &PathMap::identity()).adapter_names()
}

/// Changes the adapter state of every parameter with `f(base value, set)`, which may return a
/// new base value; then rebuilds. Errors when `name` (if given) is on no parameter.
pub(crate) fn edit_sets<M: Module>(
    model: M,
    name: Option<&str>,
    mut f: impl FnMut(&str, &mut Tensor<3>, &mut WeightLora) -> Result<bool>,
) -> Result<M> {
    let found = scan(&model, &PathMap::identity());
    if let Some(n) = name
        && !found.adapter_names().iter().any(|a| a == n)
    {
        return Err(LoraError::UnknownAdapter {
            module: "(any)".into(),
            adapter: n.to_string(),
        });
    }
    let values = base_values(&model, &found.sites.keys().cloned().collect());
    let mut edits = HashMap::new();
    for (path, lora) in &found.sites {
        let mut lora = lora.clone();
        let Some(mut w) = values.get(path).cloned() else {
            continue;
        };
        let changed = f(path, &mut w, &mut lora)?;
        let base = changed.then_some(w);
        edits.insert(
            path.clone(),
            Edit {
                base,
                lora: Some(lora),
            },
        );
    }
    Ok(rebuild(model, edits))
}

/// Folds adapter `name` into the base weights wherever it is (no-op where already merged).
/// DoRA adapters become `(m/‖W+ΔW‖)⊙(W+ΔW)`, and the norm is kept to undo it.
pub fn merge_adapter<M: Module>(model: M, name: &str) -> Result<M> {
    edit_sets(model, Some(name), |_, w, lora| {
        let Some(i) = lora.metas.iter().position(|m| m.name == name) else {
            return Ok(false);
        };
        Ok(merge_one(w, lora, i))
    })
}

/// [`merge_adapter`] on a copy of `model`, refused with [`LoraError::NonFinite`] when a merged
/// weight would hold NaN or infinity (PEFT's `safe_merge=True`); `model` itself is untouched.
pub fn safe_merge_adapter<M: Module>(model: &M, name: &str) -> Result<M> {
    edit_sets(model.clone(), Some(name), |path, w, lora| {
        let Some(i) = lora.metas.iter().position(|m| m.name == name) else {
            return Ok(false);
        };
        let changed = merge_one(w, lora, i);
        if changed && !crate::layer::all_finite(w.clone()) {
            return Err(LoraError::NonFinite {
                key: path.to_string(),
                context: format!("merging adapter `{name}` would give this weight; nothing merged"),
            });
        }
        Ok(changed)
    })
}

/// Takes merged adapter `name` back out of the base weights (no-op where not merged).
pub fn unmerge_adapter<M: Module>(model: M, name: &str) -> Result<M> {
    edit_sets(model, Some(name), |_, w, lora| {
        let Some(i) = lora.metas.iter().position(|m| m.name == name) else {
            return Ok(false);
        };
        Ok(unmerge_one(w, lora, i))
    })
}

fn merge_one(w: &mut Tensor<3>, lora: &mut WeightLora, i: usize) -> bool {
    if lora.metas[i].merged {
        return false;
    }
    let delta = lora.delta_of(&lora.adapters[i], &lora.metas[i]).detach();
    let f = &mut lora.adapters[i];
    *w = match &f.magnitude {
        None => w.clone() + delta,
        Some(m) => {
            let norm = dora_norm(w.clone(), delta.clone());
            let d_out = norm.dims()[2];
            let factor = m.val().detach().reshape([1, 1, d_out]) / norm.clone();
            let cache = norm.clone().reshape([d_out]).detach();
            f.merge_norm = Some(Param::initialized(burn::module::ParamId::new(), cache));
            (w.clone() + delta) * factor
        }
    };
    lora.metas[i].merged = true;
    true
}

fn unmerge_one(w: &mut Tensor<3>, lora: &mut WeightLora, i: usize) -> bool {
    if !lora.metas[i].merged {
        return false;
    }
    let delta = lora.delta_of(&lora.adapters[i], &lora.metas[i]).detach();
    let f = &mut lora.adapters[i];
    *w = match (&f.magnitude, f.merge_norm.take()) {
        (Some(m), Some(norm)) => {
            let d_out = norm.dims()[0];
            let norm = norm.val().reshape([1, 1, d_out]).to_device(&w.device());
            w.clone() * norm / m.val().detach().reshape([1, 1, d_out]) - delta
        }
        _ => w.clone() - delta,
    };
    lora.metas[i].merged = false;
    true
}

/// Makes exactly `names` active on every parameter (each keeps those it has); merged adapters
/// that become inactive are unmerged first. Errors if a name is on no parameter.
pub fn set_active_adapters<M: Module>(model: M, names: &[&str]) -> Result<M> {
    let have = adapter_names(&model);
    if let Some(n) = names.iter().find(|n| !have.iter().any(|h| h == *n)) {
        return Err(LoraError::UnknownAdapter {
            module: "(any)".into(),
            adapter: n.to_string(),
        });
    }
    let model = saved::edit(model, |sets| saved::activate(sets, names))?;
    let model = edit_sets(model, None, |_, w, lora| {
        let mut changed = false;
        for i in 0..lora.metas.len() {
            let active = names.contains(&lora.metas[i].name.as_str());
            if !active {
                changed |= unmerge_one(w, lora, i);
            }
            lora.metas[i].active = active;
        }
        Ok(changed)
    })?;
    Ok(sync_adapter_grads(model))
}

/// Turns every adapter off (the base model's output, original `modules_to_save` modules
/// included; merged adapters are unmerged first) or back on.
pub fn set_adapters_disabled<M: Module>(model: M, disabled: bool) -> Result<M> {
    let model = edit_sets(model, None, |_, w, lora| {
        let mut changed = false;
        if disabled {
            for i in 0..lora.metas.len() {
                changed |= unmerge_one(w, lora, i);
            }
        }
        lora.disabled = disabled;
        Ok(changed)
    })?;
    let model = saved::edit(model, |sets| {
        saved::disable(sets, disabled);
        Ok(())
    })?;
    Ok(sync_adapter_grads(model))
}

/// Removes adapter `name` from every parameter (unmerging it first where merged); a parameter
/// left without adapters becomes plain.
pub fn delete_adapter<M: Module>(model: M, name: &str) -> Result<M> {
    let first_site = first_adapted(&model);
    let model = edit_sets(model, Some(name), |_, w, lora| {
        let Some(i) = lora.metas.iter().position(|m| m.name == name) else {
            return Ok(false);
        };
        let changed = unmerge_one(w, lora, i);
        lora.adapters.remove(i);
        lora.metas.remove(i);
        Ok(changed)
    })?;
    // PEFT: the last active adapter gone, each site activates its alphabetically first one.
    let found = scan(&model, &PathMap::identity());
    let any_active = (found.sites.values().flat_map(|l| &l.metas)).any(|m| m.active);
    let model = match any_active {
        true => model,
        false => edit_sets(model, None, |_, _, lora| {
            let first = lora.metas.iter_mut().min_by(|a, b| a.name.cmp(&b.name));
            if let Some(m) = first {
                m.active = true;
            }
            Ok(false)
        })?,
    };
    // PEFT: `modules_to_save` follow the first LoRA layer's active adapters.
    let found = scan(&model, &PathMap::identity());
    let new_active: Vec<String> = (first_site.and_then(|p| found.sites.get(&p)))
        .map(|l| l.metas.iter().filter(|m| m.active).map(|m| m.name.clone()))
        .into_iter()
        .flatten()
        .collect();
    let model = saved::edit(model, |sets| {
        saved::delete(sets, name, &new_active);
        Ok(())
    })?;
    Ok(sync_adapter_grads(model))
}

/// The burn path of the first adapted parameter in traversal order (PEFT's first tuner layer).
fn first_adapted<M: Module>(model: &M) -> Option<String> {
    let found = scan(model, &PathMap::identity());
    (found.params.iter())
        .find(|p| found.sites.contains_key(&p.burn_path))
        .map(|p| p.burn_path.clone())
}

/// Folds every active adapter into the base weights and removes all adapters: an ordinary
/// module again (no reparameterization, inference at base cost, saveable as a plain burn
/// record). PEFT's `merge_and_unload`.
pub fn merge_and_unload<M: Module>(model: M) -> M {
    // `materialize` stores each parameter's effective value: base plus the live adapters
    // (merged ones are already in the base).
    model.materialize()
}

/// Removes all adapters without merging (merged ones are unmerged first): the base module back,
/// except that a `modules_to_save` module keeps the active adapter's copy, as PEFT's `unload`
/// does.
pub fn unload<M: Module>(model: M) -> Result<M> {
    let copies = saved::scan_copies(&model);
    let model = set_adapters_disabled(model, true)?;
    let mut edits = HashMap::new();
    for (path, set) in copies {
        if let Some(copy) = set.active.and_then(|i| set.copies.get(i)) {
            let n = copy.lazy_shape().num_elements();
            let base = Some(copy.val().reshape([1, 1, n]).detach());
            edits.insert(path, Edit { base, lora: None });
        }
    }
    Ok(rebuild_without_copies(model, edits))
}

/// PEFT's trainable-parameter report for a model adapted with [`inject_adapter`], under
/// `config` and `map` (active adapters train, like PEFT; base parameters as `config` says).
pub fn report<M: Module>(model: &M, config: &LoraConfig, map: &PathMap) -> ParamReport {
    let found = scan(model, map);
    let mut rows = Vec::new();
    for (path, lora) in &found.sites {
        let module = found.module_of(path);
        for (f, meta) in lora.adapters.iter().zip(&lora.metas) {
            let n = f.lora_a.lazy_shape().num_elements()
                + f.lora_b.lazy_shape().num_elements()
                + f.magnitude
                    .as_ref()
                    .map_or(0, |m| m.lazy_shape().num_elements());
            rows.push((module.clone(), n, meta.active && !lora.disabled, true));
        }
    }
    let adapted = found.adapted_modules();
    let policy = TrainPolicy::from_sites(config, adapted);
    let copies = saved::scan_copies(model);
    for p in &found.params {
        let n = p.shape.iter().product();
        let module = p.peft_module().to_string();
        let Some(set) = copies.get(&p.burn_path) else {
            rows.push((module, n, policy.trains(&p.peft_path), false));
            continue;
        };
        // PEFT counts the frozen original and every copy; the copy in use trains.
        rows.push((module.clone(), n, false, false));
        for i in 0..set.copies.len() {
            let trains = set.active == Some(i) && !set.disabled;
            rows.push((module.clone(), n, trains, false));
        }
    }
    ParamReport::from_params(rows.into_iter()).with_unmatched(config)
}

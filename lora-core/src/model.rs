//! Model-level operations: inject adapters by target rules, decide what trains, merge,
//! switch and delete adapters across every site.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

use crate::config::{BiasMode, LoraConfig, TargetModules};
use crate::error::{LoraError, Result};
use crate::layer::{LayerKind, LoraLayer};
use crate::saved::{self, SavedParam};
use crate::sites::LoraSites;

/// Every site path a model offers, in traversal order.
pub fn site_paths<M: LoraSites + ?Sized>(model: &M) -> Vec<String> {
    let mut out = Vec::new();
    model.visit_lora_sites("", &mut |p, _| out.push(p.to_string()));
    out
}

/// Paths of the sites that carry the named adapter (any adapter when `name` is `None`).
pub fn adapted_paths<M: LoraSites + ?Sized>(model: &M, name: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    model.visit_lora_sites("", &mut |p, l| {
        let names = l.adapter_names();
        if name.map_or(!names.is_empty(), |n| names.iter().any(|x| x == n)) {
            out.push(p.to_string());
        }
    });
    out
}

/// The sites `config` selects, each with its kind, after PEFT's target rules.
/// Errors when nothing matches, listing what exists.
pub fn select_targets<M: LoraSites + ?Sized>(
    model: &M,
    config: &LoraConfig,
) -> Result<Vec<(String, LayerKind)>> {
    config.validate()?;
    config.check_factored()?;
    let mut sites = Vec::new();
    model.visit_lora_sites("", &mut |p, l| sites.push((p.to_string(), l.kind())));
    let mut selected = Vec::new();
    for (path, kind) in &sites {
        if config.is_target(path, *kind == LayerKind::Linear)? {
            selected.push((path.clone(), *kind));
        }
    }
    if config.use_dora
        && let Some((path, _)) = selected.iter().find(|(_, k)| *k == LayerKind::Embedding)
    {
        return Err(LoraError::Unsupported(format!(
            "use_dora on the embedding `{path}`: DoRA is implemented for linear layers only"
        )));
    }
    if selected.is_empty() {
        let targets = match &config.target_modules {
            None => "(none given)".to_string(),
            Some(TargetModules::List(l)) => format!("{l:?}"),
            Some(TargetModules::Regex(r)) => format!("\"{r}\""),
        };
        let available: Vec<&str> = sites.iter().map(|(p, _)| p.as_str()).collect();
        return Err(LoraError::NoTargetMatched {
            targets,
            available: if available.is_empty() {
                "(the model has no LoRA-capable module)".into()
            } else {
                available.join(", ")
            },
        });
    }
    Ok(selected)
}

/// Attaches adapter `name` to every site `config` selects (PEFT's `get_peft_model` /
/// `add_adapter`), then freezes everything except the adapters and what `bias` and
/// `modules_to_save` select.
///
/// All checks run before the model is touched, so an error leaves nothing half-done (the model is
/// returned only on success; clone it first if you need it after a failure; cloning a burn
/// module is cheap).
pub fn inject_adapter<M: Module + LoraSites>(
    model: M,
    config: &LoraConfig,
    name: &str,
) -> Result<M> {
    inject_adapter_with(model, config, name, &|_, _| None)
}

/// Errors when the module visitor finds a `LoraLinear`/`LoraEmbedding` that the model's
/// [`LoraSites`] does not list: `lora_sites!` is a hand-kept field list, and a forgotten field
/// would otherwise be skipped by every target rule without a word.
pub fn check_sites_listed<M: Module + LoraSites>(model: &M) -> Result<()> {
    let mut listed = Vec::new();
    let mut ids = std::collections::HashSet::new();
    model.visit_lora_sites("", &mut |p, l| {
        listed.push(p.to_string());
        ids.insert(l.base_id());
    });
    let unlisted = factored_sites(model)
        .into_iter()
        .find(|(id, _)| !ids.contains(id))
        .map(|(_, path)| path);
    match unlisted {
        Some(module) => Err(LoraError::UnlistedSite {
            module,
            listed: listed.join(", "),
        }),
        None => Ok(()),
    }
}

/// Output-slice chooser for [`inject_adapter_with`]: given a site path and its `(d_in, d_out)`,
/// `Some(ranges)` puts a sliced adapter there (see [`LoraLayer::add_sliced_adapter`]).
pub type SliceFn<'a> = dyn Fn(&str, (usize, usize)) -> Option<Vec<(usize, usize)>> + 'a;

/// [`inject_adapter`], with some sites getting sliced adapters (e.g. only q and v of GPT-2's
/// fused `c_attn`, as in the LoRA paper).
pub fn inject_adapter_with<M: Module + LoraSites>(
    model: M,
    config: &LoraConfig,
    name: &str,
    slices: &SliceFn<'_>,
) -> Result<M> {
    check_sites_listed(&model)?;
    config.init_lora_weights.check_initialisable()?;
    check_one_bias_adapter(&model, config, name)?;
    let selected = select_targets(&model, config)?;
    let mut specs = Vec::with_capacity(selected.len());
    for (path, _) in &selected {
        specs.push((path.clone(), config.spec_for(path)?));
    }
    let mut clash = None;
    model.visit_lora_sites("", &mut |p, l| {
        if clash.is_none()
            && specs.iter().any(|(s, _)| s == p)
            && l.adapter_names().iter().any(|n| n == name)
        {
            clash = Some(p.to_string());
        }
    });
    if let Some(module) = clash {
        return Err(LoraError::DuplicateAdapter {
            module,
            adapter: name.to_string(),
        });
    }
    // PEFT's `add_adapter`: only a model's first adapter starts active; later ones are added
    // inactive (and so frozen) until `set_active_adapters` names them.
    let first = adapted_paths(&model, None).is_empty();
    let mut model = model;
    model.visit_lora_sites_mut("", &mut |p, l| match specs.iter().find(|(s, _)| s == p) {
        Some((_, spec)) => {
            let before = l.active();
            match slices(p, l.dims()) {
                Some(ranges) => l.add_sliced_adapter(name, spec, &ranges),
                None => l.add_adapter(name, spec),
            }
            .and_then(|()| if first { Ok(()) } else { l.set_active(&before) })
            .map_err(|e| at(e, p))
        }
        None => Ok(()),
    })?;
    let model = add_saved_copies(model, config, name, first)?;
    Ok(if first {
        apply_trainability(model, config)
    } else {
        sync_adapter_grads(model)
    })
}

/// Gives adapter `name` its copy of every parameter of the modules `config.modules_to_save`
/// names (PEFT's `ModulesToSaveWrapper`); the first adapter's copies start in use.
pub(crate) fn add_saved_copies<M: Module + LoraSites>(
    model: M,
    config: &LoraConfig,
    name: &str,
    first: bool,
) -> Result<M> {
    let params: Vec<SavedParam> = visit_params(&model)
        .into_iter()
        .filter(|p| p.adapter_site.is_none() && !matches!(p.saved, Some(SavedRole::Copy { .. })))
        .filter(|p| {
            let module = p.hf_path.rsplit_once('.').map_or("", |(m, _)| m);
            config.saves_module(module)
        })
        .map(|p| SavedParam {
            leaf: p
                .burn_path
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            burn_path: p.burn_path,
            owner: p.owner,
        })
        .collect();
    if params.is_empty() {
        return Ok(model);
    }
    let sets = saved::with_new_copies(&model, &params, name, first)?;
    Ok(saved::replace_copies(model, sets))
}

/// PEFT allows one adapter per model whose config has `bias` other than `none`.
fn check_one_bias_adapter<M: LoraSites + ?Sized>(
    model: &M,
    config: &LoraConfig,
    name: &str,
) -> Result<()> {
    let mut existing = Vec::new();
    model.visit_lora_sites("", &mut |_, l| {
        for n in l.adapter_names() {
            if let Ok(b) = l.adapter_bias(&n) {
                existing.push((n, b));
            }
        }
    });
    one_bias_adapter(existing.iter().map(|(n, b)| (n.as_str(), *b)), config, name)
}

/// The rule behind both paths' checks: `config` (for adapter `name`) may use `bias` only if no
/// other adapter of `existing` (name, bias) does.
pub(crate) fn one_bias_adapter<'a>(
    mut existing: impl Iterator<Item = (&'a str, BiasMode)>,
    config: &LoraConfig,
    name: &str,
) -> Result<()> {
    if config.bias == BiasMode::None {
        return Ok(());
    }
    match existing.find(|(n, b)| *n != name && *b != BiasMode::None) {
        None => Ok(()),
        Some((other, _)) => Err(LoraError::config(
            "bias",
            format!(
                "adapter `{other}` already trains biases; only one adapter per model may have \
                 bias other than \"none\" (as in PEFT)"
            ),
        )),
    }
}
/// Sets which parameters train: every adapter factor, plus the biases `config.bias` selects and
/// the parameters of `config.modules_to_save`. Everything else is frozen (no gradient, so no
/// optimizer state).
pub fn apply_trainability<M: Module + LoraSites>(model: M, config: &LoraConfig) -> M {
    let policy = TrainPolicy::new(&model, config);
    map_trainability(model, Some(&policy))
}

/// Sets which adapter factors train: those of active adapters (PEFT's `set_adapter`). Other
/// parameters keep their setting.
pub fn sync_adapter_grads<M: Module + LoraSites>(model: M) -> M {
    map_trainability(model, None)
}

fn map_trainability<M: Module + LoraSites>(model: M, policy: Option<&TrainPolicy>) -> M {
    let mut mapper = TrainMapper {
        walk: PathWalk::default(),
        policy,
        active: active_slots(&model),
        originals: saved::scan_copies(&model).into_keys().collect(),
        model: &model,
    };
    let mapped = model.clone().map(&mut mapper);
    drop(mapper);
    mapped
}

/// `(burn path of the site, adapter index)` of every active adapter (none while a site's
/// adapters are disabled: PEFT freezes them then). Sites are found by their base weight's id,
/// since [`LoraSites`] may name a site differently from its burn path.
fn active_slots<M: Module + LoraSites>(model: &M) -> BTreeSet<(String, usize)> {
    let mut active_by_base = std::collections::HashMap::new();
    model.visit_lora_sites("", &mut |_, l| {
        let active = if l.disabled() { Vec::new() } else { l.active() };
        let slots: Vec<usize> = (l.adapter_names().iter().enumerate())
            .filter(|(_, n)| active.contains(n))
            .map(|(i, _)| i)
            .collect();
        active_by_base.insert(l.base_id(), slots);
    });
    let mut out = BTreeSet::new();
    for (id, site) in factored_sites(model) {
        for &i in active_by_base.get(&id).into_iter().flatten() {
            out.insert((site.clone(), i));
        }
    }
    out
}

/// Every `LoraLinear` / `LoraEmbedding` the module visitor finds: its base weight's id and its
/// burn path, in traversal order.
fn factored_sites<M: Module>(model: &M) -> Vec<(ParamId, String)> {
    struct V {
        walk: PathWalk,
        out: Vec<(ParamId, String)>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if saved::copy_state(&self.walk).is_some() {
                // A `modules_to_save` copy looks like its parameter; it is not a site.
                return;
            }
            let owner = self.walk.kinds.last().map_or("", |k| k.as_str());
            let is_base = matches!(owner, "Struct:LoraLinear" | "Struct:LoraEmbedding")
                && self.walk.path.last().is_some_and(|l| l == "weight");
            if is_base {
                let module = &self.walk.path[..self.walk.path.len() - 1];
                self.out.push((param.id, module.join(".")));
            }
        }
    }
    let mut v = V {
        walk: PathWalk::default(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// Decides whether a non-adapter parameter trains under a config.
pub struct TrainPolicy {
    bias: BiasMode,
    modules_to_save: LoraConfig,
    lora_sites: BTreeSet<String>,
}

impl TrainPolicy {
    /// The policy of `config` on `model` (the sites with adapters matter for `lora_only`).
    pub fn new<M: LoraSites + ?Sized>(model: &M, config: &LoraConfig) -> Self {
        Self {
            bias: config.bias,
            modules_to_save: config.clone(),
            lora_sites: adapted_paths(model, None).into_iter().collect(),
        }
    }

    /// The policy of `config` when the adapted modules (Hugging Face paths) are known.
    pub fn from_sites(config: &LoraConfig, adapted_modules: BTreeSet<String>) -> Self {
        Self {
            bias: config.bias,
            modules_to_save: config.clone(),
            lora_sites: adapted_modules,
        }
    }

    /// Whether the parameter at Hugging Face path `hf_path` (e.g. `h.0.mlp.c_fc.bias`) trains.
    pub fn trains(&self, hf_path: &str) -> bool {
        let (module, leaf) = hf_path.rsplit_once('.').unwrap_or(("", hf_path));
        if self.modules_to_save.saves_module(module) {
            return true;
        }
        let is_bias = leaf == "bias";
        match self.bias {
            BiasMode::None => false,
            BiasMode::All => is_bias,
            BiasMode::LoraOnly => is_bias && self.lora_sites.contains(module),
        }
    }
}

/// A parameter id that depends only on the parameter's path (FNV-1a of `lora-burn:<path>`).
pub(crate) fn stable_id(path: &str) -> ParamId {
    let mut h = crate::hash::Fnv1a::new();
    h.bytes(b"lora-burn:");
    h.bytes(path.as_bytes());
    ParamId::from(h.finish())
}

/// The stored values of the parameters at the given burn paths, flattened, with their shapes.
/// The visitor hands out each parameter without its reparameterization, so an adapted or saved
/// parameter gives its base (the original).
pub(crate) fn stored_values<M: Module>(
    model: &M,
    paths: &BTreeSet<String>,
) -> BTreeMap<String, (Tensor<1>, Vec<usize>)> {
    struct V<'a> {
        walk: PathWalk,
        paths: &'a BTreeSet<String>,
        out: BTreeMap<String, (Tensor<1>, Vec<usize>)>,
    }
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.walk.path.join(".");
            if self.paths.contains(&path) && !self.out.contains_key(&path) {
                let v = param.val();
                let shape = v.dims().to_vec();
                let n: usize = shape.iter().product();
                self.out.insert(path, (v.reshape([n]), shape));
            }
        }
    }
    let mut v = V {
        walk: PathWalk::default(),
        paths,
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
}

/// What burn's visitor says a module is (its `kind` string), as far as path walking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A `Vec`, array or tuple of modules: it owns no parameter itself.
    Container,
    /// One adapter of a [`LoraLinear`](crate::LoraLinear) or
    /// [`LoraEmbedding`](crate::LoraEmbedding).
    Adapter,
    /// Any other module.
    Other,
}

impl ModuleKind {
    /// The class of burn's `kind` string (`Vec`, `Struct:LinearAdapter`, `Struct:Linear`, ...).
    pub fn of(kind: &str) -> Self {
        match kind {
            "Vec" | "Array" | "Tuple" => Self::Container,
            "Struct:LinearAdapter" | "Struct:EmbeddingAdapter" => Self::Adapter,
            _ => Self::Other,
        }
    }
}

/// Where a burn [`ModuleVisitor`] or [`ModuleMapper`] is: the path segments and the module
/// kinds burn enters, with what lora-burn asks of them (dotted path, PyTorch names, the owner
/// of a parameter, adapter slots). Every traversal here and in lora-train embeds one and
/// forwards `enter_module`/`exit_module` to it; the visitor methods stay the visitor's own,
/// since burn's are generic over tensor rank, which a closure cannot be.
#[derive(Debug, Default)]
pub struct PathWalk {
    pub(crate) path: Vec<String>,
    pub(crate) kinds: Vec<String>,
}

impl PathWalk {
    /// Enters field or index `name` of a module of kind `kind` (burn's `enter_module`).
    pub fn enter(&mut self, name: &str, kind: &str) {
        self.path.push(name.to_string());
        self.kinds.push(kind.to_string());
    }
    /// Leaves the innermost entry (burn's `exit_module`).
    pub fn exit(&mut self) {
        self.path.pop();
        self.kinds.pop();
    }
    /// The path segments from the root.
    pub fn segments(&self) -> &[String] {
        &self.path
    }
    /// burn's dotted path of the current parameter, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub fn joined(&self) -> String {
        self.path.join(".")
    }
    /// Path of the current parameter with burn's LayerNorm names turned into PyTorch's.
    pub fn torch_path(&self) -> String {
        let mut p = self.path.clone();
        if let Some(last) = p.last_mut()
            && self.kinds.last().is_some_and(|k| k.ends_with("Norm"))
        {
            match last.as_str() {
                "gamma" => *last = "weight".into(),
                "beta" => *last = "bias".into(),
                _ => {}
            }
        }
        p.join(".")
    }
    /// Whether the current parameter belongs to a LoRA adapter.
    pub fn in_adapter(&self) -> bool {
        self.kinds
            .iter()
            .any(|k| ModuleKind::of(k) == ModuleKind::Adapter)
    }
    /// Path of the site owning the adapter parameter being visited.
    pub fn site_of_adapter(&self) -> Option<String> {
        let i = self.path.iter().position(|s| s == "adapters")?;
        Some(self.path[..i].join("."))
    }
    /// The site path and adapter index (in the site's `adapters` list) of the adapter
    /// parameter being visited.
    pub fn adapter_slot(&self) -> Option<(String, usize)> {
        if !self.in_adapter() {
            return None;
        }
        let i = self.path.iter().position(|s| s == "adapters")?;
        let index = self.path.get(i + 1)?.parse().ok()?;
        Some((self.path[..i].join("."), index))
    }
    /// The container type of the module that owns the current parameter.
    pub fn owner_kind(&self) -> &str {
        // burn enters each field with the type of the struct holding it, so the innermost
        // non-container entry names the owner of the parameter.
        self.kinds
            .iter()
            .rev()
            .find(|k| ModuleKind::of(k) != ModuleKind::Container)
            .map_or("", |k| k.as_str())
    }
}

struct TrainMapper<'a, M: LoraSites> {
    walk: PathWalk,
    /// `None`: leave parameters outside adapters as they are.
    policy: Option<&'a TrainPolicy>,
    active: BTreeSet<(String, usize)>,
    /// Parameters with `modules_to_save` copies.
    originals: BTreeSet<String>,
    model: &'a M,
}

impl<M: LoraSites> ModuleMapper for TrainMapper<'_, M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.walk.enter(name, kind);
    }
    fn exit_module(&mut self, _name: &str, _kind: &str) {
        self.walk.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let saved = saved::saved_trains(&self.walk, &self.originals);
        let adapter = self.walk.adapter_slot().map(|s| self.active.contains(&s));
        let trains = match (saved.or(adapter), self.policy) {
            (Some(trains), _) => trains,
            (None, Some(policy)) => {
                policy.trains(&self.model.hf_param_path(&self.walk.torch_path()))
            }
            (None, None) => return param,
        };
        let mut param = param.set_require_grad(trains);
        if trains {
            // Ids derived from the path: optimizer state saved in a checkpoint then matches the
            // parameters of a model rebuilt the same way in a later process (exact resume).
            param.id = stable_id(&self.walk.path.join("."));
        }
        param
    }
}

/// Adapter operations on a whole model: every method applies to every site that carries the
/// named adapter, like PEFT's model-level methods.
pub trait LoraModelExt: LoraSites {
    /// Folds `scale·A·B` of the adapter into the base weights (no-op where already merged).
    fn merge_adapter(&mut self, name: &str) -> Result<()> {
        for_adapter(self, name, |l| l.merge(name))
    }
    /// [`merge_adapter`](Self::merge_adapter), refused with [`LoraError::NonFinite`] when a
    /// merged weight would hold NaN or infinity (PEFT's `safe_merge=True`). The model is
    /// unchanged then.
    fn safe_merge_adapter(&mut self, name: &str) -> Result<()>
    where
        Self: Clone,
    {
        let mut trial = self.clone();
        trial.merge_adapter(name)?;
        let mut bad = None;
        trial.visit_lora_sites("", &mut |p, l| {
            let carries = l.adapter_names().iter().any(|n| n == name);
            if bad.is_none()
                && carries
                && !l.base_blocks().into_iter().all(crate::layer::all_finite)
            {
                bad = Some(p.to_string());
            }
        });
        if let Some(key) = bad {
            return Err(LoraError::NonFinite {
                key,
                context: format!("merging adapter `{name}` would give this weight; nothing merged"),
            });
        }
        *self = trial;
        Ok(())
    }
    /// Takes a merged adapter back out of the base weights (no-op where not merged).
    fn unmerge_adapter(&mut self, name: &str) -> Result<()> {
        for_adapter(self, name, |l| l.unmerge(name))
    }
    /// Merges every active adapter of every site.
    fn merge_active(&mut self) -> Result<()> {
        self.visit_lora_sites_mut("", &mut |p, l| {
            for n in l.active() {
                l.merge(&n).map_err(|e| at(e, p))?;
            }
            Ok(())
        })
    }
    /// Unmerges everything that is merged.
    fn unmerge_all(&mut self) -> Result<()> {
        self.visit_lora_sites_mut("", &mut |p, l| {
            for n in l.merged_adapters() {
                l.unmerge(&n).map_err(|e| at(e, p))?;
            }
            Ok(())
        })
    }
    /// Makes exactly `names` active on each site (each site keeps those it has); only active
    /// adapters train, as with PEFT's `set_adapter`. `modules_to_save` copies follow: the one
    /// of `names` with a copy of a module is used there (two such names on one module are an
    /// error, as in PEFT). Errors if a name exists on no site; on error nothing changes.
    fn set_active_adapters(&mut self, names: &[&str]) -> Result<()>
    where
        Self: Module + Sized,
    {
        for n in names {
            if adapted_paths(self, Some(n)).is_empty() {
                return Err(LoraError::UnknownAdapter {
                    module: "(any)".into(),
                    adapter: n.to_string(),
                });
            }
        }
        let mut next = saved::edit(self.clone(), |sets| saved::activate(sets, names))?;
        next.visit_lora_sites_mut("", &mut |p, l| {
            let have = l.adapter_names();
            let keep: Vec<String> = names
                .iter()
                .filter(|n| have.iter().any(|h| h == *n))
                .map(|n| n.to_string())
                .collect();
            l.set_active(&keep).map_err(|e| at(e, p))
        })?;
        *self = sync_adapter_grads(next);
        Ok(())
    }
    /// Turns all adapters off (the base model's output, original `modules_to_save` modules
    /// included) or back on.
    fn set_adapters_disabled(&mut self, disabled: bool) -> Result<()>
    where
        Self: Module + Sized,
    {
        self.visit_lora_sites_mut("", &mut |p, l| {
            l.set_disabled(disabled).map_err(|e| at(e, p))
        })?;
        let next = saved::edit(self.clone(), |sets| {
            saved::disable(sets, disabled);
            Ok(())
        })?;
        *self = sync_adapter_grads(next);
        Ok(())
    }
    /// Removes the adapter from every site. If it was the last active one, each site
    /// activates its alphabetically first remaining adapter (PEFT's `delete_adapter`).
    /// Its `modules_to_save` copies go too; where the copy in use goes, the module uses the
    /// copy of the first adapter the first LoRA layer now has active, or its original.
    fn delete_adapter(&mut self, name: &str) -> Result<()>
    where
        Self: Module + Sized,
    {
        let mut first_site = None;
        self.visit_lora_sites("", &mut |p, l| {
            if first_site.is_none() && !l.adapter_names().is_empty() {
                first_site = Some(p.to_string());
            }
        });
        for_adapter(self, name, |l| l.remove_adapter(name))?;
        let mut any_active = false;
        self.visit_lora_sites("", &mut |_, l| any_active |= !l.active().is_empty());
        if !any_active {
            self.visit_lora_sites_mut("", &mut |p, l| match l.adapter_names().into_iter().min() {
                Some(first) => l.set_active(&[first]).map_err(|e| at(e, p)),
                None => Ok(()),
            })?;
        }
        let mut new_active = Vec::new();
        self.visit_lora_sites("", &mut |p, l| {
            if first_site.as_deref() == Some(p) {
                new_active = l.active();
            }
        });
        let next = saved::edit(self.clone(), |sets| {
            saved::delete(sets, name, &new_active);
            Ok(())
        })?;
        *self = sync_adapter_grads(next);
        Ok(())
    }
}

impl<M: LoraSites + ?Sized> LoraModelExt for M {}

fn for_adapter<M: LoraSites + ?Sized>(
    model: &mut M,
    name: &str,
    mut op: impl FnMut(&mut dyn LoraLayer) -> Result<()>,
) -> Result<()> {
    if adapted_paths(model, Some(name)).is_empty() {
        return Err(LoraError::UnknownAdapter {
            module: "(any)".into(),
            adapter: name.to_string(),
        });
    }
    model.visit_lora_sites_mut("", &mut |p, l| {
        if l.adapter_names().iter().any(|n| n == name) {
            op(l).map_err(|e| at(e, p))
        } else {
            Ok(())
        }
    })
}

/// Fills in the module path of errors raised inside one layer.
pub(crate) fn at(e: LoraError, path: &str) -> LoraError {
    match e {
        LoraError::UnknownAdapter { module, adapter } if module.is_empty() => {
            LoraError::UnknownAdapter {
                module: path.to_string(),
                adapter,
            }
        }
        LoraError::DuplicateAdapter { module, adapter } if module.is_empty() => {
            LoraError::DuplicateAdapter {
                module: path.to_string(),
                adapter,
            }
        }
        other => other,
    }
}

/// A parameter seen by [`visit_params`]: burn path, Hugging Face path, shape, and where it sits.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    /// burn's dotted path, e.g. `h.0.ln_1.gamma`.
    pub burn_path: String,
    /// PyTorch / Hugging Face name, e.g. `h.0.ln_1.weight` (for a `modules_to_save` copy: the
    /// name of the parameter it copies).
    pub hf_path: String,
    /// Shape (read without initialising lazy parameters; a copy has its parameter's shape).
    pub shape: Vec<usize>,
    /// `Some(site)` for adapter factors: the site path owning them.
    pub adapter_site: Option<String>,
    /// For adapter factors: whether their adapter is active at that site (only those train).
    pub adapter_active: bool,
    /// Container type of the owning module, e.g. `Struct:Linear`.
    pub owner: String,
    /// Its part in `modules_to_save` (PEFT's `ModulesToSaveWrapper`), if any.
    pub saved: Option<SavedRole>,
    /// For one row block of a table split to fit the device (see [`crate::LoraEmbedding`]):
    /// where its rows sit. Every block has the table's `hf_path`.
    pub rows: Option<RowBlock>,
}

/// Where a row block of a split table sits in the whole table (see [`ParamInfo::rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowBlock {
    /// The block's first row in the table.
    pub start: usize,
    /// Rows of the whole table.
    pub table_rows: usize,
}

/// A parameter's part in `modules_to_save` (see [`crate::saved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedRole {
    /// The original value: frozen, in use while no adapter with a copy is.
    Original,
    /// One adapter's copy.
    Copy {
        /// The adapter.
        adapter: String,
        /// burn path of the parameter it copies.
        of: String,
        /// Whether it trains (the copy in use, adapters enabled).
        trains: bool,
    },
}

/// Lists every float parameter of a model with its paths (see [`ParamInfo`]).
pub fn visit_params<M: Module + LoraSites>(model: &M) -> Vec<ParamInfo> {
    let mut v = ParamLister {
        walk: PathWalk::default(),
        out: Vec::new(),
        active: active_slots(model),
        originals: saved::scan_copies(model).into_keys().collect(),
        seen: std::collections::HashMap::new(),
        tables: BTreeMap::new(),
        model,
    };
    model.visit(&mut v);
    let mut out = v.out;
    for blocks in v.tables.values() {
        let table_rows = blocks.iter().map(|&i| out[i].shape[0]).sum();
        let mut start = 0;
        for &i in blocks {
            out[i].rows = Some(RowBlock { start, table_rows });
            start += out[i].shape[0];
        }
    }
    out
}

struct ParamLister<'a, M: LoraSites> {
    walk: PathWalk,
    out: Vec<ParamInfo>,
    active: BTreeSet<(String, usize)>,
    originals: BTreeSet<String>,
    /// Index in `out` of each parameter by burn path (a copy is visited after its parameter).
    seen: std::collections::HashMap<String, usize>,
    /// Indices in `out` of each split table's blocks in row order, by the table's burn path.
    tables: BTreeMap<String, Vec<usize>>,
    model: &'a M,
}

impl<M: LoraSites> ParamLister<'_, M> {
    /// For a row block of a split table: the table's burn path (its first block's).
    fn table_of_block(&self) -> Option<String> {
        let path = &self.walk.path;
        let n = path.len();
        (n >= 2
            && path[n - 2] == crate::embedding::ROW_BLOCKS
            && path[n - 1].parse::<usize>().is_ok())
        .then(|| format!("{}.weight", path[..n - 2].join(".")))
    }
}

impl<M: LoraSites> ModuleVisitor for ParamLister<'_, M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.walk.enter(name, kind);
    }
    fn exit_module(&mut self, _name: &str, _kind: &str) {
        self.walk.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let burn_path = self.walk.path.join(".");
        let copy = saved::copied_param(&self.walk).zip(saved::copy_state(&self.walk));
        if let Some(((of, adapter), state)) = copy {
            let Some(original) = self.seen.get(&of).map(|&i| self.out[i].clone()) else {
                return;
            };
            self.out.push(ParamInfo {
                burn_path,
                saved: Some(SavedRole::Copy {
                    adapter,
                    of,
                    trains: state.trains(),
                }),
                ..original
            });
            return;
        }
        let adapter_site = match self.walk.in_adapter() {
            true => (self.walk.site_of_adapter()).map(|s| self.model.hf_param_path(&s)),
            false => None,
        };
        let adapter_active = (self.walk.adapter_slot()).is_some_and(|s| self.active.contains(&s));
        let saved = self
            .originals
            .contains(&burn_path)
            .then_some(SavedRole::Original);
        let mut torch_path = self.walk.torch_path();
        if let Some(table) = self.table_of_block()
            && let Some(&first) = self.seen.get(&table)
        {
            let blocks = self.tables.entry(table.clone()).or_insert(vec![first]);
            blocks.push(self.out.len());
            torch_path = table;
        }
        self.seen.insert(burn_path.clone(), self.out.len());
        self.out.push(ParamInfo {
            hf_path: self.model.hf_param_path(&torch_path),
            burn_path,
            shape: param.lazy_shape().to_vec(),
            adapter_site,
            adapter_active,
            owner: self.walk.owner_kind().to_string(),
            saved,
            rows: None,
        });
    }
}

//! `modules_to_save` as PEFT keeps it: the original parameters stay frozen, and each adapter
//! whose config saves a module gets its own trained copy of that module's parameters
//! (PEFT's `ModulesToSaveWrapper`). The active adapter's copy is what the model computes with;
//! with adapters disabled, or with an active adapter that has no copy, the original is used.
//!
//! The copies are attached to the parameters themselves with burn's public
//! `Reparameterization` API, the mechanism behind the [`weight`](crate::weight) adapters, so the
//! same code serves any burn module and models written with [`LoraLinear`](crate::LoraLinear):
//! `Param::val()` gives the copy in use inside any layer's own `forward`.
//!
//! A copy is visited at `<param>.modules_to_save.<adapter>.<leaf>` (e.g.
//! `classifier.dense.weight.modules_to_save.a.weight`) under its parameter's own owner type, so
//! path rules (no weight decay on biases and norms, LayerNorm's `gamma` → `weight`) read a copy
//! as the parameter it copies; the adapter's container type carries its state (see
//! [`CopyState`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use burn::module::{Devices, Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::prelude::*;

use crate::embedding::ROW_BLOCKS;
use crate::error::{LoraError, Result};
use crate::io::HostTensor;
use crate::model::PathWalk;
use crate::weight::reparam::bypass_active;

/// Every adapter's copy of one parameter: burn's [`Reparameterization`] for `modules_to_save`.
#[derive(Debug, Clone)]
pub struct SavedCopies {
    /// One copy per adapter, flattened to `[numel]` (reshaped to the parameter's shape on use),
    /// in insertion order.
    pub copies: Vec<Param<Tensor<1>>>,
    /// The adapter of each copy.
    pub names: Vec<String>,
    /// The copy in use; `None`: the original.
    pub active: Option<usize>,
    /// Adapters disabled: the original is used (PEFT's `disable_adapter`).
    pub disabled: bool,
    /// The parameter's own last path segment (`weight`, `bias`, `gamma`, ...).
    pub leaf: String,
    /// The container type of the module owning the parameter (`Struct:Linear`, ...).
    pub owner: String,
}

/// Marker that starts the container type of every copy; anything else is not ours.
const KIND_PREFIX: &str = "lora-burn:saved;";

/// What the container type of one copy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyState {
    /// The copy is the one in use.
    pub active: bool,
    /// The set is disabled (the original is in use).
    pub disabled: bool,
}

impl CopyState {
    /// Whether the copy trains: PEFT trains the active adapter's copy while adapters are on.
    pub fn trains(self) -> bool {
        self.active && !self.disabled
    }

    fn encode(self) -> String {
        format!(
            "{KIND_PREFIX}active={};disabled={}",
            self.active as u8, self.disabled as u8
        )
    }

    /// Parses a container type written by a copy; `None` if it is not one.
    pub fn decode(kind: &str) -> Option<Self> {
        let body = kind.strip_prefix(KIND_PREFIX)?;
        let (mut active, mut disabled) = (false, false);
        for field in body.split(';') {
            match field.split_once('=')? {
                ("active", v) => active = v == "1",
                ("disabled", v) => disabled = v == "1",
                _ => {}
            }
        }
        Some(Self { active, disabled })
    }
}

/// The name burn gives the reparameterization in parameter paths.
pub const SAVED_SEGMENT: &str = "modules_to_save";

impl SavedCopies {
    fn state(&self, i: usize) -> CopyState {
        CopyState {
            active: self.active == Some(i),
            disabled: self.disabled,
        }
    }

    /// The copy of adapter `name`.
    pub fn copy_of(&self, name: &str) -> Option<&Param<Tensor<1>>> {
        let i = self.names.iter().position(|n| n == name)?;
        self.copies.get(i)
    }

    /// The copy the model computes with (`None`: the original).
    pub fn in_use(&self) -> Option<&Param<Tensor<1>>> {
        match (self.disabled, self.active) {
            (false, Some(i)) => self.copies.get(i),
            _ => None,
        }
    }

    fn map_copies(self, mut f: impl FnMut(usize, Param<Tensor<1>>) -> Param<Tensor<1>>) -> Self {
        let copies = self.copies.into_iter().enumerate();
        Self {
            copies: copies.map(|(i, c)| f(i, c)).collect(),
            ..self
        }
    }
}

impl Reparameterization for SavedCopies {
    const NAME: &'static str = SAVED_SEGMENT;

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        match self.in_use() {
            Some(copy) if !bypass_active() => copy.val().reshape(base.shape()),
            _ => base,
        }
    }
}

impl Module for SavedCopies {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.copies
            .iter()
            .fold(devices, |d, c| c.collect_devices(d))
    }

    fn fork(self, device: &Device) -> Self {
        self.map_copies(|_, c| c.fork(device))
    }

    fn to_device(self, device: &Device) -> Self {
        self.map_copies(|_, c| c.to_device(device))
    }

    fn train(self) -> Self {
        self.map_copies(|_, c| Module::train(c))
    }

    fn valid(&self) -> Self {
        self.clone().map_copies(|_, c| c.valid())
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        for (i, (copy, name)) in self.copies.iter().zip(&self.names).enumerate() {
            let kind = self.state(i).encode();
            visitor.enter_module(name, &kind);
            visitor.enter_module(&self.leaf, &self.owner);
            copy.visit(visitor);
            visitor.exit_module(&self.leaf, &self.owner);
            visitor.exit_module(name, &kind);
        }
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let (names, leaf, owner) = (self.names.clone(), self.leaf.clone(), self.owner.clone());
        let states: Vec<String> = (0..names.len()).map(|i| self.state(i).encode()).collect();
        self.map_copies(|i, c| {
            mapper.enter_module(&names[i], &states[i]);
            mapper.enter_module(&leaf, &owner);
            let c = Module::map(c, mapper);
            mapper.exit_module(&leaf, &owner);
            mapper.exit_module(&names[i], &states[i]);
            c
        })
    }
}

/// Where a visitor stands relative to `modules_to_save` copies.
pub(crate) fn copy_state(walk: &PathWalk) -> Option<CopyState> {
    walk.kinds.iter().find_map(|k| CopyState::decode(k))
}

/// For a copy being visited: the burn path of the parameter it copies and its adapter.
pub(crate) fn copied_param(walk: &PathWalk) -> Option<(String, String)> {
    let i = walk
        .kinds
        .iter()
        .position(|k| CopyState::decode(k).is_some())?;
    // `<param>.modules_to_save.<adapter>.<leaf>`: the adapter segment is at `i`.
    let param = walk.path.get(..i.checked_sub(1)?)?.join(".");
    Some((param, walk.path.get(i)?.clone()))
}

/// The rule both trainability mappers share: `Some(trains)` for a copy (the one in use trains,
/// as in PEFT) and for a parameter with copies (frozen: PEFT trains the copies only), `None`
/// for every other parameter.
pub(crate) fn saved_trains(walk: &PathWalk, originals: &BTreeSet<String>) -> Option<bool> {
    if let Some(state) = copy_state(walk) {
        return Some(state.trains());
    }
    originals.contains(&walk.path.join(".")).then_some(false)
}

/// Every parameter's copies, by the burn path of the parameter.
pub fn scan_copies<M: Module>(model: &M) -> BTreeMap<String, SavedCopies> {
    struct V {
        walk: PathWalk,
        out: BTreeMap<String, SavedCopies>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, kind: &str) {
            self.walk.enter(name, kind);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.walk.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (Some((path, adapter)), Some(state)) =
                (copied_param(&self.walk), copy_state(&self.walk))
            else {
                return;
            };
            let n = self.walk.path.len();
            let set = self.out.entry(path).or_insert_with(|| SavedCopies {
                copies: Vec::new(),
                names: Vec::new(),
                active: None,
                disabled: state.disabled,
                leaf: self.walk.path[n - 1].clone(),
                owner: self.walk.kinds[n - 1].clone(),
            });
            if state.active {
                set.active = Some(set.copies.len());
            }
            set.names.push(adapter);
            set.copies.push(crate::weight::sites::reranked(param));
        }
    }
    let mut v = V {
        walk: PathWalk::default(),
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
}

/// A parameter of a saved module, as the caller's scan saw it.
#[derive(Debug, Clone)]
pub(crate) struct SavedParam {
    /// burn path of the parameter.
    pub burn_path: String,
    /// Its last path segment.
    pub leaf: String,
    /// Container type of its owner.
    pub owner: String,
}

/// The model's copies after adapter `name` gets a copy of every parameter in `params` (a copy
/// of the original value, as PEFT's `ModulesToSaveWrapper.update`). A new set starts with
/// `name`'s copy in use when `activate` (the model's first adapter); an existing set keeps the
/// copy it uses. Errors if `name` already has a copy there.
pub(crate) fn with_new_copies<M: Module>(
    model: &M,
    params: &[SavedParam],
    name: &str,
    activate: bool,
) -> Result<BTreeMap<String, SavedCopies>> {
    if let Some(p) = params
        .iter()
        .find(|p| p.burn_path.split('.').any(|s| s == ROW_BLOCKS))
    {
        return Err(LoraError::Unsupported(format!(
            "modules_to_save on `{}`: that table is split into row blocks to fit the device's \
             per-tensor limit (see LoraEmbedding), and its copy could not be one tensor either",
            p.burn_path
        )));
    }
    let mut sets = scan_copies(model);
    let wanted: BTreeSet<String> = params.iter().map(|p| p.burn_path.clone()).collect();
    let values = crate::model::stored_values(model, &wanted);
    for p in params {
        let (value, _) = values
            .get(&p.burn_path)
            .cloned()
            .ok_or_else(|| LoraError::Device(format!("no value for {}", p.burn_path)))?;
        let set = sets
            .entry(p.burn_path.clone())
            .or_insert_with(|| SavedCopies {
                copies: Vec::new(),
                names: Vec::new(),
                active: None,
                disabled: false,
                leaf: p.leaf.clone(),
                owner: p.owner.clone(),
            });
        if set.names.iter().any(|n| n == name) {
            return Err(LoraError::DuplicateAdapter {
                module: p.burn_path.clone(),
                adapter: name.to_string(),
            });
        }
        if activate && set.copies.is_empty() {
            set.active = Some(0);
        }
        set.names.push(name.to_string());
        // Detached: the copy must be a leaf to train.
        set.copies.push(Param::from_tensor(value.detach()));
    }
    Ok(sets)
}

/// PEFT's `set_adapter` on every set: the one adapter of `names` that has a copy here is used,
/// none of them: the original. Two of them on one set is an error (PEFT: one adapter at a time
/// for `modules_to_save`), checked before anything changes.
pub(crate) fn activate(sets: &mut BTreeMap<String, SavedCopies>, names: &[&str]) -> Result<()> {
    for (path, set) in sets.iter_mut() {
        let here: Vec<usize> = (set.names.iter().enumerate())
            .filter(|(_, n)| names.contains(&n.as_str()))
            .map(|(i, _)| i)
            .collect();
        if here.len() > 1 {
            let both: Vec<&str> = here.iter().map(|&i| set.names[i].as_str()).collect();
            return Err(LoraError::Unsupported(format!(
                "adapters {both:?} both have a modules_to_save copy of `{path}`; only one of \
                 them can be active at a time (as in PEFT)"
            )));
        }
        set.active = here.first().copied();
    }
    Ok(())
}

/// PEFT's `add_weighted_adapter` check: two of `adapters` with copies of one parameter cannot
/// be combined.
pub(crate) fn check_combinable(
    sets: &BTreeMap<String, SavedCopies>,
    adapters: &[(&str, f64)],
) -> Result<()> {
    for (path, set) in sets {
        let with_copy: Vec<&str> = (adapters.iter().map(|(a, _)| *a))
            .filter(|a| set.names.iter().any(|n| n == a))
            .collect();
        if with_copy.len() > 1 {
            return Err(LoraError::Unsupported(format!(
                "adapters {with_copy:?} each have a modules_to_save copy of `{path}`; copies \
                 cannot be combined (as in PEFT)"
            )));
        }
    }
    Ok(())
}

/// Sets the disabled flag of every set.
pub(crate) fn disable(sets: &mut BTreeMap<String, SavedCopies>, disabled: bool) {
    for set in sets.values_mut() {
        set.disabled = disabled;
    }
}

/// PEFT's `ModulesToSaveWrapper.delete_adapter`: removes `name`'s copies; where one is removed,
/// the set uses the copy of `new_active[0]` (the first adapter the model's first LoRA layer has
/// active after the deletion) if it has one, else the original. Sets left empty are dropped.
pub(crate) fn delete(sets: &mut BTreeMap<String, SavedCopies>, name: &str, new_active: &[String]) {
    for set in sets.values_mut() {
        let Some(i) = set.names.iter().position(|n| n == name) else {
            continue;
        };
        set.names.remove(i);
        set.copies.remove(i);
        set.active = new_active
            .first()
            .and_then(|first| set.names.iter().position(|n| n == first));
    }
    sets.retain(|_, s| !s.copies.is_empty());
}

/// Runs `f` on the model's copies and writes the result; an error from `f` leaves the model
/// as it was (a model without copies is returned untouched).
pub(crate) fn edit<M: Module>(
    model: M,
    f: impl FnOnce(&mut BTreeMap<String, SavedCopies>) -> Result<()>,
) -> Result<M> {
    let mut sets = scan_copies(&model);
    if sets.is_empty() {
        return Ok(model);
    }
    f(&mut sets)?;
    Ok(replace_copies(model, sets))
}

/// Moves the values of parameters with a copy of adapter `name` (keyed by the parameter's burn
/// path, flat or shaped) to that copy's path, flattened: how an adapter file's
/// `modules_to_save` tensors reach the adapter's own copies.
pub(crate) fn redirect_to_copies<M: Module>(
    model: &M,
    mut values: HashMap<String, HostTensor>,
    name: &str,
) -> HashMap<String, HostTensor> {
    for (path, set) in scan_copies(model) {
        if !set.names.iter().any(|n| n == name) {
            continue;
        }
        if let Some(v) = values.remove(&path) {
            let flat = HostTensor {
                shape: vec![v.data.len()],
                data: v.data,
            };
            values.insert(copy_path(&path, name, &set.leaf), flat);
        }
    }
    values
}

/// The burn path of adapter `name`'s copy of the parameter at `param`.
pub fn copy_path(param: &str, name: &str, leaf: &str) -> String {
    format!("{param}.{SAVED_SEGMENT}.{name}.{leaf}")
}

/// The copy in use of every parameter that has one (flat), by the parameter's burn path.
pub(crate) fn copies_in_use<M: Module>(model: &M) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::new();
    for (path, set) in scan_copies(model) {
        if let Some(copy) = set.in_use() {
            out.insert(path.clone(), HostTensor::from_tensor(copy.val(), &path)?);
        }
    }
    Ok(out)
}

/// Strips every copy and `WeightLora` from `model` and attaches `sets` (and the model's weight
/// adapters, unchanged): how every operation here writes its result.
pub(crate) fn replace_copies<M: Module>(model: M, sets: BTreeMap<String, SavedCopies>) -> M {
    crate::weight::sites::rebuild_keeping_lora(model, sets)
}

//! Reading the adapter state of any burn module, and writing it back.
//!
//! Reading walks the module with a visitor: base parameters come with their path and owner
//! (`Struct:Linear`, `Struct:Embedding`, ...), adapters with the metadata their container type
//! carries. Writing strips every [`WeightLora`] (see [`bypassed`]) and attaches the new state
//! with burn's `apply_reparameterization`, keeping every parameter id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, Reparameterizer};
use burn::prelude::*;

use crate::config::LoraConfig;
use crate::model::{PathWalk, TrainPolicy, stable_id};
use crate::saved::{SavedCopies, scan_copies};

use super::paths::PathMap;
use super::reparam::{AdapterFactors, AdapterMeta, Layout, WeightLora, bypassed};

/// A base parameter of a module, as the visitor saw it.
#[derive(Debug, Clone)]
pub struct BaseParam {
    /// burn's dotted path, e.g. `layers.0.mha.query.weight`.
    pub burn_path: String,
    /// The path PyTorch/PEFT would use (LayerNorm `gamma`/`beta` renamed `weight`/`bias`,
    /// then the [`PathMap`] applied), e.g. `encoder.layer.0.attention.query.weight`.
    pub peft_path: String,
    /// Container type of the owning module (`Struct:Linear`, ...).
    pub owner: String,
    /// Shape (read without initialising lazy parameters).
    pub shape: Vec<usize>,
}

impl BaseParam {
    /// The PEFT module path (the parameter path without its last segment).
    pub fn peft_module(&self) -> &str {
        self.peft_path.rsplit_once('.').map_or("", |(m, _)| m)
    }

    /// The last segment of the burn path (`weight`, `bias`, ...).
    pub fn leaf(&self) -> &str {
        self.burn_path
            .rsplit_once('.')
            .map_or(&self.burn_path, |(_, l)| l)
    }

    /// The layout an adapter would have here, for module targets (`target_modules`): the
    /// weight of a burn-nn `Linear` or `Embedding` (or of this crate's `LoraLinear` /
    /// `LoraEmbedding`, which store theirs the same way).
    pub fn module_layout(&self) -> Option<Layout> {
        match (self.owner.as_str(), self.leaf()) {
            ("Struct:Linear" | "Struct:LoraLinear", "weight") => Some(Layout::Linear),
            ("Struct:Embedding" | "Struct:LoraEmbedding", "weight") => Some(Layout::Embedding),
            _ => None,
        }
    }

    /// Whether this is a linear weight (stored `[in, out]`, PyTorch's `[out, in]`).
    pub fn is_linear_weight(&self) -> bool {
        self.module_layout() == Some(Layout::Linear)
    }
}

/// Everything [`scan`] found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Base parameters in traversal order (adapter factors excluded).
    pub params: Vec<BaseParam>,
    /// The adapters on each parameter, by burn parameter path.
    pub sites: BTreeMap<String, WeightLora>,
}

impl Scan {
    /// The base parameter at a burn path.
    pub fn param(&self, burn_path: &str) -> Option<&BaseParam> {
        self.params.iter().find(|p| p.burn_path == burn_path)
    }

    /// The PEFT path of the module owning the parameter at burn path `burn_path`.
    pub fn module_of(&self, burn_path: &str) -> String {
        self.param(burn_path)
            .map_or_else(|| burn_path.to_string(), |p| p.peft_module().to_string())
    }

    /// The PEFT modules that carry any adapter.
    pub fn adapted_modules(&self) -> BTreeSet<String> {
        self.sites.keys().map(|p| self.module_of(p)).collect()
    }

    /// Adapter names present anywhere, in first-seen order.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for lora in self.sites.values() {
            for m in &lora.metas {
                if !out.contains(&m.name) {
                    out.push(m.name.clone());
                }
            }
        }
        out
    }
}

/// Reads the base parameters and the [`WeightLora`] state of any module.
pub fn scan<M: Module>(model: &M, map: &PathMap) -> Scan {
    let mut v = Scanner {
        walk: PathWalk::default(),
        map,
        scan: Scan::default(),
        adapter: None,
    };
    model.visit(&mut v);
    v.scan
}

struct Scanner<'a> {
    walk: PathWalk,
    map: &'a PathMap,
    scan: Scan,
    /// `(site path, index)` of the adapter being visited.
    adapter: Option<(String, usize)>,
}

impl ModuleVisitor for Scanner<'_> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        if let Some((meta, set)) = AdapterMeta::decode(name, kind) {
            // The path is `<param>.lora`; the adapter belongs to `<param>`.
            let site = self.walk.path[..self.walk.path.len().saturating_sub(1)].join(".");
            let lora = self
                .scan
                .sites
                .entry(site.clone())
                .or_insert_with(|| WeightLora {
                    adapters: Vec::new(),
                    metas: Vec::new(),
                    layout: set.layout,
                    experts: set.experts,
                    disabled: set.disabled,
                });
            lora.metas.push(meta);
            self.adapter = Some((site, lora.metas.len() - 1));
        }
        self.walk.enter(name, kind);
    }

    fn exit_module(&mut self, _: &str, kind: &str) {
        self.walk.exit();
        if AdapterMeta::decode("", kind).is_some() {
            self.adapter = None;
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if crate::saved::copy_state(&self.walk).is_some() {
            // A `modules_to_save` copy, not a base parameter (see `saved::scan_copies`).
            return;
        }
        let Some((site, index)) = self.adapter.clone() else {
            let torch = self.walk.torch_path();
            self.scan.params.push(BaseParam {
                burn_path: self.walk.path.join("."),
                peft_path: self.map.to_peft(&torch),
                owner: self.walk.kinds.last().cloned().unwrap_or_default(),
                shape: param.lazy_shape().to_vec(),
            });
            return;
        };
        let field = self.walk.path.last().cloned().unwrap_or_default();
        let Some(lora) = self.scan.sites.get_mut(&site) else {
            return;
        };
        while lora.adapters.len() <= index {
            // Placeholders until the factors arrive (the visitor sees them one by one).
            let empty = Param::from_tensor(Tensor::<2>::empty([0, 0], &param.lazy_device()));
            lora.adapters.push(AdapterFactors {
                lora_a: empty.clone(),
                lora_b: empty,
                magnitude: None,
                merge_norm: None,
            });
        }
        let f = &mut lora.adapters[index];
        match field.as_str() {
            "lora_a" => f.lora_a = reranked(param),
            "lora_b" => f.lora_b = reranked(param),
            "magnitude" => f.magnitude = Some(reranked(param)),
            "merge_norm" => f.merge_norm = Some(reranked(param)),
            _ => {}
        }
    }
}

/// The same parameter (id, value, trainability) seen at another rank; the visitor hands out
/// parameters generically over their rank.
pub(crate) fn reranked<const D: usize, const E: usize>(p: &Param<Tensor<D>>) -> Param<Tensor<E>> {
    let value = p.val();
    let require_grad = value.is_require_grad();
    let dims = value.dims();
    let mut shape = [1usize; E];
    for (i, s) in shape.iter_mut().enumerate() {
        *s = dims.get(i).copied().unwrap_or(1);
    }
    let value: Tensor<E> = value.reshape(shape).detach();
    Param::initialized(p.id, value.set_require_grad(require_grad))
}

/// What to write on one parameter: an optional new base value (a merge or unmerge), and the
/// adapters to attach (none: the parameter becomes plain again).
pub(crate) struct Edit {
    pub base: Option<Tensor<3>>,
    pub lora: Option<WeightLora>,
}

/// Strips every adapter from `model` and attaches the adapters of `edits`, by burn parameter
/// path. Parameters with no edit end up plain; `modules_to_save` copies are kept.
pub(crate) fn rebuild<M: Module>(model: M, edits: HashMap<String, Edit>) -> M {
    let copies = scan_copies(&model);
    rebuild_with(model, edits, copies)
}

/// Replaces the model's `modules_to_save` copies by `copies`, keeping its weight adapters.
pub(crate) fn rebuild_keeping_lora<M: Module>(
    model: M,
    copies: BTreeMap<String, SavedCopies>,
) -> M {
    let found = scan(&model, &PathMap::identity());
    let edits = (found.sites.into_iter())
        .map(|(path, lora)| {
            let edit = Edit {
                base: None,
                lora: Some(lora),
            };
            (path, edit)
        })
        .collect();
    rebuild_with(model, edits, copies)
}

/// [`rebuild`], dropping every `modules_to_save` copy.
pub(crate) fn rebuild_without_copies<M: Module>(model: M, edits: HashMap<String, Edit>) -> M {
    rebuild_with(model, edits, BTreeMap::new())
}

/// Strips every reparameterization (burn keeps one per parameter and cannot detach it), then
/// attaches the weight adapters of `edits` and the `modules_to_save` copies of `copies`.
fn rebuild_with<M: Module>(
    model: M,
    edits: HashMap<String, Edit>,
    copies: BTreeMap<String, SavedCopies>,
) -> M {
    let stripped = bypassed(|| model.materialize());
    let adapted = stripped.apply_reparameterization(Rebuild { edits });
    adapted.apply_reparameterization(AttachCopies { copies })
}

/// Attaches `modules_to_save` copies by burn parameter path.
struct AttachCopies {
    copies: BTreeMap<String, SavedCopies>,
}

impl Reparameterizer for AttachCopies {
    type Reparam = SavedCopies;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<SavedCopies>) {
        (param, self.copies.remove(path))
    }
}

struct Rebuild {
    edits: HashMap<String, Edit>,
}

impl Reparameterizer for Rebuild {
    type Reparam = WeightLora;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<WeightLora>) {
        let Some(edit) = self.edits.remove(path) else {
            return (param, None);
        };
        let param = match edit.base {
            // `Param::map` keeps the id and the configured trainability.
            Some(value) => param.map(|old| value.reshape(old.shape()).detach()),
            None => param,
        };
        (param, edit.lora.filter(|l| !l.adapters.is_empty()))
    }
}

/// Freezes every base parameter except what `config` trains (`bias`, `modules_to_save`, by
/// PEFT path) and makes every adapter factor trainable, with ids derived from paths (so
/// optimizer state in a checkpoint matches a model rebuilt the same way).
pub(crate) fn apply_trainability<M: Module>(
    model: M,
    config: &LoraConfig,
    map: &PathMap,
    adapted_modules: BTreeSet<String>,
) -> M {
    let policy = TrainPolicy::from_sites(config, adapted_modules);
    let mut mapper = Trainability {
        walk: PathWalk::default(),
        policy: Some((&policy, map)),
        originals: scan_copies(&model).into_keys().collect(),
    };
    model.map(&mut mapper)
}

/// Sets which adapter factors and `modules_to_save` copies train: those of active adapters
/// (PEFT's `set_adapter`). Other parameters keep their setting.
pub(crate) fn sync_adapter_grads<M: Module>(model: M) -> M {
    let mut mapper = Trainability {
        walk: PathWalk::default(),
        policy: None,
        originals: scan_copies(&model).into_keys().collect(),
    };
    model.map(&mut mapper)
}

struct Trainability<'a> {
    walk: PathWalk,
    /// `None`: leave parameters outside adapters as they are.
    policy: Option<(&'a TrainPolicy, &'a PathMap)>,
    /// Parameters with `modules_to_save` copies.
    originals: BTreeSet<String>,
}

impl ModuleMapper for Trainability<'_> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.walk.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.walk.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // The factors of active adapters train (none while disabled, as in PEFT); the DoRA
        // merge cache never does.
        let adapter = self
            .walk
            .kinds
            .iter()
            .find_map(|k| AdapterMeta::decode("", k).map(|(m, set)| m.active && !set.disabled));
        let cache = self.walk.path.last().is_some_and(|l| l == "merge_norm");
        let saved = crate::saved::saved_trains(&self.walk, &self.originals);
        let trains = match (saved.or(adapter.map(|a| a && !cache)), self.policy) {
            (Some(trains), _) => trains,
            (None, Some((policy, map))) => policy.trains(&map.to_peft(&self.walk.torch_path())),
            (None, None) => return param,
        };
        let mut param = param.set_require_grad(trains);
        if trains {
            param.id = stable_id(&self.walk.path.join("."));
        }
        param
    }
}

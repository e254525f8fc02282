//! `modules_to_save` with several adapters, against PEFT 0.21.2 (`ModulesToSaveWrapper`,
//! fixtures from `scripts/make_peft_saved_fixtures.py`): adapters `a` and `b` each bring their
//! own trained copy of roberta-a's classifier, `c` brings none. The copy of the active adapter
//! is used; `c`, disabled adapters and the base keep the original head. The same scenario runs
//! on the factored path (`LoraLinear` sites) and on the weight path (any burn module).

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::weight::{self, PathMap};
use lora_core::{Combination, LoraConfig, LoraError, LoraModelExt, ParamReport};
use lora_models::bert::{EncoderCheckpoint, RobertaForMaskedLM, RobertaForSequenceClassification};

use crate::common::{assert_close, fixture, host, ids, load};

type Model = RobertaForSequenceClassification;

/// One way in: the operations the scenario uses, on the factored or the weight path.
trait Ops {
    fn name(&self) -> &'static str;
    fn load(&self, model: &Model, adapter: &str) -> (Model, LoraConfig);
    fn activate(&self, model: Model, names: &[&str]) -> Result<Model, LoraError>;
    fn disable(&self, model: Model, disabled: bool) -> Model;
    fn delete(&self, model: Model, name: &str) -> Model;
    fn report(&self, model: &Model, config: &LoraConfig) -> ParamReport;
    fn save(&self, model: &Model, config: &LoraConfig, name: &str, dir: &std::path::Path);
    /// The model PEFT's `merge_and_unload` would give, as a plain roberta-a.
    fn merged(&self, model: Model) -> Model;
    /// `add_weighted_adapter(adapters, 0.5 each, "mix", cat)` with `config` the first's.
    fn combine(
        &self,
        model: Model,
        adapters: [&str; 2],
        config: &LoraConfig,
    ) -> Result<Model, LoraError>;
}

fn saved_dir(adapter: &str) -> std::path::PathBuf {
    fixture(&format!("peft/saved/{adapter}"))
}

struct Factored;

impl Ops for Factored {
    fn name(&self) -> &'static str {
        "factored"
    }
    fn load(&self, model: &Model, adapter: &str) -> (Model, LoraConfig) {
        lora_core::load_adapter(model, saved_dir(adapter), adapter).unwrap()
    }
    fn activate(&self, mut model: Model, names: &[&str]) -> Result<Model, LoraError> {
        model.set_active_adapters(names).map(|()| model)
    }
    fn disable(&self, mut model: Model, disabled: bool) -> Model {
        model.set_adapters_disabled(disabled).unwrap();
        model
    }
    fn delete(&self, mut model: Model, name: &str) -> Model {
        model.delete_adapter(name).unwrap();
        model
    }
    fn report(&self, model: &Model, config: &LoraConfig) -> ParamReport {
        ParamReport::new(model, config)
    }
    fn save(&self, model: &Model, config: &LoraConfig, name: &str, dir: &std::path::Path) {
        lora_core::save_adapter(model, config, name, dir).unwrap();
    }
    fn merged(&self, mut model: Model) -> Model {
        // Merged LoRA plus the head in use, exported and loaded into a fresh base.
        model.merge_active().unwrap();
        let state = lora_core::export_state_dict(&model, false).unwrap();
        let fresh = base(&model.devices()[0]);
        lora_core::load_state_dict(fresh, state.into_iter().collect(), false)
            .unwrap()
            .0
    }
    fn combine(
        &self,
        model: Model,
        [x, y]: [&str; 2],
        config: &LoraConfig,
    ) -> Result<Model, LoraError> {
        let halves = [(x, 0.5), (y, 0.5)];
        lora_core::add_weighted_adapter(model, &halves, "mix", Combination::Cat, config)
            .map(|(m, _)| m)
    }
}

/// The weight path on the same model, through PEFT's names.
struct Weighted(PathMap);

impl Weighted {
    fn new() -> Self {
        Self(roberta_map())
    }
}

/// Our RoBERTa's burn paths to Hugging Face's (the MLM head keeps `layer_norm`).
fn roberta_map() -> PathMap {
    let map = PathMap::new(&[
        (r"\.self_attn\.", ".self."),
        (r"^roberta\.(.*)\.layer_norm\.", "roberta.$1.LayerNorm."),
    ]);
    map.unwrap()
}

impl Ops for Weighted {
    fn name(&self) -> &'static str {
        "weight"
    }
    fn load(&self, model: &Model, adapter: &str) -> (Model, LoraConfig) {
        weight::load_adapter(model, saved_dir(adapter), adapter, &self.0).unwrap()
    }
    fn activate(&self, model: Model, names: &[&str]) -> Result<Model, LoraError> {
        weight::set_active_adapters(model, names)
    }
    fn disable(&self, model: Model, disabled: bool) -> Model {
        weight::set_adapters_disabled(model, disabled).unwrap()
    }
    fn delete(&self, model: Model, name: &str) -> Model {
        weight::delete_adapter(model, name).unwrap()
    }
    fn report(&self, model: &Model, config: &LoraConfig) -> ParamReport {
        weight::report(model, config, &self.0)
    }
    fn save(&self, model: &Model, config: &LoraConfig, name: &str, dir: &std::path::Path) {
        weight::save_adapter(model, config, name, dir, &self.0).unwrap();
    }
    fn merged(&self, model: Model) -> Model {
        let merged = weight::merge_and_unload(model);
        assert!(lora_core::saved::scan_copies(&merged).is_empty());
        merged
    }
    fn combine(
        &self,
        model: Model,
        [x, y]: [&str; 2],
        config: &LoraConfig,
    ) -> Result<Model, LoraError> {
        let halves = [(x, 0.5), (y, 0.5)];
        weight::add_weighted_adapter(model, &halves, "mix", Combination::Cat, config, &self.0)
            .map(|(m, _)| m)
    }
}

fn base(device: &Device) -> Model {
    Model::from_pretrained(fixture("encoder/roberta-a"), device)
        .unwrap()
        .0
}

/// Our logits for the fixture's batch against PEFT's in state `state`.
fn check(ops: &dyn Ops, model: &Model, state: &str) {
    let r = load("peft/saved/reference.safetensors");
    let device = model.devices()[0].clone();
    let (batch, mask) = (ids(&r["ids"], &device), ids(&r["mask"], &device));
    // `valid`: no dropout (roberta-a has 0.1) and no autodiff.
    let ours = host(model.valid().forward(batch, Some(mask), None).unwrap());
    let what = format!("{} path, {state}", ops.name());
    assert_close(&what, &ours, &r[&format!("{state}.logits")], 1e-4);
}

/// PEFT's `get_nb_trainable_parameters` in each state where it does not depend on the order
/// of earlier calls (`reference.json`: PEFT leaves a copy trainable after switching away from
/// a freshly loaded adapter; we freeze it, as `set_adapter` does for every later switch).
fn check_counts(ops: &dyn Ops, model: &Model, config: &LoraConfig, state: &str) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved_dir("reference.json")).unwrap())
            .unwrap();
    let want = &json["counts"][state];
    let report = ops.report(model, config);
    let what = format!("{} path, {state}", ops.name());
    assert_eq!(
        report.trainable as u64,
        want["trainable"].as_u64().unwrap(),
        "{what}"
    );
    assert_eq!(
        report.total as u64,
        want["total"].as_u64().unwrap(),
        "{what}"
    );
}

fn scenario(ops: &dyn Ops, device: &Device) -> Model {
    let (m, _) = ops.load(&base(device), "a");
    check(ops, &m, "a");
    let (m, config_b) = ops.load(&m, "b");
    let (m, _) = ops.load(&m, "c");
    // A later adapter starts inactive: `a`'s head stays in use.
    check(ops, &m, "loaded");
    let m = ops.activate(m, &["b"]).unwrap();
    check(ops, &m, "b");
    check_counts(ops, &m, &config_b, "b");
    let m = ops.activate(m, &["c"]).unwrap();
    check(ops, &m, "c");
    check_counts(ops, &m, &config_b, "c");
    // Two LoRA adapters active, one of them with a head copy: that copy is used.
    let m = ops.activate(m, &["a", "c"]).unwrap();
    check(ops, &m, "ac");
    match ops.activate(m.clone(), &["a", "b"]) {
        Err(LoraError::Unsupported(msg)) => assert!(msg.contains("one of them"), "{msg}"),
        other => panic!("two head copies active at once: {:?}", other.err()),
    }
    let m = ops.activate(m, &["b"]).unwrap();
    let m = ops.disable(m, true);
    check(ops, &m, "base");
    check_counts(ops, &m, &config_b, "disabled_b");
    let m = ops.disable(m, false);
    check(ops, &m, "b");
    check_saved_file(ops, &m, &config_b);
    check(ops, &ops.merged(m.clone()), "merged_b");
    check_combined(ops, &m, &config_b);
    // Deleting the active adapter activates `b` (alphabetically first), head included.
    let m = ops.activate(m, &["a"]).unwrap();
    let m = ops.delete(m, "a");
    check(ops, &m, "deleted");
    m
}

/// PEFT's `add_weighted_adapter`: two adapters with head copies cannot be combined; `b` with
/// `c` gives the new adapter a fresh copy of the original head (from `b`'s config).
fn check_combined(ops: &dyn Ops, model: &Model, config_b: &LoraConfig) {
    match ops.combine(model.clone(), ["a", "b"], config_b) {
        Err(LoraError::Unsupported(msg)) => assert!(msg.contains("cannot be combined"), "{msg}"),
        other => panic!("combining two head copies: {:?}", other.err()),
    }
    let mixed = ops.combine(model.clone(), ["b", "c"], config_b).unwrap();
    let sets = lora_core::saved::scan_copies(&mixed);
    let original = base(&model.devices()[0]).classifier.out_proj.weight.val();
    let copy = sets["classifier.out_proj.weight"].copy_of("mix").unwrap();
    let copy: Tensor<2> = copy.val().reshape(original.shape());
    assert_close(ops.name(), &host(copy), &host(original), 0.0);
}

/// Our save of `b` holds exactly PEFT's tensors: its LoRA factors and its own head copy.
fn check_saved_file(ops: &dyn Ops, model: &Model, config: &LoraConfig) {
    let dir = tempfile::tempdir().unwrap();
    ops.save(model, config, "b", dir.path());
    let ours = lora_core::read_safetensors(dir.path().join("adapter_model.safetensors")).unwrap();
    let theirs =
        lora_core::read_safetensors(saved_dir("b").join("adapter_model.safetensors")).unwrap();
    let mut keys: Vec<&String> = ours.keys().collect();
    keys.sort();
    let mut want: Vec<&String> = theirs.keys().collect();
    want.sort();
    assert_eq!(keys, want, "{} path", ops.name());
    for (k, t) in &theirs {
        assert_close(k, &ours[k], t, 1e-6);
    }
}

#[test]
fn modules_to_save_copies_follow_pefts_wrapper_on_the_factored_path() {
    let device = Device::flex().autodiff();
    let m = scenario(&Factored, &device);
    // Only `b`'s copy of the head trains: the original head stays frozen.
    let head: Vec<String> = lora_train::optim::trainable_params(&m)
        .into_iter()
        .map(|p| p.path)
        .filter(|p| p.starts_with("classifier"))
        .collect();
    let copies = [
        "dense.weight",
        "dense.bias",
        "out_proj.weight",
        "out_proj.bias",
    ]
    .map(|p| {
        let (module, leaf) = p.split_once('.').unwrap();
        format!("classifier.{module}.{leaf}.modules_to_save.b.{leaf}")
    });
    assert_eq!(head, copies);
    let r: std::collections::HashMap<String, HostTensor> = load("peft/saved/reference.safetensors");
    let batch = (&r["ids"], &r["mask"]);
    let (ids_t, mask_t) = (ids(batch.0, &device), ids(batch.1, &device));
    let logits = host(m.valid().forward(ids_t, Some(mask_t), None).unwrap());
    let (_, config) = Factored.load(&base(&device), "b");
    crate::peft_files::leave_round_trip(
        "saved-b",
        &m,
        &config,
        "b",
        "encoder/roberta-a",
        batch,
        logits,
    );
}

#[test]
fn modules_to_save_copies_follow_pefts_wrapper_on_the_weight_path() {
    scenario(&Weighted::new(), &Device::flex());
}

/// `modules_to_save = ["word_embeddings"]` under a tied MLM decoder: the embedding uses the
/// adapter's copy while the decoder keeps the original table, as in PEFT (which re-ties only
/// modules named `embed_tokens`/`lm_head`). Both paths, and our save holds PEFT's tensors.
#[test]
fn a_saved_embedding_leaves_the_tied_decoder_on_the_original_table() {
    let device = Device::flex();
    let r = load("peft/saved/reference.safetensors");
    let base = RobertaForMaskedLM::from_pretrained(fixture("encoder/roberta-mlm"), &device)
        .unwrap()
        .0;
    let dir = saved_dir("embedding");
    let map = roberta_map();
    let (factored, config) = lora_core::load_adapter(&base, &dir, "default").unwrap();
    let (weighted, _) = weight::load_adapter(&base, &dir, "default", &map).unwrap();
    let theirs = lora_core::read_safetensors(dir.join("adapter_model.safetensors")).unwrap();
    for (path, model) in [("factored", &factored), ("weight", &weighted)] {
        let (batch, mask) = (ids(&r["ids"], &device), ids(&r["mask"], &device));
        let ours = host(model.forward(batch, Some(mask), None).unwrap());
        assert_close(path, &ours, &r["embedding.logits"], 1e-4);
        let out = tempfile::tempdir().unwrap();
        match path {
            "factored" => lora_core::save_adapter(model, &config, "default", out.path()),
            _ => weight::save_adapter(model, &config, "default", out.path(), &map),
        }
        .unwrap();
        let ours = lora_core::read_safetensors(out.path().join("adapter_model.safetensors"));
        let ours = ours.unwrap();
        assert_eq!(ours.len(), theirs.len(), "{path}");
        for (k, t) in &theirs {
            assert_close(k, &ours[k], t, 1e-6);
        }
    }
}

//! Fuzzing the loaders a user feeds, on stable Rust: seeded mutations of the committed
//! fixtures (JSON trees edited node by node, bytes flipped, cut, inserted). The property for
//! every case: a typed error or success, never a panic. Allocation is bounded because every
//! size a file declares is checked against the file (or the checkpoint) before anything is
//! built, and a failed load returns no model (the caller's model is untouched: loads take it
//! by reference).
//!
//! `LORA_FUZZ_CASES` sets the cases per loader (default 150; CI runs the default, with a fixed
//! seed). Each loader prints how many cases ran and how many loaded.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::prelude::*;
use lora_core::{LoraConfig, load_adapter};
use lora_models::TextTokenizer;
use lora_models::bert::{EncoderCheckpoint, RobertaForSequenceClassification};
use lora_models::gpt2::Gpt2LmHeadModel;
use lora_train::sampler::SplitMix64;
use lora_train::{Columns, DataConfig, load_text_datasets};
use serde_json::Value;

use crate::common::{Tiny, fixture};

fn cases() -> usize {
    std::env::var("LORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Seeded mutations.
struct Mutator(SplitMix64);

impl Mutator {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1) as u64) as usize
    }

    /// A value that stresses a reader: huge, negative, fractional, wrong-typed, empty.
    fn value(&mut self) -> Value {
        let picks: [Value; 14] = [
            Value::Null,
            true.into(),
            0.into(),
            (-1).into(),
            1_000_000_000_000u64.into(),
            u64::MAX.into(),
            (i64::MIN).into(),
            0.5.into(),
            1e300.into(),
            "".into(),
            "x".repeat(3).into(),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!([1, [2], {"a": null}]),
        ];
        picks[self.below(picks.len())].clone()
    }

    /// Replaces a random node of `v` (or deletes an object key) `edits` times.
    fn json(&mut self, v: &Value, edits: usize) -> Value {
        let mut out = v.clone();
        for _ in 0..edits {
            self.edit(&mut out, 0);
        }
        out
    }

    fn edit(&mut self, v: &mut Value, depth: usize) {
        let descend = depth < 6 && self.below(3) != 0;
        match v {
            Value::Object(map) if descend && !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(self.below(map.len()))
                    .cloned()
                    .unwrap_or_default();
                if self.below(5) == 0 {
                    map.remove(&key);
                } else if let Some(child) = map.get_mut(&key) {
                    self.edit(child, depth + 1);
                }
            }
            Value::Array(items) if descend && !items.is_empty() => {
                let i = self.below(items.len());
                self.edit(&mut items[i], depth + 1);
            }
            _ => *v = self.value(),
        }
    }

    /// Byte-level damage: flips, a cut, an insertion, a zeroed run.
    fn bytes(&mut self, src: &[u8]) -> Vec<u8> {
        let mut b = src.to_vec();
        match self.below(4) {
            0 => {
                for _ in 0..1 + self.below(8) {
                    let i = self.below(b.len());
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 << self.below(8);
                    }
                }
            }
            1 => b.truncate(self.below(b.len())),
            2 => {
                let at = self.below(b.len() + 1);
                let junk: Vec<u8> = (0..1 + self.below(16))
                    .map(|_| self.below(256) as u8)
                    .collect();
                b.splice(at..at, junk);
            }
            _ => {
                let at = self.below(b.len());
                let end = (at + 1 + self.below(64)).min(b.len());
                b[at..end].iter_mut().for_each(|x| *x = 0);
            }
        }
        b
    }
}

/// Runs `f` for `n` cases; a panic fails the test with the case number. Returns how many
/// cases loaded.
fn run(what: &str, mut f: impl FnMut(usize) -> bool) -> usize {
    let n = cases();
    let mut loaded = 0;
    for case in 0..n {
        match catch_unwind(AssertUnwindSafe(|| f(case))) {
            Ok(ok) => loaded += usize::from(ok),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{what}: case {case} panicked: {msg}");
            }
        }
    }
    eprintln!(
        "fuzz {what}: {n} cases, {loaded} loaded, {} typed errors, 0 panics",
        n - loaded
    );
    loaded
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn adapter_configs() {
    let sources: Vec<Value> = ["core/tiny/adapter", "gpt2/peft-c_attn", "plain/peft-lora"]
        .iter()
        .map(|d| read_json(&fixture(d).join("adapter_config.json")))
        .collect();
    let mut m = Mutator::new(1);
    run("adapter_config.json", |case| {
        let src = &sources[case % sources.len()];
        let text = if case % 4 == 3 {
            String::from_utf8_lossy(&m.bytes(src.to_string().as_bytes())).into_owned()
        } else {
            let edits = 1 + m.below(3);
            m.json(src, edits).to_string()
        };
        LoraConfig::from_json(&text).is_ok()
    });
}

/// Splits a safetensors file into its JSON header and payload.
fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &Value, payload: &[u8], declared: Option<u64>) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = declared.unwrap_or(h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out
}

/// PEFT adapter directories: the tensors file (header edits such as dtypes, shapes, offsets and
/// declared sizes, or raw damage) and the config against the model.
#[test]
fn adapter_files_against_a_model() {
    let device = Device::flex();
    let model = Tiny::from_fixture(&device);
    let src = fixture("core/tiny/adapter");
    let config = read_json(&src.join("adapter_config.json"));
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let (header, payload) = split_safetensors(&bytes);
    let mut m = Mutator::new(2);
    run("adapter_model.safetensors + config", |case| {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, file) = match case % 4 {
            0 => (config.clone(), m.bytes(&bytes)),
            1 | 2 => {
                let declared = (m.below(6) == 0).then(|| m.0.next_u64() >> m.below(64));
                let edits = 1 + m.below(2);
                (
                    config.clone(),
                    join_safetensors(&m.json(&header, edits), &payload, declared),
                )
            }
            _ => (m.json(&config, 1), bytes.clone()),
        };
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        std::fs::write(dir.path().join("adapter_model.safetensors"), file).unwrap();
        load_adapter(&model, dir.path(), "default").is_ok()
    });
}

/// Hugging Face `config.json` of GPT-2 and RoBERTa, loaded with the real weights.
#[test]
fn model_configs() {
    let device = Device::flex();
    let mut m = Mutator::new(3);
    for (fixture_dir, is_gpt2) in [("gpt2/tiny-a", true), ("encoder/roberta-a", false)] {
        let src = fixture(fixture_dir);
        let config = read_json(&src.join("config.json"));
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&src).unwrap().flatten() {
            if entry.file_name() != "config.json" {
                std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name()))
                    .unwrap();
            }
        }
        run(&format!("{fixture_dir}/config.json"), |_| {
            let edits = 1 + m.below(2);
            std::fs::write(
                dir.path().join("config.json"),
                m.json(&config, edits).to_string(),
            )
            .unwrap();
            if is_gpt2 {
                Gpt2LmHeadModel::from_pretrained(dir.path(), &device).is_ok()
            } else {
                RobertaForSequenceClassification::from_pretrained(dir.path(), &device).is_ok()
            }
        });
    }
}

/// Sharded checkpoints: `model.safetensors.index.json` edited (weight_map entries, metadata).
#[test]
fn sharded_indexes() {
    let device = Device::flex();
    let src = fixture("gpt2/tiny-a");
    let dir = tempfile::tempdir().unwrap();
    let shard = "model-00001-of-00001.safetensors";
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    std::os::unix::fs::symlink(src.join("model.safetensors"), dir.path().join(shard)).unwrap();
    let keys = lora_core::read_safetensors(src.join("model.safetensors")).unwrap();
    let map: serde_json::Map<String, Value> = keys
        .keys()
        .map(|k| (k.clone(), Value::from(shard)))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": map});
    let mut m = Mutator::new(4);
    let loaded = run("model.safetensors.index.json", |case| {
        let text = if case % 3 == 2 {
            String::from_utf8_lossy(&m.bytes(index.to_string().as_bytes())).into_owned()
        } else {
            m.json(&index, 1).to_string()
        };
        let path = dir.path().join("model.safetensors.index.json");
        std::fs::write(path, text).unwrap();
        Gpt2LmHeadModel::from_pretrained(dir.path(), &device).is_ok()
    });
    assert!(loaded > 0, "some edits (metadata) leave a loadable index");
}

/// `tokenizer.json` (RoBERTa's, 100 KB) edited, then used.
#[test]
fn tokenizer_files() {
    let tokenizer = read_json(&fixture("encoder/roberta-a").join("tokenizer.json"));
    let mut m = Mutator::new(5);
    let dir = tempfile::tempdir().unwrap();
    run("tokenizer.json", |case| {
        let text = if case % 4 == 3 {
            String::from_utf8_lossy(&m.bytes(tokenizer.to_string().as_bytes())).into_owned()
        } else {
            m.json(&tokenizer, 1).to_string()
        };
        std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
        match TextTokenizer::from_dir(dir.path()) {
            Ok(t) => t.encode("a delight from start to finish").is_ok(),
            Err(_) => false,
        }
    });
}

/// Data files (JSONL, CSV, TSV, E2E text) damaged byte-wise, read and tokenized.
#[test]
fn data_rows() {
    let tokenizer = TextTokenizer::from_dir(fixture("gpt2/tokenizer")).unwrap();
    let files = [
        (
            "lm.jsonl",
            Columns::prompt_completion("prompt", "completion"),
        ),
        ("sentiment.csv", Columns::text("sentence")),
        ("stsb.tsv", Columns::text("sentence1")),
        ("e2e.txt", Columns::e2e("text")),
    ];
    let mut m = Mutator::new(6);
    let dir = tempfile::tempdir().unwrap();
    run("data rows", |case| {
        let (name, columns) = &files[case % files.len()];
        let bytes = std::fs::read(fixture("train").join(name)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, m.bytes(&bytes)).unwrap();
        let config = DataConfig {
            columns: columns.clone(),
            max_length: 32,
            validation_ratio: 0.0,
            ..Default::default()
        };
        load_text_datasets(&path, None, &config, &tokenizer).is_ok()
    });
}

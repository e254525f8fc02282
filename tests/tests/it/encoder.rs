//! RoBERTa / BERT against transformers + peft (fixtures from scripts/make_encoder_fixtures.py):
//! tokenizers, hidden states and logits for single sentences and pairs, right- and left-padded,
//! the masked-LM head, PEFT SEQ_CLS adapters in both directions, fresh heads, clear errors on
//! bad input, and the real all-MiniLM-L6-v2 weights (fetched by scripts/fetch_assets.sh;
//! skipped visibly when absent).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{
    InitLoraWeights, LoraConfig, LoraModelExt, ParamReport, load_adapter, save_adapter, site_paths,
    visit_params,
};
use lora_models::ModelError;
use lora_models::bert::{
    BertConfig, BertForSequenceClassification, BertModel, ClassificationTargets, EncoderBatch,
    EncoderCheckpoint, EncoderTokenizer, LoadOptions, PaddingSide, ProblemType, RobertaForMaskedLM,
    RobertaForSequenceClassification, SentenceEncoder, cosine_similarity, inject_encoder_lora,
    sequence_classification_loss,
};

use crate::common::{assert_close, devices, fixture, host, ids, load, max_diff};

pub(crate) fn enc(rel: &str) -> PathBuf {
    fixture(&format!("encoder/{rel}"))
}

pub(crate) fn reference() -> HashMap<String, HostTensor> {
    load("encoder/reference.safetensors")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn host_ids(t: &Tensor<2, Int>) -> Vec<i64> {
    t.clone().into_data().try_to_vec_as::<i64>().unwrap()
}

fn ref_ids(t: &HostTensor) -> Vec<i64> {
    t.data.iter().map(|x| *x as i64).collect()
}

/// Max |a - b| over the rows whose mask is 1 (`[batch, seq, d]` tensors, `[batch, seq]` mask).
pub(crate) fn masked_diff(a: &HostTensor, b: &HostTensor, mask: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    let d = a.shape[2];
    let mut m = 0f32;
    for (i, keep) in mask.data.iter().enumerate() {
        if *keep != 0.0 {
            for j in 0..d {
                m = m.max((a.data[i * d + j] - b.data[i * d + j]).abs());
            }
        }
    }
    m
}

#[test]
fn tokenizers_match_hf() {
    let refs = json(&enc("tokenizer-reference.json"));
    for (family, dir) in [("roberta", "roberta-a"), ("bert", "bert-b")] {
        let config = BertConfig::load(enc(dir)).unwrap();
        // From tokenizer.json, and from the vocabulary files alone.
        let tmp = tempfile::tempdir().unwrap();
        for f in ["config.json", "vocab.json", "merges.txt", "vocab.txt"] {
            if enc(dir).join(f).exists() {
                std::fs::copy(enc(dir).join(f), tmp.path().join(f)).unwrap();
            }
        }
        for (how, tok) in [
            (
                "tokenizer.json",
                EncoderTokenizer::from_dir(enc(dir), &config).unwrap(),
            ),
            (
                "vocab files",
                EncoderTokenizer::from_dir(tmp.path(), &config).unwrap(),
            ),
        ] {
            let r = &refs[family];
            for case in r["single"].as_array().unwrap() {
                let text = case["text"].as_str().unwrap();
                let (got, types) = tok.encode(text).unwrap();
                assert_eq!(got, u32s(&case["ids"]), "{family} {how}: {text:?}");
                if case["untruncated_len"].as_u64().unwrap() as usize > tok.max_length() {
                    assert_eq!(
                        got.len(),
                        tok.max_length(),
                        "{family}: truncated to the model's maximum"
                    );
                }
                assert!(types.iter().all(|t| *t == 0));
            }
            for case in r["pairs"].as_array().unwrap() {
                let (a, b) = (case["a"].as_str().unwrap(), case["b"].as_str().unwrap());
                let (got, types) = tok.encode_pair(a, b).unwrap();
                assert_eq!(
                    got,
                    u32s(&case["ids"]),
                    "{family} {how}: pair {a:?} / {b:?}"
                );
                if !case["type_ids"].is_null() {
                    assert_eq!(types, u32s(&case["type_ids"]), "{family} {how}: pair types");
                }
            }
            for case in r["truncated"].as_array().unwrap() {
                let max = case["max_length"].as_u64().unwrap() as usize;
                assert_eq!(
                    max,
                    tok.max_length(),
                    "{family}: truncation at the model's maximum"
                );
                let (got, _) = match case.get("text") {
                    Some(t) => tok.encode(t.as_str().unwrap()).unwrap(),
                    None => tok
                        .encode_pair(case["a"].as_str().unwrap(), case["b"].as_str().unwrap())
                        .unwrap(),
                };
                assert_eq!(got, u32s(&case["ids"]), "{family} {how}: truncated");
                assert_eq!(got.len(), max);
            }
        }
    }
}

#[test]
fn batches_pad_like_hf_on_both_sides() {
    let r = reference();
    let device = Device::flex();
    for (family, dir) in [("roberta-a", "roberta-a"), ("bert-b", "bert-b")] {
        let config = BertConfig::load(enc(dir)).unwrap();
        for side in [PaddingSide::Right, PaddingSide::Left] {
            let s = if side == PaddingSide::Right {
                "right"
            } else {
                "left"
            };
            let tok = EncoderTokenizer::from_dir(enc(dir), &config)
                .unwrap()
                .with_padding_side(side);
            let single = tok
                .batch(
                    &[
                        "The quick brown fox jumps over the lazy dog.",
                        "Hello world",
                        "A man is eating food.",
                    ],
                    &device,
                )
                .unwrap();
            let pairs = tok
                .batch_pairs(
                    &[
                        ("A man is eating food.", "A man is eating a piece of bread."),
                        ("The dog runs.", "Is the quick fox brown or red?"),
                        ("Hello", "world"),
                    ],
                    &device,
                )
                .unwrap();
            for (kind, batch) in [("single", single), ("pair", pairs)] {
                let tag = format!("{family}.{kind}.{s}");
                assert_eq!(
                    host_ids(&batch.input_ids),
                    ref_ids(&r[&format!("{tag}.ids")]),
                    "{tag}: ids"
                );
                assert_eq!(
                    host_ids(&batch.attention_mask),
                    ref_ids(&r[&format!("{tag}.mask")]),
                    "{tag}: mask"
                );
                if let Some(t) = r.get(&format!("{tag}.types")) {
                    assert_eq!(
                        host_ids(&batch.token_type_ids),
                        ref_ids(t),
                        "{tag}: token types"
                    );
                }
            }
        }
    }
}

#[test]
fn module_paths_and_checkpoint_keys_are_hf_names() {
    let device = Device::flex();
    let (model, _) =
        RobertaForSequenceClassification::from_pretrained(enc("roberta-a"), &device).unwrap();
    let sites = site_paths(&model);
    for s in [
        "roberta.embeddings.word_embeddings",
        "roberta.encoder.layer.0.attention.self.query",
        "roberta.encoder.layer.1.attention.self.value",
        "roberta.encoder.layer.1.attention.output.dense",
        "roberta.encoder.layer.0.intermediate.dense",
        "roberta.encoder.layer.0.output.dense",
        "classifier.dense",
        "classifier.out_proj",
    ] {
        assert!(sites.iter().any(|x| x == s), "missing site {s}: {sites:?}");
    }
    // Every parameter's Hugging Face name is a key of the checkpoint, and vice versa.
    let mut ours: Vec<String> = visit_params(&model)
        .into_iter()
        .map(|p| p.hf_path)
        .collect();
    let mut theirs: Vec<String> = lora_core::read_safetensors(enc("roberta-a/model.safetensors"))
        .unwrap()
        .into_keys()
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn roberta_and_bert_match_transformers() {
    let r = reference();
    for (name, device) in devices() {
        let (roberta, rc) =
            RobertaForSequenceClassification::from_pretrained(enc("roberta-a"), &device).unwrap();
        assert_eq!(rc.labels(), ["negative", "neutral", "positive"]);
        let (bert, bc) =
            BertForSequenceClassification::from_pretrained(enc("bert-b"), &device).unwrap();
        assert_eq!(bc.num_labels(), 1, "STS-B-style regression head");
        let mut worst = 0f32;
        for kind in ["single", "pair"] {
            for side in ["right", "left"] {
                let tag = format!("roberta-a.{kind}.{side}");
                let (i, m) = (
                    ids(&r[&format!("{tag}.ids")], &device),
                    ids(&r[&format!("{tag}.mask")], &device),
                );
                let hidden = roberta
                    .roberta
                    .forward(i.clone(), Some(m.clone()), None)
                    .unwrap();
                let d = max_diff(&host(hidden), &r[&format!("{tag}.hidden")]);
                assert!(d <= 1e-4, "{name}/{tag}: hidden max abs diff {d:e}");
                let logits = roberta.forward(i, Some(m), None).unwrap();
                let d = max_diff(&host(logits), &r[&format!("{tag}.logits")]);
                assert!(d <= 1e-4, "{name}/{tag}: logits max abs diff {d:e}");
                worst = worst.max(d);

                let tag = format!("bert-b.{kind}.{side}");
                let (i, m, t) = (
                    ids(&r[&format!("{tag}.ids")], &device),
                    ids(&r[&format!("{tag}.mask")], &device),
                    ids(&r[&format!("{tag}.types")], &device),
                );
                let hidden = bert
                    .bert
                    .forward(i.clone(), Some(m.clone()), Some(t.clone()))
                    .unwrap();
                let pooled = bert.bert.pooled_output(hidden.clone()).unwrap();
                let d = max_diff(&host(hidden), &r[&format!("{tag}.hidden")]);
                assert!(d <= 1e-4, "{name}/{tag}: hidden max abs diff {d:e}");
                assert_close(
                    &format!("{name}/{tag}: pooled"),
                    &host(pooled),
                    &r[&format!("{tag}.pooled")],
                    1e-4,
                );
                let logits = bert.forward(i, Some(m), Some(t)).unwrap();
                let d = max_diff(&host(logits), &r[&format!("{tag}.logits")]);
                assert!(d <= 1e-4, "{name}/{tag}: logits max abs diff {d:e}");
                worst = worst.max(d);
            }
        }
        eprintln!("{name}: encoder logits vs transformers, max abs diff {worst:.2e}");

        // Losses: cross-entropy (3 classes) and MSE (regression), as transformers computes them.
        let (i, m) = (
            ids(&r["roberta-a.single.right.ids"], &device),
            ids(&r["roberta-a.single.right.mask"], &device),
        );
        let logits = roberta.forward(i, Some(m), None).unwrap();
        let labels: Tensor<1, Int> = Tensor::from_data(
            TensorData::new(ref_ids(&r["roberta-a.labels"]), [3]),
            &device,
        );
        let loss = sequence_classification_loss(
            rc.problem_type(),
            logits,
            ClassificationTargets::Classes(labels),
        )
        .unwrap();
        let (ours, want) = (host(loss).data[0], r["roberta-a.loss"].data[0]);
        assert!(
            (ours - want).abs() <= 1e-5,
            "{name}: cross-entropy {ours} vs {want}"
        );
        let (i, m, t) = (
            ids(&r["bert-b.pair.right.ids"], &device),
            ids(&r["bert-b.pair.right.mask"], &device),
            ids(&r["bert-b.pair.right.types"], &device),
        );
        let scores = bert.forward(i, Some(m), Some(t)).unwrap();
        let y = r["bert-b.scores"]
            .to_tensor::<2>(&device, "scores")
            .unwrap();
        let loss = sequence_classification_loss(
            bc.problem_type(),
            scores,
            ClassificationTargets::Values(y),
        )
        .unwrap();
        let (ours, want) = (host(loss).data[0], r["bert-b.loss"].data[0]);
        assert!((ours - want).abs() <= 1e-5, "{name}: MSE {ours} vs {want}");
        let logits = r["bce.logits"].to_tensor::<2>(&device, "logits").unwrap();
        let y = r["bce.targets"].to_tensor::<2>(&device, "targets").unwrap();
        let loss = sequence_classification_loss(
            ProblemType::MultiLabelClassification,
            logits,
            ClassificationTargets::Values(y),
        )
        .unwrap();
        let (ours, want) = (host(loss).data[0], r["bce.loss"].data[0]);
        assert!(
            (ours - want).abs() <= 1e-5,
            "{name}: BCE with logits {ours} vs {want}"
        );
    }
}

#[test]
fn roberta_masked_lm_matches_transformers() {
    let r = reference();
    for (name, device) in devices() {
        let (model, _) = RobertaForMaskedLM::from_pretrained(enc("roberta-mlm"), &device).unwrap();
        let (i, m) = (
            ids(&r["roberta-mlm.ids"], &device),
            ids(&r["roberta-mlm.mask"], &device),
        );
        let logits = host(model.forward(i, Some(m), None).unwrap());
        // Left-padded: compare every real token.
        let d = masked_diff(&logits, &r["roberta-mlm.logits"], &r["roberta-mlm.mask"]);
        assert!(d <= 1e-4, "{name}: MLM logits max abs diff {d:e}");
    }
}

#[test]
fn peft_seq_cls_adapters_reproduce_peft_logits() {
    let r = reference();
    for (name, device) in devices() {
        let (base, _) =
            RobertaForSequenceClassification::from_pretrained(enc("roberta-a"), &device).unwrap();
        let (mut model, config) = load_adapter(&base, enc("peft-roberta-a"), "default").unwrap();
        assert_eq!(config.task_type.as_deref(), Some("SEQ_CLS"));
        for side in ["right", "left"] {
            let tag = format!("roberta-a.pair.{side}");
            let (i, m) = (
                ids(&r[&format!("{tag}.ids")], &device),
                ids(&r[&format!("{tag}.mask")], &device),
            );
            let logits = host(model.forward(i, Some(m), None).unwrap());
            let want = &r[&format!("peft-roberta-a.pair.{side}.logits")];
            let d = max_diff(&logits, want);
            assert!(
                d <= 1e-4,
                "{name}/peft-roberta-a/{side}: max abs diff {d:e}"
            );
            // The adapter and the trained head matter: the base model is far from PEFT's logits.
            assert!(max_diff(&r[&format!("{tag}.logits")], want) > 1e-3);
            eprintln!(
                "{name}: PEFT SEQ_CLS adapter (roberta-a, {side}-padded) max abs diff {d:.2e}"
            );
        }
        model.merge_active().unwrap();
        let tag = "roberta-a.pair.right";
        let (i, m) = (
            ids(&r[&format!("{tag}.ids")], &device),
            ids(&r[&format!("{tag}.mask")], &device),
        );
        assert_close(
            &format!("{name}: merged"),
            &host(model.forward(i, Some(m), None).unwrap()),
            &r["peft-roberta-a.pair.right.logits"],
            1e-4,
        );

        let (base, _) =
            BertForSequenceClassification::from_pretrained(enc("bert-b"), &device).unwrap();
        let (model, config) = load_adapter(&base, enc("peft-bert-b"), "default").unwrap();
        assert!(config.use_rslora);
        assert!(site_paths(&model).iter().any(|s| s == "bert.pooler.dense"));
        let tag = "bert-b.pair.right";
        let (i, m, t) = (
            ids(&r[&format!("{tag}.ids")], &device),
            ids(&r[&format!("{tag}.mask")], &device),
            ids(&r[&format!("{tag}.types")], &device),
        );
        let logits = host(model.forward(i, Some(m), Some(t)).unwrap());
        let d = max_diff(&logits, &r["peft-bert-b.pair.right.logits"]);
        assert!(d <= 1e-4, "{name}/peft-bert-b: max abs diff {d:e}");
        eprintln!(
            "{name}: PEFT SEQ_CLS adapter (bert-b, rsLoRA, query/key/value/dense) max abs diff {d:.2e}"
        );
    }
}

/// Where the export test leaves an adapter and our logits for
/// `python scripts/make_encoder_fixtures.py --check-adapter DIR --model roberta-a`.
fn export_dir(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(what)
}

#[test]
fn our_adapter_for_peft() {
    let device = Device::flex();
    device.seed(7);
    let (base, _) =
        RobertaForSequenceClassification::from_pretrained(enc("roberta-a"), &device).unwrap();
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        ..LoraConfig::default()
    }
    .with_init(InitLoraWeights::Random);
    let (model, cfg) = inject_encoder_lora(base.clone(), &lora, "default").unwrap();
    // PEFT's SEQ_CLS defaults.
    assert_eq!(cfg.task_type.as_deref(), Some("SEQ_CLS"));
    assert!(
        cfg.modules_to_save
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m == "classifier")
    );
    let report = ParamReport::new(&model, &cfg);
    // 2 layers × (query + value) × r·(32 + 32), plus the whole head.
    assert_eq!(report.lora_params(), 2 * 2 * 4 * (32 + 32));
    assert_eq!(
        report.trainable,
        report.lora_params() + (32 * 32 + 32) + (32 * 3 + 3)
    );
    // A "trained" head: shift the classifier's output layer.
    let out_proj = model.classifier.out_proj.weight.val().add_scalar(0.25);
    let head = HashMap::from([(
        "classifier.out_proj.weight".to_string(),
        HostTensor::from_tensor(out_proj, "out_proj")
            .unwrap()
            .transposed(),
    )]);
    let (model, _) = lora_core::load_state_dict(model, head, false).unwrap();

    let r = reference();
    let tag = "roberta-a.pair.left";
    let (i, m) = (
        ids(&r[&format!("{tag}.ids")], &device),
        ids(&r[&format!("{tag}.mask")], &device),
    );
    let ours = model.forward(i.clone(), Some(m.clone()), None).unwrap();
    let dir = export_dir("roberta_seq_cls_adapter");
    std::fs::create_dir_all(&dir).unwrap();
    save_adapter(&model, &cfg, "default", &dir).unwrap();
    let saved = json(&dir.join("adapter_config.json"));
    assert_eq!(
        saved["target_modules"],
        serde_json::json!(["query", "value"])
    );
    // Reloaded onto the base model it gives the same logits.
    let (reloaded, _) = load_adapter(&base, &dir, "default").unwrap();
    let again = reloaded.forward(i, Some(m), None).unwrap();
    assert_close("adapter reloads", &host(again), &host(ours.clone()), 1e-5);
    // Leave our logits for the PEFT-side check.
    let tensors = vec![
        ("ids".to_string(), r[&format!("{tag}.ids")].clone()),
        ("mask".to_string(), r[&format!("{tag}.mask")].clone()),
        ("logits".to_string(), host(ours)),
    ];
    let path = dir.join("our_logits.safetensors");
    let bytes = lora_core::io::serialize_safetensors(&tensors, &[("format", "pt")], &path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    eprintln!(
        "SEQ_CLS adapter for PEFT: python scripts/make_encoder_fixtures.py --check-adapter {} --model roberta-a",
        dir.display()
    );
}

#[test]
fn fresh_heads_and_label_counts() {
    let device = Device::flex();
    // A masked-LM checkpoint has no classification head: a fresh one, reported.
    let p = RobertaForSequenceClassification::load_pretrained(
        enc("roberta-mlm"),
        &device,
        &LoadOptions::default(),
    )
    .unwrap();
    let mut fresh = p.report.newly_initialized.clone();
    fresh.sort();
    assert_eq!(
        fresh,
        [
            "classifier.dense.bias",
            "classifier.dense.weight",
            "classifier.out_proj.bias",
            "classifier.out_proj.weight"
        ]
    );
    assert!(p.report.unused.iter().any(|k| k.starts_with("lm_head.")));
    let warning = p
        .report
        .warning("RobertaForSequenceClassification")
        .unwrap();
    assert!(warning.contains("newly initialized"), "{warning}");
    let batch = EncoderTokenizer::from_dir(enc("roberta-mlm"), &p.config)
        .unwrap()
        .batch(&["Hello world"], &device)
        .unwrap();
    let logits = p
        .model
        .forward(
            batch.input_ids.clone(),
            Some(batch.attention_mask.clone()),
            None,
        )
        .unwrap();
    assert_eq!(logits.dims(), [1, 2], "transformers' default of 2 labels");
    assert!(host(logits).data.iter().all(|x| x.is_finite()));
    // A complete checkpoint reports nothing fresh.
    let p = RobertaForSequenceClassification::load_pretrained(
        enc("roberta-a"),
        &device,
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(p.report.newly_initialized.is_empty() && p.report.warning("x").is_none());

    // Another label count than the head's: an error, or a fresh head when asked.
    let five = LoadOptions {
        num_labels: Some(5),
        ..LoadOptions::default()
    };
    let err = RobertaForSequenceClassification::load_pretrained(enc("roberta-a"), &device, &five)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::LabelCountMismatch {
                expected: 5,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("classifier.out_proj.weight"),
        "{err}"
    );
    let p = RobertaForSequenceClassification::load_pretrained(
        enc("roberta-a"),
        &device,
        &LoadOptions {
            ignore_mismatched_head: true,
            ..five
        },
    )
    .unwrap();
    assert_eq!(p.model.num_labels(), 5);
    assert_eq!(p.report.newly_initialized.len(), 4);
    // The config disagreeing with the head it was saved with.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = json(&enc("roberta-a/config.json"));
    cfg["id2label"].as_object_mut().unwrap().remove("2");
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        enc("roberta-a/model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let err = RobertaForSequenceClassification::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::LabelCountMismatch {
                expected: 2,
                found: 3,
                ..
            }
        ),
        "{err}"
    );

    // The BERT body alone loads from a task checkpoint (prefix stripped, head unused).
    let p = BertModel::load_pretrained(enc("bert-b"), &device, &LoadOptions::default()).unwrap();
    assert!(p.report.newly_initialized.is_empty());
    assert_eq!(p.report.unused, ["classifier.bias", "classifier.weight"]);
}

#[test]
fn checkpoints_without_prefix_and_with_new_layernorm_names_load() {
    // bert-b is a pickle with `bert.` keys and legacy gamma/beta; write it back as safetensors
    // without prefix and with weight/bias names: same logits.
    let device = Device::flex();
    let r = reference();
    let (model, _) =
        BertForSequenceClassification::from_pretrained(enc("bert-b"), &device).unwrap();
    let state = lora_models::hf::read_pytorch(&enc("bert-b/pytorch_model.bin")).unwrap();
    assert!(state.keys().any(|k| k.ends_with("LayerNorm.gamma")));
    let renamed: Vec<(String, HostTensor)> = state
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .strip_prefix("bert.")
                .unwrap_or(&k)
                .replace("LayerNorm.gamma", "LayerNorm.weight")
                .replace("LayerNorm.beta", "LayerNorm.bias");
            (k, v)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    let bytes = lora_core::io::serialize_safetensors(&renamed, &[("format", "pt")], &path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::copy(enc("bert-b/config.json"), tmp.path().join("config.json")).unwrap();
    let (again, _) = BertForSequenceClassification::from_pretrained(tmp.path(), &device).unwrap();
    let tag = "bert-b.pair.left";
    let inputs = || {
        (
            ids(&r[&format!("{tag}.ids")], &device),
            Some(ids(&r[&format!("{tag}.mask")], &device)),
            Some(ids(&r[&format!("{tag}.types")], &device)),
        )
    };
    let (i, m, t) = inputs();
    let a = host(model.forward(i, m, t).unwrap());
    let (i, m, t) = inputs();
    let b = host(again.forward(i, m, t).unwrap());
    assert_close("no prefix, weight/bias names", &a, &b, 0.0);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(enc("roberta-a/config.json")).unwrap();
    std::fs::write(tmp.path().join("config.json"), &cfg).unwrap();
    let config = BertConfig::load(tmp.path()).unwrap();
    // Missing vocabulary.
    let err = EncoderTokenizer::from_dir(tmp.path(), &config).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::MissingFile {
                what: "tokenizer",
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(tmp.path().join("tokenizer.json"), "{ not a tokenizer").unwrap();
    assert!(matches!(
        EncoderTokenizer::from_dir(tmp.path(), &config),
        Err(ModelError::Tokenizer(_))
    ));
    std::fs::copy(enc("roberta-a/vocab.json"), tmp.path().join("vocab.json")).unwrap();
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    assert!(
        matches!(
            EncoderTokenizer::from_dir(tmp.path(), &config),
            Err(ModelError::MissingFile { .. })
        ),
        "vocab.json without merges.txt"
    );
    // A tokenizer bigger than the model's vocabulary.
    let small = BertConfig {
        vocab_size: 100,
        ..config.clone()
    };
    assert!(matches!(
        EncoderTokenizer::from_dir(enc("roberta-a"), &small),
        Err(ModelError::Tokenizer(_))
    ));

    // Too-long input: truncated as configured, never a panic.
    let tok = EncoderTokenizer::from_dir(enc("roberta-a"), &config).unwrap();
    let long = "the quick brown fox ".repeat(200);
    let (ids_long, _) = tok.encode(&long).unwrap();
    assert_eq!(ids_long.len(), config.max_tokens());
    let (pair, _) = tok.encode_pair(&long, &long).unwrap();
    assert_eq!(pair.len(), config.max_tokens());
    let short = tok.clone().with_max_length(8).unwrap();
    assert_eq!(short.encode(&long).unwrap().0.len(), 8);
    assert!(
        tok.clone().with_max_length(3).is_err(),
        "no room for a pair's special tokens"
    );
    let (model, _) =
        RobertaForSequenceClassification::from_pretrained(enc("roberta-a"), &device).unwrap();
    let batch = tok.batch(&[long.as_str(), "short"], &device).unwrap();
    assert_eq!(batch.dims(), [2, config.max_tokens()]);
    assert!(
        model
            .forward(batch.input_ids, Some(batch.attention_mask), None)
            .is_ok()
    );
    let too_long = Tensor::<2, Int>::ones([1, config.max_tokens() + 1], &device);
    assert!(matches!(
        model.forward(too_long, None, None),
        Err(ModelError::SequenceTooLong { len: 33, max: 32 })
    ));
    let bad_mask = Tensor::<2, Int>::ones([1, 4], &device);
    assert!(matches!(
        model.forward(
            Tensor::<2, Int>::ones([1, 5], &device),
            Some(bad_mask),
            None
        ),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(EncoderBatch::new(&[], 1, PaddingSide::Right, &device).is_err());
    assert!(EncoderBatch::new(&[(vec![1, 2], vec![0])], 1, PaddingSide::Right, &device).is_err());

    // Unknown or wrong architectures.
    for (from, to) in [
        ("\"roberta\"", "\"gpt2\""),
        ("\"roberta\"", "\"deberta-v2\""),
    ] {
        std::fs::write(tmp.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let err = BertConfig::load(tmp.path()).unwrap_err();
        assert!(matches!(err, ModelError::WrongArchitecture { .. }), "{err}");
    }
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"model_type\": \"roberta\",", "")
            .replace("RobertaForSequenceClassification", "GPT2LMHeadModel"),
    )
    .unwrap();
    assert!(matches!(
        BertConfig::load(tmp.path()),
        Err(ModelError::WrongArchitecture { .. })
    ));
    let err =
        RobertaForSequenceClassification::from_pretrained(enc("bert-b"), &device).unwrap_err();
    assert!(matches!(err, ModelError::WrongArchitecture { .. }), "{err}");
    // Invalid values name the field.
    for (from, to, field) in [
        (
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 5",
            "num_attention_heads",
        ),
        (
            "\"hidden_act\": \"gelu\"",
            "\"hidden_act\": \"swiglu\"",
            "hidden_act",
        ),
        (
            "\"max_position_embeddings\": 34",
            "\"max_position_embeddings\": 2",
            "max_position_embeddings",
        ),
        (
            "\"is_decoder\": false",
            "\"is_decoder\": true",
            "is_decoder",
        ),
    ] {
        std::fs::write(tmp.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let err = BertConfig::load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        BertConfig::load(tmp.path()),
        Err(ModelError::Config { .. })
    ));
    // GPT-2 weights under an encoder config.
    std::fs::write(tmp.path().join("config.json"), &cfg).unwrap();
    std::fs::copy(
        fixture("gpt2/tiny-a/model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let err = RobertaForSequenceClassification::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(matches!(err, ModelError::WrongArchitecture { .. }), "{err}");
    // Weights of another shape: the error names the tensor.
    std::fs::copy(
        enc("roberta-a/model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"intermediate_size\": 48", "\"intermediate_size\": 64"),
    )
    .unwrap();
    let err = RobertaForSequenceClassification::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(err.to_string().contains("intermediate.dense"), "{err}");
    // Wrong target kinds for a loss.
    let logits = Tensor::<2>::zeros([2, 3], &device);
    let config = BertConfig::load(enc("roberta-a")).unwrap();
    assert!(
        sequence_classification_loss(
            config.problem_type(),
            logits,
            ClassificationTargets::Values(Tensor::zeros([2, 3], &device))
        )
        .is_err()
    );
}

// ----------------------------------------------------------------------- real weights

/// The fetched all-MiniLM-L6-v2 directory, or `None` with a visible skip line (a failure
/// under `LORA_REQUIRE_ASSETS=1`, as in CI, which fetches it).
fn minilm_dir() -> Option<PathBuf> {
    let root = std::env::var_os("LORA_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("assets")
        });
    let dir = root.join("all-minilm-l6-v2");
    if dir.join("model.safetensors").exists() {
        Some(dir)
    } else {
        assert!(
            !crate::common::assets_required(),
            "{} not found, and LORA_REQUIRE_ASSETS=1 (run scripts/fetch_assets.sh)",
            dir.display()
        );
        eprintln!(
            "SKIP MiniLM tests: {} not found (run scripts/fetch_assets.sh)",
            dir.display()
        );
        None
    }
}

#[test]
fn minilm_sentence_embeddings_match_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let r = load("encoder/minilm-reference.safetensors");
    let meta = json(&enc("minilm-reference.json"));
    let sentences: Vec<&str> = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for (name, device) in devices() {
        let encoder = SentenceEncoder::from_pretrained(&dir, &device).unwrap();
        assert!(encoder.normalize);
        assert_eq!(
            encoder.tokenizer.max_length(),
            256,
            "sentence-transformers' max_seq_length"
        );
        let batch = encoder.tokenizer.batch(&sentences, &device).unwrap();
        assert_eq!(
            host_ids(&batch.input_ids),
            ref_ids(&r["ids"]),
            "{name}: token ids"
        );
        assert_eq!(
            &host_ids(&batch.input_ids)[..8],
            [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
        );
        let emb = encoder.embed(&sentences, &device).unwrap();
        let d = max_diff(&host(emb.clone()), &r["embeddings"]);
        assert!(d <= 1e-4, "{name}: MiniLM embeddings max abs diff {d:e}");
        let cos = host(cosine_similarity(emb.clone(), emb));
        let n = sentences.len();
        let c01 = cos.data[1];
        let want = meta["cosine_0_1"].as_f64().unwrap() as f32;
        assert!((c01 - want).abs() <= 1e-4, "{name}: cosine {c01} vs {want}");
        assert!((c01 - 0.7553).abs() < 5e-5);
        eprintln!(
            "{name}: MiniLM embeddings max abs diff {d:.2e}; cosine(\"{}\", \"{}\") = {c01:.4}; {n} sentences",
            sentences[0], sentences[1]
        );
    }
}

#[test]
fn minilm_lora_query_value_has_peft_param_count() {
    let Some(dir) = minilm_dir() else { return };
    let meta = json(&enc("minilm-reference.json"));
    let device = Device::flex();
    let (model, config) = BertModel::from_pretrained(&dir, &device).unwrap();
    assert_eq!((config.hidden_size, config.num_hidden_layers), (384, 6));
    let lora = LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        ..LoraConfig::default()
    };
    let (model, cfg) = inject_encoder_lora(model, &lora, "default").unwrap();
    let report = ParamReport::new(&model, &cfg);
    eprintln!("MiniLM-L6 + LoRA r=8 on query/value: {}", report.summary());
    assert_eq!(report.lora_params(), 73_728);
    assert_eq!(
        report.trainable,
        meta["lora_r8_qv_trainable"].as_u64().unwrap() as usize
    );
    assert_eq!(
        report.total,
        meta["lora_r8_qv_total"].as_u64().unwrap() as usize
    );
    // B = 0: the adapted model still gives the reference embeddings.
    let r = load("encoder/minilm-reference.safetensors");
    let hidden = model
        .forward(
            ids(&r["ids"], &device),
            Some(ids(&r["mask"], &device)),
            Some(ids(&r["types"], &device)),
        )
        .unwrap();
    let emb = lora_models::bert::l2_normalize(lora_models::bert::mean_pooling(
        hidden,
        ids(&r["mask"], &device),
    ));
    assert_close("MiniLM + fresh LoRA", &host(emb), &r["embeddings"], 1e-4);
}

/// An untied masked-LM decoder is refused by name unless it equals the word embeddings
/// (issue 14 item 7): transformers would use it, we would silently use the table.
#[test]
fn an_untied_mlm_decoder_is_refused_unless_equal() {
    let device = Device::flex();
    let src = enc("roberta-mlm");
    for (decoder_offset, ok) in [(None, false), (Some(0.0), true), (Some(1.0), false)] {
        let dir = tempfile::tempdir().unwrap();
        let tok = "tokenizer.json";
        std::fs::copy(src.join(tok), dir.path().join(tok)).unwrap();
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        c["tie_word_embeddings"] = false.into();
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        let mut t: Vec<(String, HostTensor)> =
            lora_core::read_safetensors(src.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .filter(|(k, _)| k != "lm_head.decoder.weight")
                .collect();
        if let Some(offset) = decoder_offset {
            let table = t
                .iter()
                .find(|(k, _)| k.ends_with("word_embeddings.weight"))
                .unwrap()
                .1
                .clone();
            let mut d = table;
            d.data[0] += offset;
            t.push(("lm_head.decoder.weight".into(), d));
        }
        lora_core::save_safetensors(dir.path().join("model.safetensors"), &t).unwrap();
        let r = RobertaForMaskedLM::from_pretrained(dir.path(), &device);
        assert_eq!(r.is_ok(), ok, "{decoder_offset:?}: {:?}", r.err());
        if let Err(e) = r {
            assert!(e.to_string().contains("decoder"), "{e}");
        }
    }
}

/// A tensor of the encoder body (or of this class's head) that nothing reads is refused by
/// name; other classes' tensors (RoBERTa's pooler, an MLM head) are skipped, as transformers
/// skips them (issue 14 item 7).
#[test]
fn unread_encoder_tensors_are_refused_by_name() {
    let device = Device::flex();
    let src = enc("roberta-a");
    let with_extra = |key: &str| {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut t: Vec<(String, HostTensor)> =
            lora_core::read_safetensors(src.join("model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let any = t[0].1.clone();
        t.push((key.to_string(), any));
        lora_core::save_safetensors(dir.path().join("model.safetensors"), &t).unwrap();
        RobertaForSequenceClassification::from_pretrained(dir.path(), &device).map(|_| ())
    };
    let key = "roberta.encoder.layer.0.attention.self.distance_embedding.weight";
    let e = with_extra(key).unwrap_err().to_string();
    assert!(e.contains(key), "{e}");
    let e = with_extra("classifier.extra.weight")
        .unwrap_err()
        .to_string();
    assert!(e.contains("classifier.extra.weight"), "{e}");
    with_extra("roberta.pooler.dense.weight").unwrap();
    with_extra("lm_head.dense.weight").unwrap();
}

/// Activation checkpointing per layer in the classifiers' step (issue 15): the same loss and
/// gradients (≤ 1e-5) as one forward and one backward, LoRA factors and the classifier's
/// `modules_to_save` copy included, on RoBERTa and on BERT (pooler), with padding.
#[test]
fn checkpointed_classifier_steps_give_the_plain_gradients() {
    let device = Device::flex().autodiff();
    let config = |dir: &str| {
        let mut c = BertConfig::load(enc(dir).join("config.json")).unwrap();
        c.hidden_dropout_prob = 0.0;
        c.attention_probs_dropout_prob = 0.0;
        c.classifier_dropout = Some(0.0);
        c
    };
    let roberta = RobertaForSequenceClassification::new(&config("roberta-a"), &device);
    check_checkpointed(roberta, &device);
    let bert = BertForSequenceClassification::new(&config("bert-b"), &device);
    check_checkpointed(bert, &device);
}

fn check_checkpointed<M>(model: M, device: &Device)
where
    M: EncoderCheckpoint + lora_models::bert::EncoderClassifier,
{
    let lora = LoraConfig::new(4, 8.0, &["query", "value"]).with_init(InitLoraWeights::Random);
    let (model, _) = inject_encoder_lora(model, &lora, "default").unwrap();
    let ids = Tensor::<2, Int>::from_data([[0, 35, 99, 7, 2], [0, 12, 2, 1, 1]], device);
    let mask = Tensor::<2, Int>::from_data([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], device);
    // Cross-entropy for a classifier, MSE for a one-label (regression) head like bert-b's.
    let loss_of = |logits: Tensor<2>| match logits.dims()[1] {
        1 => lora_train::mse_loss(logits.reshape([2]), Tensor::from_data([0.5, -1.0], device)),
        n => lora_train::class_loss(logits, Tensor::from_data([n as i64 - 1, 0], device)),
    };
    let grads = |parts| {
        let mut acc = lora_train::optim::GradAccumulator::new();
        acc.add_parts(&model, parts, 1);
        let out: std::collections::BTreeMap<String, HostTensor> = acc
            .finish()
            .into_iter()
            .map(|(k, v)| (k, host(v)))
            .collect();
        out
    };
    let hidden = model
        .body()
        .forward(ids.clone(), Some(mask.clone()), None)
        .unwrap();
    let loss = loss_of(model.head(hidden).unwrap());
    let want = grads(vec![loss.backward()]);
    assert!(
        want.keys().any(|k| k.contains("modules_to_save")),
        "{:?}",
        want.keys()
    );
    let (got_loss, parts) =
        lora_models::bert::checkpointed_step(&model, ids, Some(mask), None, |l| {
            Ok::<_, ModelError>(loss_of(l))
        })
        .unwrap();
    assert_close("checkpointed loss", &host(got_loss), &host(loss), 1e-5);
    let got = grads(parts);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, g) in &want {
        assert_close(path, &got[path], g, 1e-5);
    }
}

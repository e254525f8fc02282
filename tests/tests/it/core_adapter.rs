//! PEFT adapter files: a directory written by PEFT loads and reproduces PEFT's logits; ours
//! reloads bit-identically; bad files give typed errors that name the problem.

use std::path::Path;

use burn::prelude::*;
use lora_core::{
    ADAPTER_FILE, CONFIG_FILE, LoraConfig, LoraError, LoraModelExt, adapter_state, load_adapter,
    save_adapter,
};

use crate::common::{Tiny, assert_close, devices, fixture, host, ids, load};

const PEFT_DIR: &str = "core/tiny/adapter";

#[test]
fn peft_adapter_reproduces_peft_logits() {
    let reference = load("core/tiny/reference.safetensors");
    for (name, device) in devices() {
        let base = Tiny::from_fixture(&device);
        let ids = ids(&reference["ids"], &device);
        assert_close(
            &format!("{name}: base logits"),
            &host(base.forward(ids.clone())),
            &reference["base_logits"],
            1e-5,
        );
        let (mut model, config) = load_adapter(&base, fixture(PEFT_DIR), "default").unwrap();
        assert_eq!(config.r, 4);
        assert_close(
            &format!("{name}: adapter logits"),
            &host(model.forward(ids.clone())),
            &reference["logits"],
            1e-5,
        );
        model.merge_active().unwrap();
        assert_close(
            &format!("{name}: merged logits"),
            &host(model.forward(ids.clone())),
            &reference["merged_logits"],
            1e-5,
        );
        // Disabling turns the LoRA updates off; the trained head and biases (modules_to_save,
        // bias = lora_only) are the model's parameters now and stay, so this is not the base.
        model.set_adapters_disabled(true).unwrap();
        let disabled = host(model.forward(ids));
        assert!(crate::common::max_diff(&disabled, &reference["logits"]) > 1e-3);
    }
}

#[test]
fn our_adapter_reloads_bit_identically() {
    let device = Device::flex();
    let base = Tiny::from_fixture(&device);
    let (model, config) = load_adapter(&base, fixture(PEFT_DIR), "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &config, "default", dir.path()).unwrap();

    // The file has PEFT's metadata and exactly PEFT's keys and shapes.
    let ours = lora_core::read_safetensors(dir.path().join(ADAPTER_FILE)).unwrap();
    let peft = load(&format!("{PEFT_DIR}/{ADAPTER_FILE}"));
    let mut k1: Vec<_> = ours.keys().collect();
    let mut k2: Vec<_> = peft.keys().collect();
    k1.sort();
    k2.sort();
    assert_eq!(k1, k2, "same keys as PEFT's file");
    for (k, t) in &peft {
        assert_eq!(
            &ours[k], t,
            "{k}: values survive a load/save round trip exactly"
        );
    }
    let bytes = std::fs::read(dir.path().join(ADAPTER_FILE)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );

    let (again, config2) = load_adapter(&base, dir.path(), "default").unwrap();
    assert_eq!(config2.target_modules, config.target_modules);
    let (t1, _) = adapter_state(&model, &config, "default").unwrap();
    let (t2, _) = adapter_state(&again, &config2, "default").unwrap();
    assert_eq!(t1, t2, "reload is bit-identical");
}

#[test]
fn minimal_config_loads() {
    let c = LoraConfig::from_json(
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"]}"#,
    )
    .unwrap();
    assert_eq!((c.r, c.lora_alpha, c.lora_dropout), (2, 4.0, 0.0));
    // Keys from a newer PEFT are ignored.
    let c = LoraConfig::from_json(
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": "q", "brand_new_option": {"x": 1}}"#,
    )
    .unwrap();
    assert_eq!(c.r, 2);
}

fn copy_peft_dir(to: &Path) {
    for f in [ADAPTER_FILE, CONFIG_FILE] {
        std::fs::copy(fixture(PEFT_DIR).join(f), to.join(f)).unwrap();
    }
}

/// Writes `tensors` as the adapter file of `dir`.
fn write_tensors(dir: &Path, tensors: &[(String, lora_core::io::HostTensor)]) {
    let path = dir.join(ADAPTER_FILE);
    let bytes = lora_core::io::serialize_safetensors(tensors, &[("format", "pt")], &path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn peft_tensors() -> Vec<(String, lora_core::io::HostTensor)> {
    let mut t: Vec<_> = load(&format!("{PEFT_DIR}/{ADAPTER_FILE}"))
        .into_iter()
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn bad_adapter_files_are_typed_errors() {
    let device = Device::flex();
    let base = Tiny::from_fixture(&device);
    let try_load = |dir: &Path| load_adapter(&base, dir, "default").map(|_| ());

    // Missing config file.
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(try_load(dir.path()), Err(LoraError::Io { .. })));

    // Truncated safetensors.
    copy_peft_dir(dir.path());
    let full = std::fs::read(dir.path().join(ADAPTER_FILE)).unwrap();
    std::fs::write(dir.path().join(ADAPTER_FILE), &full[..full.len() / 2]).unwrap();
    assert!(matches!(
        try_load(dir.path()),
        Err(LoraError::Safetensors { .. })
    ));

    // Garbage.
    std::fs::write(
        dir.path().join(ADAPTER_FILE),
        b"not a safetensors file at all",
    )
    .unwrap();
    assert!(matches!(
        try_load(dir.path()),
        Err(LoraError::Safetensors { .. })
    ));

    // Wrong shape: names the key.
    let mut t = peft_tensors();
    let key = "base_model.model.encoder.layers.0.q.lora_A.weight".to_string();
    let i = t.iter().position(|(k, _)| *k == key).unwrap();
    t[i].1 = lora_core::io::HostTensor {
        shape: vec![3, 8],
        data: vec![0.0; 24],
    };
    write_tensors(dir.path(), &t);
    match try_load(dir.path()) {
        Err(LoraError::ShapeMismatch { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }

    // Unknown key: names it.
    let mut t = peft_tensors();
    t.push((
        "base_model.model.encoder.layers.0.nope.weight".into(),
        t[0].1.clone(),
    ));
    write_tensors(dir.path(), &t);
    match try_load(dir.path()) {
        Err(e @ LoraError::UnexpectedTensor { .. }) => assert!(e.to_string().contains("nope")),
        other => panic!("expected UnexpectedTensor, got {other:?}"),
    }

    // Missing tensor.
    let t: Vec<_> = peft_tensors()
        .into_iter()
        .filter(|(k, _)| !k.contains("layers.1.v.lora_B"))
        .collect();
    write_tensors(dir.path(), &t);
    assert!(matches!(
        try_load(dir.path()),
        Err(LoraError::MissingTensor { .. })
    ));

    // LoRA factors for a module the config does not target (e.g. an unsupported variant).
    let mut t = peft_tensors();
    t.push((
        "base_model.model.encoder.layers.0.fc.lora_A.weight".into(),
        t[0].1.clone(),
    ));
    write_tensors(dir.path(), &t);
    assert!(matches!(
        try_load(dir.path()),
        Err(LoraError::UnexpectedTensor { .. })
    ));

    // Unsupported feature in the config.
    write_tensors(dir.path(), &peft_tensors());
    let cfg = std::fs::read_to_string(fixture(PEFT_DIR).join(CONFIG_FILE)).unwrap();
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    assert!(matches!(
        try_load(dir.path()),
        Err(LoraError::Unsupported(_))
    ));

    // Malformed JSON.
    std::fs::write(
        dir.path().join(CONFIG_FILE),
        "{\"peft_type\": \"LORA\", \"r\": ",
    )
    .unwrap();
    assert!(matches!(try_load(dir.path()), Err(LoraError::Json { .. })));
}

#[test]
fn invalid_config_values_are_errors() {
    let bad = [
        (r#"{"peft_type":"LORA","r":0}"#, "r"),
        (r#"{"peft_type":"LORA","lora_dropout":1.0}"#, "lora_dropout"),
        (
            r#"{"peft_type":"LORA","lora_dropout":-0.1}"#,
            "lora_dropout",
        ),
        (
            r#"{"peft_type":"LORA","rank_pattern":{"q":0}}"#,
            "rank_pattern",
        ),
        (
            r#"{"peft_type":"LORA","target_modules":"(unclosed"}"#,
            "target_modules",
        ),
        (
            r#"{"peft_type":"LORA","target_modules":"q","layers_to_transform":[0]}"#,
            "layers_to_transform",
        ),
        (r#"{"peft_type":"LORA","bias":"some"}"#, "bias"),
        (
            r#"{"peft_type":"LORA","init_lora_weights":"corda"}"#,
            "init_lora_weights",
        ),
        (r#"{"peft_type":"PREFIX_TUNING"}"#, "peft_type"),
        (r#"{"r":4}"#, "peft_type"),
        (r#"{"peft_type":"LORA","r":-3}"#, "r"),
    ];
    for (json, field) in bad {
        let err = LoraConfig::from_json(json).expect_err(json);
        assert!(
            err.to_string().contains(field),
            "{json}: `{err}` should mention {field}"
        );
    }
    let mut c = LoraConfig::new(4, f64::NAN, &["q"]);
    assert!(c.validate().is_err());
    c.lora_alpha = f64::INFINITY;
    assert!(c.validate().is_err());
}

/// A corrupt rank in the config is a shape error found before anything is allocated: it used
/// to draw a random `[d_in, r]` factor first (r = 10⁹ aborts on memory).
#[test]
fn a_corrupt_rank_is_a_shape_error_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    write_tensors(dir.path(), &peft_tensors());
    let cfg = std::fs::read_to_string(fixture(PEFT_DIR).join(CONFIG_FILE)).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    json["r"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(dir.path().join(CONFIG_FILE), json.to_string()).unwrap();
    let base = Tiny::from_fixture(&Device::flex());
    match lora_core::load_adapter(&base, dir.path(), "default") {
        Err(LoraError::ShapeMismatch {
            found, expected, ..
        }) => {
            assert_eq!(expected[0], 1_000_000_000, "{found:?} vs {expected:?}");
        }
        other => panic!("expected ShapeMismatch, got {:?}", other.map(|_| ())),
    }
}

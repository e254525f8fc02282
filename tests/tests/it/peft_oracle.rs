//! lora-core's selection rules against PEFT 0.21.2 itself: `fixtures/peft/oracle.json` holds what
//! PEFT's own functions (`check_target_module_exists`, `get_pattern_key`, `LoraConfig`'s checks,
//! `get_peft_model` + `save_pretrained` + `from_pretrained` on real transformers models) returned,
//! including the cases of PEFT's own test suite (scripts/make_peft_oracle.py).

use std::collections::BTreeSet;

use burn::module::Module;
use burn::prelude::*;
use lora_core::{
    LoraConfig, LoraError, LoraModelExt, LoraSites, PatternMap, adapted_paths, adapter_state,
};
use lora_models::bert::{
    BertForSequenceClassification, EncoderCheckpoint, RobertaForMaskedLM,
    RobertaForSequenceClassification,
};
use lora_models::gpt2::Gpt2LmHeadModel;
use serde_json::Value;

use crate::common::fixture;

fn oracle() -> Value {
    let text = std::fs::read_to_string(fixture("peft/oracle.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["peft_version"], "0.21.2");
    v
}

fn cases<'a>(v: &'a Value, section: &str) -> &'a Vec<Value> {
    v[section].as_array().unwrap()
}

/// An adapter config from the oracle's kwargs (PEFT's JSON form, `peft_type` added).
fn config_of(kwargs: &Value) -> Result<LoraConfig, LoraError> {
    let mut json = kwargs.clone();
    json["peft_type"] = "LORA".into();
    LoraConfig::from_json(&json.to_string())
}

/// A pattern refused because Python's `re` reads it differently is the one allowed outcome
/// besides PEFT's own answer.
fn refused_by_dialect(e: &LoraError) -> bool {
    matches!(e, LoraError::Regex { reason, .. } if reason.contains("read differently by Python"))
}

#[test]
fn target_rules_match_check_target_module_exists() {
    let v = oracle();
    let (mut checked, mut refused) = (0, 0);
    for case in cases(&v, "target_cases") {
        let kwargs = &case["config"];
        // PEFT expands `all-linear` by module class before this function runs; the expansion
        // is checked on real models below.
        if kwargs["target_modules"]
            .as_str()
            .is_some_and(lora_core::config::is_all_linear)
        {
            continue;
        }
        let key = case["key"].as_str().unwrap();
        let expected = case["matched"].as_bool().unwrap();
        let found = config_of(kwargs).and_then(|c| c.is_target(key, true));
        match found {
            Ok(found) => assert_eq!(found, expected, "{case}"),
            Err(e) if refused_by_dialect(&e) => refused += 1,
            Err(e) => panic!("{case}: {e}"),
        }
        checked += 1;
    }
    assert!(checked >= 600, "{checked} cases");
    assert!(refused <= 2, "{refused} refused");
}

#[test]
fn configs_peft_refuses_are_refused() {
    let v = oracle();
    for case in cases(&v, "config_errors") {
        assert!(config_of(&case["config"]).is_err(), "accepted: {case}");
    }
}

#[test]
fn rank_and_alpha_patterns_match_get_pattern_key() {
    let v = oracle();
    for case in cases(&v, "pattern_cases") {
        let mut map = PatternMap::new();
        for (i, k) in case["keys"].as_array().unwrap().iter().enumerate() {
            map.insert(k.as_str().unwrap(), i);
        }
        let key = case["key"].as_str().unwrap();
        let expected = case["matched_key"].as_str();
        match map.lookup("rank_pattern", key) {
            Ok(found) => assert_eq!(found.map(|(k, _)| k), expected, "{case}"),
            Err(e) if case.get("error").is_some() || refused_by_dialect(&e) => {}
            Err(e) => panic!("{case}: {e}"),
        }
    }
}

#[test]
fn regexes_have_pythons_meaning_or_are_refused() {
    let v = oracle();
    let mut refused = BTreeSet::new();
    for case in cases(&v, "regex_cases") {
        if case.get("error").is_some() {
            continue; // Python refuses it; so would PEFT.
        }
        let pattern = case["pattern"].as_str().unwrap();
        let key = case["key"].as_str().unwrap();
        if key.contains('\n') {
            continue; // Module paths never hold a newline (where `$` differs).
        }
        let config = LoraConfig {
            target_modules: Some(lora_core::TargetModules::Regex(pattern.into())),
            ..LoraConfig::default()
        };
        match config.validate().and_then(|_| config.is_target(key, false)) {
            Ok(found) => assert_eq!(found, case["matched"].as_bool().unwrap(), "{case}"),
            Err(e @ LoraError::Regex { .. }) => {
                // Never a silent difference: the error names the pattern.
                assert!(e.to_string().contains(pattern), "{e}");
                refused.insert(pattern.to_string());
            }
            Err(e) => panic!("{case}: {e}"),
        }
    }
    println!("refused (Python accepts them): {refused:?}");
}

/// Known differences on real models, each with its reason (README "Differences from PEFT").
const MODEL_DIFFERENCES: &[(&str, &str)] = &[
    (
        "gpt2-lm_head",
        "our GPT-2 ties the LM head to wte: it has no own module to adapt",
    ),
    (
        "gpt2-mts-lm_head",
        "our GPT-2 ties the LM head to wte: no own weight to train",
    ),
    (
        "roberta-mlm-decoder",
        "our MLM decoder is tied to the word embeddings: no own module",
    ),
    (
        "roberta-mlm-mts-lm_head",
        "PEFT also saves the tied decoder (the word embeddings again); ours has no own copy",
    ),
];

#[test]
fn selections_on_real_models_match_get_peft_model() {
    let v = oracle();
    let device = Device::flex();
    let dir = |f: &str| fixture(f);
    let mut checked = 0;
    for case in cases(&v, "models") {
        let name = case["name"].as_str().unwrap();
        if MODEL_DIFFERENCES.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let fx = dir(case["fixture"].as_str().unwrap());
        match case["class"].as_str().unwrap() {
            "GPT2LMHeadModel" => check_model(
                Gpt2LmHeadModel::from_pretrained(&fx, &device).unwrap().0,
                case,
            ),
            "RobertaForSequenceClassification" => check_model(
                RobertaForSequenceClassification::from_pretrained(&fx, &device)
                    .unwrap()
                    .0,
                case,
            ),
            "BertForSequenceClassification" => check_model(
                BertForSequenceClassification::from_pretrained(&fx, &device)
                    .unwrap()
                    .0,
                case,
            ),
            "RobertaForMaskedLM" => check_model(
                RobertaForMaskedLM::from_pretrained(&fx, &device).unwrap().0,
                case,
            ),
            other => panic!("no model for {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 50, "{checked} model cases");
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Injects as PEFT did, then compares what got adapters, what the adapter file holds, and what
/// reloading PEFT's saved config selects.
fn check_model<M: Module + LoraSites>(model: M, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let mut kwargs = case["config"].clone();
    if !case["task_type"].is_null() {
        kwargs["task_type"] = case["task_type"].clone();
    }
    if kwargs.get("target_modules").is_none() {
        // PEFT's per-architecture defaults, which our model crates own.
        let defaults = match case["class"].as_str().unwrap() {
            "GPT2LMHeadModel" => lora_models::gpt2::default_targets(),
            _ => lora_models::bert::default_targets(),
        };
        kwargs["target_modules"] = serde_json::to_value(defaults).unwrap();
    }
    let injected = config_of(&kwargs)
        .and_then(|c| lora_core::inject_adapter(model.clone(), &c, "default").map(|m| (m, c)));
    if case.get("error").is_some() {
        assert!(
            injected.is_err(),
            "{name}: PEFT refused ({}), we accepted",
            case["error"]
        );
        return;
    }
    let (adapted, config) = injected.unwrap_or_else(|e| panic!("{name}: {e}"));
    let paths: BTreeSet<String> = adapted_paths(&adapted, None).into_iter().collect();
    assert_eq!(
        paths,
        strings(&case["lora_modules"]),
        "{name}: adapted modules"
    );
    if case.get("reload_error").is_some() {
        // PEFT nested a modules_to_save wrapper inside another one: its file keys are its own
        // internals, and PEFT cannot load that file either.
        return;
    }
    let (tensors, _) = adapter_state(&adapted, &config, "default").unwrap();
    let keys: BTreeSet<String> = tensors.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        strings(&case["saved_keys"]),
        "{name}: adapter file keys"
    );
    let mut saved = kwargs.clone();
    for field in ["target_modules", "modules_to_save"] {
        saved[field] = case["saved_config"][field].clone();
    }
    let reloaded = config_of(&saved)
        .and_then(|c| lora_core::inject_adapter(model, &c, "default"))
        .unwrap_or_else(|e| panic!("{name}: reloading PEFT's saved config: {e}"));
    let paths: BTreeSet<String> = adapted_paths(&reloaded, None).into_iter().collect();
    assert_eq!(
        paths,
        strings(&case["reloaded_lora_modules"]),
        "{name}: reloaded"
    );
}

#[test]
fn every_peft_config_key_is_known() {
    let v = oracle();
    let ours = serde_json::to_value(LoraConfig::default()).unwrap();
    // Ours, written only when set.
    let optional = ["peft_version", "target_parameters"];
    // Fields PEFT keeps only in memory or that only tune a refused initialisation.
    let runtime_or_init_only = [
        "auto_mapping",
        "runtime_config",
        "megatron_core",
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "qalora_group_size",
    ];
    for key in v["lora_config_fields"].as_object().unwrap().keys() {
        let known = ours.get(key).is_some()
            || optional.contains(&key.as_str())
            || lora_core::config::UNSUPPORTED_VARIANT_KEYS.contains(&key.as_str())
            || runtime_or_init_only.contains(&key.as_str());
        assert!(
            known,
            "PEFT's LoraConfig field `{key}` is neither read nor refused"
        );
    }
}

#[test]
fn variant_keys_are_refused_by_name() {
    let base = r#""peft_type":"LORA","target_modules":["q"]"#;
    for (key, value) in [
        ("use_qalora", "true"),
        ("alora_invocation_tokens", "[1, 2]"),
        ("arrow_config", r#"{"top_k": 2}"#),
        ("use_bdlora", r#"{"a": 1}"#),
        ("kasa_config", r#"{"beta": 0.1}"#),
        ("velora_config", r#"{"rho": 1.0}"#),
        ("monteclora_config", r#"{"n": 1}"#),
        ("lora_bias", "true"),
        ("layer_replication", "[[0, 1]]"),
        ("trainable_token_indices", "[1]"),
        ("megatron_config", r#"{"tp": 2}"#),
    ] {
        let e = LoraConfig::from_json(&format!("{{{base},\"{key}\":{value}}}")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
        // Switched off, the same keys load.
        let off = match value {
            "true" => "false",
            v if v.starts_with('[') => "[]",
            _ => "null",
        };
        LoraConfig::from_json(&format!("{{{base},\"{key}\":{off}}}")).unwrap();
    }
    for init in ["\"eva\"", "\"orthogonal\""] {
        let c = LoraConfig::from_json(&format!("{{{base},\"init_lora_weights\":{init}}}")).unwrap();
        assert!(c.init_lora_weights.check_initialisable().is_err());
    }
    for init in ["corda", "loftq", "lora_ga", "mica"] {
        let e = LoraConfig::from_json(&format!("{{{base},\"init_lora_weights\":\"{init}\"}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(init) && e.contains("base weights"), "{e}");
    }
}

/// Per LoRA site, its adapters and the active ones, and the report's counts (PEFT's view).
fn observed(model: &Gpt2LmHeadModel, config: &LoraConfig) -> Value {
    let mut layers = serde_json::Map::new();
    model.visit_lora_sites("", &mut |p, l| {
        let mut have = l.adapter_names();
        if have.is_empty() {
            return;
        }
        have.sort();
        let active: Vec<String> = l.active();
        layers.insert(
            p.to_string(),
            serde_json::json!({ "adapters": have, "active": active }),
        );
    });
    let report = lora_core::ParamReport::new(model, config);
    serde_json::json!({
        "layers": layers,
        "trainable": report.trainable,
        "lora_trainable": report.lora_params(),
        "total": report.total,
    })
}

/// PEFT's multi-adapter rules on tiny-a, step by step: a later adapter starts inactive and
/// frozen, the report counts active adapters only, deleting the active adapter activates the
/// first remaining one, and only one adapter may have `bias` other than `none`.
#[test]
fn multi_adapter_rules_match_peft() {
    let v = oracle();
    let multi = &v["multi_adapter"];
    let device = Device::flex();
    let base = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device)
        .unwrap()
        .0;
    let a = config_of(&multi["a"]).unwrap();
    let b = config_of(&multi["b"]).unwrap();
    let mut model = lora_core::inject_adapter(base.clone(), &a, "a").unwrap();
    let steps = multi["steps"].as_array().unwrap();
    for step in steps {
        match step["op"].as_str().unwrap() {
            "inject a" => {}
            "add b" => model = lora_core::inject_adapter(model, &b, "b").unwrap(),
            "activate a b" => model.set_active_adapters(&["a", "b"]).unwrap(),
            "activate a" => model.set_active_adapters(&["a"]).unwrap(),
            "delete a" => model.delete_adapter("a").unwrap(),
            other => panic!("unknown step {other}"),
        }
        assert_eq!(observed(&model, &a), step["state"], "after {}", step["op"]);
    }
    for case in multi["bias"].as_array().unwrap() {
        let with_bias = |c: &LoraConfig, mode: &Value| {
            let mut json = serde_json::to_value(c).unwrap();
            json["bias"] = mode.clone();
            LoraConfig::from_json(&json.to_string()).unwrap()
        };
        let first = lora_core::inject_adapter(base.clone(), &with_bias(&a, &case["first"]), "a");
        let second =
            lora_core::inject_adapter(first.unwrap(), &with_bias(&b, &case["second"]), "b");
        assert_eq!(second.is_err(), !case["error"].is_null(), "{case}");
    }
}

//! PEFT's targeting rules, table-driven against PEFT itself: for each config in
//! fixtures/core/targeting.json the script recorded which modules PEFT adapted, with rank and
//! scaling; we must select exactly the same.

use std::collections::BTreeMap;

use burn::prelude::*;
use lora_core::{LoraConfig, LoraError, LoraSites, inject_adapter, select_targets};

use crate::common::{Tiny, fixture};

#[test]
fn targets_ranks_and_scales_match_peft() {
    let text = std::fs::read_to_string(fixture("core/targeting.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 8);
    let device = Device::flex();
    for case in cases {
        let config = LoraConfig::from_json(&case["config"].to_string()).unwrap();
        let expected: BTreeMap<String, (usize, f64)> = case["adapted"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (
                        v["r"].as_u64().unwrap() as usize,
                        v["scaling"].as_f64().unwrap(),
                    ),
                )
            })
            .collect();
        let selected = select_targets(&Tiny::new(&device), &config).unwrap();
        let mut ours = BTreeMap::new();
        for (path, _) in selected {
            let s = config.spec_for(&path).unwrap();
            ours.insert(path, (s.r, s.scale));
        }
        assert_eq!(ours, expected, "config {}", case["config"]);

        // Injection puts adapters of those ranks exactly there.
        let model = inject_adapter(Tiny::new(&device), &config, "default").unwrap();
        let mut injected = BTreeMap::new();
        model.visit_lora_sites("", &mut |p, l| {
            if !l.adapter_names().is_empty() {
                let f = l.factors("default").unwrap();
                injected.insert(p.to_string(), (f.a.dims()[1], f.scale));
            }
        });
        assert_eq!(injected, expected, "injected for {}", case["config"]);
    }
}

#[test]
fn a_target_that_matches_nothing_lists_the_modules() {
    let device = Device::flex();
    let config = LoraConfig::new(4, 8.0, &["query", "value"]);
    let err = inject_adapter(Tiny::new(&device), &config, "default").unwrap_err();
    assert!(matches!(err, LoraError::NoTargetMatched { .. }));
    let msg = err.to_string();
    for p in ["emb", "encoder.layers.0.q", "encoder.layers.1.out", "head"] {
        assert!(msg.contains(p), "{msg} should list {p}");
    }
}

#[test]
fn injecting_twice_under_one_name_is_an_error() {
    let device = Device::flex();
    let config = LoraConfig::new(4, 8.0, &["q"]);
    let model = inject_adapter(Tiny::new(&device), &config, "default").unwrap();
    let err = inject_adapter(model.clone(), &config, "default").unwrap_err();
    assert!(matches!(err, LoraError::DuplicateAdapter { .. }), "{err}");
    // A second name is fine and both are active.
    let model = inject_adapter(model, &config, "other").unwrap();
    let mut names = vec![];
    model.visit_lora_sites("", &mut |p, l| {
        if p == "encoder.layers.0.q" {
            names = l.adapter_names();
        }
    });
    assert_eq!(names, vec!["default".to_string(), "other".to_string()]);
}

#[test]
fn report_counts_like_peft() {
    let peft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("core/report.json")).unwrap())
            .unwrap();
    let device = Device::flex();
    let config = LoraConfig::new(4, 8.0, &["q", "v"]).with_modules_to_save(&["head"]);
    let model = inject_adapter(Tiny::new(&device), &config, "default").unwrap();
    let report = lora_core::ParamReport::new(&model, &config);
    assert_eq!(report.trainable as u64, peft["trainable"].as_u64().unwrap());
    // Like PEFT, the total counts the frozen original of each saved module and its copy.
    assert_eq!(report.total as u64, peft["all"].as_u64().unwrap());
    assert_eq!(report.lora_params(), 4 * (8 * 4 + 4 * 8));
    assert_eq!(
        report.summary(),
        format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            report.trainable,
            lora_core::report::thousands(report.total),
            100.0 * report.trainable as f64 / report.total as f64
        )
    );
    let table = report.to_string();
    assert!(table.contains("encoder.layers.1.v"), "{table}");
    assert!(table.contains("head"), "{table}");
}

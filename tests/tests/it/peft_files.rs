//! PEFT adapter files of every kind PEFT 0.21.2 writes, against PEFT's own logits
//! (`scripts/make_peft_file_fixtures.py`): pickle (`adapter_model.bin`), fp16 and bf16 factors,
//! LoRA on GPT-2's tied `wte`; and the guards on non-finite values (at load, and `safe_merge`).

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{
    Combination, InitLoraWeights, LoraConfig, LoraError, LoraModelExt, LoraSites,
    add_weighted_adapter, load_adapter, read_safetensors, save_adapter_converted, save_safetensors,
};
use lora_models::bert::{EncoderCheckpoint, RobertaForSequenceClassification};
use lora_models::gpt2::Gpt2LmHeadModel;

use crate::common::{assert_close, fixture, host, ids, load};

const VOCAB_SLICE: usize = 512;

fn base(device: &Device) -> Gpt2LmHeadModel {
    Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), device)
        .unwrap()
        .0
}

/// PEFT's batch, and our logits for it (first 512 ids, as stored).
fn logits(model: &Gpt2LmHeadModel, device: &Device) -> HostTensor {
    let r = load("peft/files-reference.safetensors");
    let (ids, mask) = (ids(&r["ids"], device), ids(&r["mask"], device));
    let [b, s] = ids.dims();
    let out = model.forward(ids, Some(mask)).unwrap();
    host(out.slice([0..b, 0..s, 0..VOCAB_SLICE]))
}

/// The second half of the round trip (PEFT saved, we loaded): our save of the adapter, with the
/// batch and our logits, for `python scripts/make_peft_file_fixtures.py --check DIR` to load into
/// PEFT on `base` (a fixture directory).
pub(crate) fn leave_round_trip<M: burn::module::Module + LoraSites>(
    kind: &str,
    model: &M,
    config: &LoraConfig,
    name: &str,
    base: &str,
    batch: (&HostTensor, &HostTensor),
    logits: HostTensor,
) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("peft-round-trip")
        .join(kind);
    std::fs::create_dir_all(&dir).unwrap();
    lora_core::save_adapter(model, config, name, &dir).unwrap();
    let tensors = [
        ("ids".to_string(), batch.0.clone()),
        ("mask".to_string(), batch.1.clone()),
        ("logits".to_string(), logits),
    ];
    save_safetensors(dir.join("our_logits.safetensors"), &tensors).unwrap();
    std::fs::write(dir.join("base.txt"), base).unwrap();
}

#[test]
fn pickle_fp16_and_bf16_adapters_give_pefts_logits() {
    let device = Device::flex();
    let reference = load("peft/files-reference.safetensors");
    for kind in ["c_attn-bin", "c_attn-fp16", "c_attn-bf16"] {
        let (model, config) =
            load_adapter(&base(&device), fixture(&format!("peft/{kind}")), "default").unwrap();
        assert_eq!(config.r, 4, "{kind}");
        let ours = logits(&model, &device);
        assert_close(kind, &ours, &reference[&format!("{kind}.logits")], 1e-4);
        let batch = (&reference["ids"], &reference["mask"]);
        leave_round_trip(kind, &model, &config, "default", "gpt2/tiny-a", batch, ours);
    }
}

#[test]
fn a_lora_on_tied_wte_changes_the_head_only_once_merged() {
    let device = Device::flex();
    let reference = load("peft/files-reference.safetensors");
    // PEFT 0.21.2 ties adapters only for modules named embed_tokens/lm_head: for GPT-2's wte,
    // `ensure_weight_tying` changes nothing, and the head keeps the stored table.
    for flag in ["false", "true"] {
        let dir = fixture(&format!("peft/wte-tied-{flag}"));
        let (mut model, config) = load_adapter(&base(&device), dir, "default").unwrap();
        assert_eq!(config.ensure_weight_tying, flag == "true");
        let ours = logits(&model, &device);
        let want = &reference["wte-tied-false.logits"];
        assert_close(&format!("unmerged, tying {flag}"), &ours, want, 1e-4);
        let batch = (&reference["ids"], &reference["mask"]);
        let kind = format!("wte-tied-{flag}");
        leave_round_trip(
            &kind,
            &model,
            &config,
            "default",
            "gpt2/tiny-a",
            batch,
            ours,
        );
        model.merge_adapter("default").unwrap();
        let merged = logits(&model, &device);
        let want = &reference["wte-tied-false.merged.logits"];
        assert_close(&format!("merged, tying {flag}"), &merged, want, 1e-4);
    }
}

/// A copy of the c_attn adapter with every value of the tensors whose key contains `part`
/// replaced by `value`.
fn poisoned(part: &str, value: f32) -> tempfile::TempDir {
    let src = fixture("gpt2/peft-c_attn");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut tensors: Vec<(String, HostTensor)> =
        read_safetensors(src.join("adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, t) in &mut tensors {
        if k.contains(part) {
            t.data.iter_mut().for_each(|v| *v = value);
        }
    }
    save_safetensors(dir.path().join("adapter_model.safetensors"), &tensors).unwrap();
    dir
}

#[test]
fn non_finite_adapter_tensors_are_refused_at_load() {
    let device = Device::flex();
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = poisoned("h.1.attn.c_attn.lora_B.weight", bad);
        let e = load_adapter(&base(&device), dir.path(), "default").unwrap_err();
        assert!(
            matches!(&e, LoraError::NonFinite { key, .. } if key.ends_with("h.1.attn.c_attn.lora_B.weight")),
            "{e}"
        );
    }
}

/// Every site's stored weight.
fn base_weights(model: &Gpt2LmHeadModel) -> Vec<HostTensor> {
    let mut out = Vec::new();
    model.visit_lora_sites("", &mut |_, l| out.push(host(l.base_weight())));
    out
}

#[test]
fn safe_merge_refuses_an_overflowing_merge_and_leaves_the_model_unchanged() {
    let device = Device::flex();
    // Finite factors whose product overflows f32: the file loads, a plain merge gives ±∞.
    let dir = poisoned(".attn.c_attn.lora_", 1e30);
    let (mut model, _) = load_adapter(&base(&device), dir.path(), "default").unwrap();
    let before = base_weights(&model);
    let e = model.safe_merge_adapter("default").unwrap_err();
    assert!(
        matches!(&e, LoraError::NonFinite { key, .. } if key.contains("c_attn")),
        "{e}"
    );
    assert_eq!(
        base_weights(&model),
        before,
        "the failed merge changed the model"
    );
    model.visit_lora_sites("", &mut |p, l| {
        assert!(l.merged_adapters().is_empty(), "{p}")
    });

    // A sound adapter merges the same way with or without the check.
    let (mut safe, _) =
        load_adapter(&base(&device), fixture("gpt2/peft-c_attn"), "default").unwrap();
    let mut plain = safe.clone();
    safe.safe_merge_adapter("default").unwrap();
    plain.merge_adapter("default").unwrap();
    assert_eq!(logits(&safe, &device), logits(&plain, &device));
}

/// PEFT's `add_weighted_adapter(["x", "y"], [0.7, -0.4], kind)` on tiny-a, for each combination:
/// the same factors (linear, cat) or the same update (svd, whose factors are unique only up to
/// signs), and the same logits with the result active.
#[test]
fn weighted_adapters_match_pefts_add_weighted_adapter() {
    let device = Device::flex();
    let reference = load("peft/weighted-reference.safetensors");
    let (x, x_config) = load_adapter(&base(&device), fixture("peft/weighted-x"), "x").unwrap();
    let (xy, _) = load_adapter(&x, fixture("peft/weighted-y"), "y").unwrap();
    for (kind, combination) in [
        ("linear", Combination::Linear),
        ("cat", Combination::Cat),
        ("svd", Combination::Svd { rank: None }),
        ("svd3", Combination::Svd { rank: Some(3) }),
    ] {
        let (mut model, config) = add_weighted_adapter(
            xy.clone(),
            &[("x", 0.7), ("y", -0.4)],
            kind,
            combination,
            &x_config,
        )
        .unwrap();
        let want_rank = match kind {
            "cat" => 4,
            "svd3" => 3,
            _ => 2,
        };
        assert_eq!((config.r, config.lora_alpha), (want_rank, want_rank as f64));
        model.set_active_adapters(&[kind]).unwrap();
        let ours = logits(&model, &device);
        assert_close(
            &format!("{kind} logits"),
            &ours,
            &reference[&format!("{kind}.logits")],
            1e-4,
        );
        let files = load("peft/files-reference.safetensors");
        let batch = (&files["ids"], &files["mask"]);
        let trip = format!("weighted-{kind}");
        leave_round_trip(
            &trip,
            &model,
            &config,
            kind,
            "gpt2/tiny-a",
            batch,
            ours.clone(),
        );
        model.visit_lora_sites("", &mut |p, l| {
            if p.ends_with("wte") || !l.adapter_names().iter().any(|n| n == kind) {
                return; // the embedding is covered by the logits
            }
            let f = l.factors(kind).unwrap();
            let peft_a = &reference[&format!("{kind}.{p}.lora_A")];
            let peft_b = &reference[&format!("{kind}.{p}.lora_B")];
            if kind.starts_with("svd") {
                // ΔW = scale·A·B against PEFT's (lora_B·lora_A)ᵀ.
                let ours = host(f.a.matmul(f.b).mul_scalar(f.scale));
                let a: Tensor<2> = peft_a.to_tensor(&device, "A").unwrap();
                let b: Tensor<2> = peft_b.to_tensor(&device, "B").unwrap();
                let theirs = host(b.matmul(a).transpose());
                assert_close(&format!("{kind} {p} update"), &ours, &theirs, 1e-5);
            } else {
                assert_close(
                    &format!("{kind} {p} A"),
                    &host(f.a.transpose()),
                    peft_a,
                    1e-6,
                );
                assert_close(
                    &format!("{kind} {p} B"),
                    &host(f.b.transpose()),
                    peft_b,
                    1e-6,
                );
            }
        });
    }
    // Typed refusals: ranks that differ for linear, an existing name, an unknown adapter.
    let (with_cat, _) = add_weighted_adapter(
        xy.clone(),
        &[("x", 1.0), ("y", 1.0)],
        "c",
        Combination::Cat,
        &x_config,
    )
    .unwrap();
    let linear = |m, pairs: &[(&str, f64)], name| {
        add_weighted_adapter(m, pairs, name, Combination::Linear, &x_config)
    };
    assert!(matches!(
        linear(with_cat.clone(), &[("x", 1.0), ("c", 1.0)], "l"),
        Err(LoraError::InvalidConfig { .. })
    ));
    assert!(matches!(
        linear(with_cat.clone(), &[("x", 1.0)], "c"),
        Err(LoraError::DuplicateAdapter { .. })
    ));
    assert!(matches!(
        linear(with_cat, &[("nope", 1.0)], "l"),
        Err(LoraError::UnknownAdapter { .. })
    ));
}

/// PiSSA and OLoRA against PEFT on roberta-a: the residual base and the initial update, a
/// trained adapter PEFT saved unconverted (it re-initialises on the original base, as PEFT
/// does), and the conversion to a plain rank-2r LoRA for the original base (PEFT's
/// `path_initial_model_for_weight_conversion`).
#[test]
fn pissa_and_olora_match_peft_and_convert_to_plain_lora() {
    let device = Device::flex();
    let reference = load("peft/init-reference.safetensors");
    let enc = || {
        RobertaForSequenceClassification::from_pretrained(fixture("encoder/roberta-a"), &device)
            .unwrap()
            .0
    };
    let (batch_ids, batch_mask) = (
        ids(&reference["ids"], &device),
        ids(&reference["mask"], &device),
    );
    let logits = |m: &RobertaForSequenceClassification| {
        host(
            m.forward(batch_ids.clone(), Some(batch_mask.clone()), None)
                .unwrap(),
        )
    };
    for (kind, init) in [
        ("pissa", InitLoraWeights::Pissa),
        ("olora", InitLoraWeights::Olora),
    ] {
        let config = LoraConfig::new(2, 4.0, &["query", "value"]).with_init(init);
        let model = lora_core::inject_adapter(enc(), &config, "default").unwrap();
        let mut sites = 0;
        model.visit_lora_sites("", &mut |p, l| {
            if l.adapter_names().is_empty() {
                return;
            }
            sites += 1;
            let want = &reference[&format!("{kind}.{p}.residual")];
            assert_close(
                &format!("{kind} {p} residual"),
                &host(l.base_weight().transpose()),
                want,
                1e-5,
            );
            // Factor signs may differ from PyTorch's; the update may not.
            let f = l.factors("default").unwrap();
            let a: Tensor<2> = reference[&format!("{kind}.{p}.lora_A")]
                .to_tensor(&device, "A")
                .unwrap();
            let b: Tensor<2> = reference[&format!("{kind}.{p}.lora_B")]
                .to_tensor(&device, "B")
                .unwrap();
            let ours = host(f.a.matmul(f.b).transpose());
            assert_close(
                &format!("{kind} {p} update"),
                &ours,
                &host(b.matmul(a)),
                1e-5,
            );
        });
        assert_eq!(sites, 4);

        let trained_dir = fixture(&format!("peft/init-{kind}/trained"));
        let (trained, trained_config) = load_adapter(&enc(), trained_dir, "default").unwrap();
        let want = &reference[&format!("{kind}.logits")];
        assert_close(&format!("{kind} trained"), &logits(&trained), want, 1e-4);

        let dir = tempfile::tempdir().unwrap();
        let initial = fixture(&format!("peft/init-{kind}/initial"));
        save_adapter_converted(&trained, &trained_config, "default", dir.path(), initial).unwrap();
        let (plain, plain_config) = load_adapter(&enc(), dir.path(), "default").unwrap();
        assert_eq!(plain_config.init_lora_weights, InitLoraWeights::Default);
        assert_eq!((plain_config.r, plain_config.lora_alpha), (4, 8.0));
        assert_close(&format!("{kind} converted"), &logits(&plain), want, 1e-4);
        let batch = (&reference["ids"], &reference["mask"]);
        let trip = format!("{kind}-converted");
        let base = "encoder/roberta-a";
        leave_round_trip(
            &trip,
            &plain,
            &plain_config,
            "default",
            base,
            batch,
            logits(&plain),
        );
        let ours = read_safetensors(dir.path().join("adapter_model.safetensors")).unwrap();
        let peft_dir = fixture(&format!(
            "peft/init-{kind}/converted/adapter_model.safetensors"
        ));
        let theirs = read_safetensors(peft_dir).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (k, t) in &theirs {
            assert_close(k, &ours[k], t, 1e-6);
        }
    }
    // A randomized PiSSA cannot be rebuilt on load; weight-level adapters have no PiSSA.
    let niter = LoraConfig::new(2, 4.0, &["query"]).with_init(InitLoraWeights::PissaNiter(4));
    assert!(lora_core::inject_adapter(enc(), &niter, "x").is_err());
    assert!(niter.for_loading().is_err());
}

//! GPT-2 against transformers + peft (fixtures from scripts/make_gpt2_fixtures.py): tokenizer
//! ids, logits and losses on padded batches, greedy and beam-search continuations, PEFT adapters
//! in both directions, and clear errors on bad input.

use std::path::PathBuf;

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{InitLoraWeights, LoraConfig, LoraModelExt, load_adapter, save_adapter};
use lora_models::gpt2::{CAttnMode, Decoding, GenerationConfig, Gpt2LmHeadModel, inject_gpt2_lora};
use lora_models::{ModelError, TextTokenizer};
use lora_train::loss::{causal_lm_loss, labels_from_mask};

use crate::common::{devices, fixture, host, load};

pub(crate) fn ref_json(tag: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("gpt2/reference-{tag}.json"))).unwrap(),
    )
    .unwrap()
}

pub(crate) fn int2(t: &HostTensor, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = t.data.iter().map(|x| *x as i64).collect();
    Tensor::from_data(TensorData::new(v, t.shape.clone()), device)
}

/// Compares our logits with a reference summary (first 256 vocab entries, log-sum-exp and
/// argmax) at the positions the mask marks as real tokens.
pub(crate) fn check_logits(
    what: &str,
    logits: Tensor<3>,
    r: &std::collections::HashMap<String, HostTensor>,
    prefix: &str,
    mask: &HostTensor,
) {
    let [b, t, v] = logits.dims();
    let ours = host(logits);
    let head = &r[&format!("{prefix}.logits_head")];
    let lse = &r[&format!("{prefix}.lse")];
    let arg = &r[&format!("{prefix}.argmax")];
    let w = head.shape[2];
    let (mut max_head, mut max_lse) = (0f32, 0f32);
    for bi in 0..b {
        for ti in 0..t {
            if mask.data[bi * t + ti] == 0.0 {
                continue; // padding positions carry no meaning
            }
            let row = &ours.data[(bi * t + ti) * v..(bi * t + ti + 1) * v];
            let want = &head.data[(bi * t + ti) * w..(bi * t + ti + 1) * w];
            for (a, b) in row.iter().zip(want) {
                max_head = max_head.max((a - b).abs());
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let l = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            max_lse = max_lse.max((l - lse.data[bi * t + ti]).abs());
            let am = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, x)| if *x > row[best] { i } else { best });
            assert_eq!(
                am as f32,
                arg.data[bi * t + ti],
                "{what}: argmax at ({bi},{ti})"
            );
        }
    }
    assert!(max_head <= 1e-4, "{what}: logits max abs diff {max_head:e}");
    assert!(
        max_lse <= 1e-4,
        "{what}: log-sum-exp max abs diff {max_lse:e}"
    );
}

#[test]
fn tokenizer_matches_hf_and_tiktoken() {
    let dir = fixture("gpt2/tokenizer");
    let refs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let from_json = TextTokenizer::from_dir(&dir).unwrap();
    let from_bpe =
        TextTokenizer::gpt2_from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap();
    let oracle = tiktoken_rs::r50k_base().unwrap();
    for r in &refs {
        let text = r["text"].as_str().unwrap();
        let want: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            from_json.encode(text).unwrap(),
            want,
            "tokenizer.json: {text}"
        );
        assert_eq!(from_bpe.encode(text).unwrap(), want, "vocab+merges: {text}");
        let tk: Vec<u32> = oracle.encode_with_special_tokens(text);
        assert_eq!(tk, want, "tiktoken: {text}");
        assert_eq!(
            from_bpe.decode(&want, false).unwrap(),
            text,
            "round trip: {text}"
        );
    }
    assert_eq!(
        from_bpe
            .encode("Hello world, this is GPT-2's tokenizer!")
            .unwrap(),
        vec![
            15496, 995, 11, 428, 318, 402, 11571, 12, 17, 338, 11241, 7509, 0
        ]
    );
    assert!(matches!(
        TextTokenizer::from_dir(fixture("core")),
        Err(ModelError::MissingFile { .. })
    ));
}

#[test]
fn logits_and_losses_match_transformers() {
    for tag in ["a", "b"] {
        let r = load(&format!("gpt2/reference-{tag}.safetensors"));
        for (name, device) in devices() {
            let (model, _) =
                Gpt2LmHeadModel::from_pretrained(fixture(&format!("gpt2/tiny-{tag}")), &device)
                    .unwrap();
            for side in ["right", "left"] {
                let ids = int2(&r[&format!("{side}.ids")], &device);
                let mask = int2(&r[&format!("{side}.mask")], &device);
                let logits = model.forward(ids.clone(), Some(mask.clone())).unwrap();
                let what = format!("{name}/tiny-{tag}/{side}");
                check_logits(&what, logits.clone(), &r, side, &r[&format!("{side}.mask")]);
                let loss = causal_lm_loss(
                    logits.clone(),
                    labels_from_mask(ids.clone(), mask.clone()),
                    0.0,
                );
                let (ours, want) = (host(loss).data[0], r[&format!("{side}.loss")].data[0]);
                assert!(
                    (ours - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{what}: loss {ours} vs {want}"
                );
                if side == "right" {
                    let loss = causal_lm_loss(logits, labels_from_mask(ids, mask), 0.1);
                    let (ours, want) = (host(loss).data[0], r["right.loss_smooth"].data[0]);
                    assert!(
                        (ours - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{what}: smoothed loss {ours} vs {want}"
                    );
                }
            }
        }
    }
}

pub(crate) fn ids_of(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| match row.as_array() {
            Some(r) => r.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            None => vec![row.as_u64().unwrap() as u32],
        })
        .collect()
}

#[test]
fn greedy_and_beam_search_match_hf_generate() {
    for tag in ["a", "b"] {
        let g = ref_json(tag);
        for (name, device) in devices() {
            let (model, _) =
                Gpt2LmHeadModel::from_pretrained(fixture(&format!("gpt2/tiny-{tag}")), &device)
                    .unwrap();
            // Prompts as HF saw them: left-padded rows, padding dropped.
            let padded = ids_of(&g["greedy_prompt_ids"]);
            let masks = ids_of(&g["greedy_prompt_mask"]);
            let prompts: Vec<Vec<u32>> = padded
                .iter()
                .zip(&masks)
                .map(|(p, m)| {
                    p.iter()
                        .zip(m)
                        .filter(|(_, m)| **m == 1)
                        .map(|(t, _)| *t)
                        .collect()
                })
                .collect();
            let mut cfg = GenerationConfig::greedy(8);
            cfg.eos_token_id = None; // HF ran without stopping (its continuations never hit eos)
            let out = model.generate(&prompts, &cfg, &device).unwrap();
            assert_eq!(
                out.tokens,
                ids_of(&g["greedy"]),
                "{name}/tiny-{tag}: greedy"
            );

            let prompt = vec![
                ids_of(&g["beam_prompt"])
                    .into_iter()
                    .flatten()
                    .collect::<Vec<u32>>(),
            ];
            let beam = |max, nr, lp, early| GenerationConfig {
                max_new_tokens: max,
                decoding: Decoding::Beam {
                    num_beams: 4,
                    length_penalty: lp,
                    early_stopping: early,
                },
                no_repeat_ngram_size: nr,
                eos_token_id: Some(50256),
                pad_token_id: 50256,
            };
            let out = model
                .generate(&prompt, &beam(6, 0, 1.0, true), &device)
                .unwrap();
            let want: Vec<u32> = ids_of(&g["beam4"]).into_iter().flatten().collect();
            assert_eq!(out.tokens[0], want, "{name}/tiny-{tag}: beam 4");
            let out = model
                .generate(&prompt, &beam(8, 2, 0.9, false), &device)
                .unwrap();
            let want: Vec<u32> = ids_of(&g["beam4_ngram2_lp09"])
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(
                out.tokens[0], want,
                "{name}/tiny-{tag}: beam 4, no_repeat_ngram 2"
            );
        }
    }
}

#[test]
fn sampling_is_seeded_and_respects_top_k() {
    let device = Device::flex();
    let (model, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let cfg = |seed| GenerationConfig {
        max_new_tokens: 6,
        decoding: Decoding::Sample {
            temperature: 0.8,
            top_k: Some(1),
            top_p: None,
            seed,
        },
        no_repeat_ngram_size: 0,
        eos_token_id: None,
        pad_token_id: 50256,
    };
    let prompt = vec![vec![464, 2068, 7586]];
    // top_k = 1 is greedy whatever the seed.
    let greedy = model
        .generate(
            &prompt,
            &GenerationConfig {
                eos_token_id: None,
                ..GenerationConfig::greedy(6)
            },
            &device,
        )
        .unwrap();
    assert_eq!(
        model.generate(&prompt, &cfg(1), &device).unwrap().tokens,
        greedy.tokens
    );
    let free = |seed| GenerationConfig {
        decoding: Decoding::Sample {
            temperature: 1.5,
            top_k: None,
            top_p: Some(0.95),
            seed,
        },
        ..cfg(seed)
    };
    let a = model.generate(&prompt, &free(7), &device).unwrap();
    assert_eq!(
        a,
        model.generate(&prompt, &free(7), &device).unwrap(),
        "same seed, same text"
    );
    assert!(a.logprobs[0].iter().all(|l| l.is_finite() && *l <= 0.0));
}

#[test]
fn peft_c_attn_adapter_reproduces_peft_logits() {
    let r = load("gpt2/reference-a.safetensors");
    for (name, device) in devices() {
        let (base, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
        let (mut model, config) =
            load_adapter(&base, fixture("gpt2/peft-c_attn"), "default").unwrap();
        assert!(config.fan_in_fan_out);
        let ids = int2(&r["right.ids"], &device);
        let mask = int2(&r["right.mask"], &device);
        let logits = model.forward(ids.clone(), Some(mask.clone())).unwrap();
        check_logits(
            &format!("{name}: PEFT adapter"),
            logits.clone(),
            &r,
            "peft",
            &r["right.mask"],
        );
        model.merge_active().unwrap();
        let merged = model.forward(ids, Some(mask)).unwrap();
        crate::common::assert_close(
            &format!("{name}: merged vs unmerged"),
            &host(merged),
            &host(logits),
            1e-4,
        );
    }
}

/// Where the export test leaves an adapter and our logits for
/// `python scripts/make_gpt2_fixtures.py --check-adapter DIR`.
fn export_dir(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(what)
}

#[test]
fn query_value_adapter_exports_as_equivalent_peft_adapter() {
    let device = Device::flex();
    device.seed(42);
    let (base, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let lora = LoraConfig::new(4, 32.0, &["c_attn"]).with_init(InitLoraWeights::Random);
    let (model, cfg) =
        inject_gpt2_lora(base.clone(), &lora, "default", CAttnMode::QueryValue).unwrap();
    let fused = inject_gpt2_lora(base.clone(), &lora, "default", CAttnMode::Fused)
        .unwrap()
        .0;
    let count = |m: &Gpt2LmHeadModel| lora_core::ParamReport::new(m, &cfg).lora_params();
    assert_eq!(
        count(&model),
        count(&fused),
        "q/v and fused: same parameter count"
    );
    assert_eq!(count(&model), 2 * (16 * 4 * 2 + 4 * 16 * 2));

    let r = load("gpt2/reference-a.safetensors");
    let ids = int2(&r["right.ids"], &device);
    let mask = int2(&r["right.mask"], &device);
    let ours = model.forward(ids.clone(), Some(mask.clone())).unwrap();
    // k is untouched: the k third of c_attn's output equals the base model's.
    let dir = export_dir("gpt2_qv_adapter");
    std::fs::create_dir_all(&dir).unwrap();
    save_adapter(&model, &cfg, "default", &dir).unwrap();
    let saved = LoraConfig::load(&dir).unwrap();
    assert_eq!(
        saved.rank_pattern.values().next(),
        Some(&8),
        "rank 2r in PEFT's view"
    );
    assert_eq!(
        saved.alpha_pattern.values().next(),
        Some(&64.0),
        "alpha doubled"
    );
    // Reloaded as a plain (fused) adapter it gives the same logits.
    let (reloaded, _) = load_adapter(&base, &dir, "default").unwrap();
    let again = reloaded.forward(ids.clone(), Some(mask.clone())).unwrap();
    crate::common::assert_close(
        "q/v export reloads",
        &host(again),
        &host(ours.clone()),
        1e-5,
    );
    leave_for_peft(&dir, &r, ours);
}

/// Leaves our logits beside an exported adapter for the PEFT-side check
/// (`python scripts/make_gpt2_fixtures.py --check-adapter DIR`).
fn leave_for_peft(
    dir: &std::path::Path,
    r: &std::collections::HashMap<String, HostTensor>,
    ours: Tensor<3>,
) {
    let v = ours.dims()[2];
    let head = host(ours.narrow(2, 0, 256.min(v)));
    let tensors = vec![
        ("ids".to_string(), r["right.ids"].clone()),
        ("mask".to_string(), r["right.mask"].clone()),
        ("logits".to_string(), head),
    ];
    let path = dir.join("our_logits.safetensors");
    let bytes = lora_core::io::serialize_safetensors(&tensors, &[("format", "pt")], &path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    eprintln!(
        "adapter for PEFT: python scripts/make_gpt2_fixtures.py --check-adapter {}",
        dir.display()
    );
}

/// The q/v export pins rank and alpha per module with escaped-path keys. A user's own `c_attn`
/// keys sort before those, and the first matching key wins on reload (here and in PEFT): the
/// pinned keys must still win.
#[test]
fn q_v_export_wins_over_a_users_own_pattern_keys() {
    let device = Device::flex();
    device.seed(7);
    let (base, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let mut lora = LoraConfig::new(4, 32.0, &["c_attn"]).with_init(InitLoraWeights::Random);
    lora.rank_pattern.insert("c_attn", 4);
    lora.alpha_pattern.insert("c_attn", 16.0);
    let (model, cfg) =
        inject_gpt2_lora(base.clone(), &lora, "default", CAttnMode::QueryValue).unwrap();
    let r = load("gpt2/reference-a.safetensors");
    let ids = int2(&r["right.ids"], &device);
    let mask = int2(&r["right.mask"], &device);
    let ours = model.forward(ids.clone(), Some(mask.clone())).unwrap();
    let dir = export_dir("gpt2_qv_adapter_user_patterns");
    std::fs::create_dir_all(&dir).unwrap();
    save_adapter(&model, &cfg, "default", &dir).unwrap();
    let saved = LoraConfig::load(&dir).unwrap();
    assert_eq!(
        saved.rank_pattern.keys().next(),
        Some(r"(?:)transformer\.h\.0\.attn\.c_attn")
    );
    assert_eq!(
        saved.spec_for("transformer.h.0.attn.c_attn").unwrap().alpha,
        32.0
    );
    let (reloaded, _) = load_adapter(&base, &dir, "default").unwrap();
    let again = reloaded.forward(ids, Some(mask)).unwrap();
    crate::common::assert_close("reloaded", &host(again), &host(ours.clone()), 1e-5);
    leave_for_peft(&dir, &r, ours);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    // No files at all.
    assert!(matches!(
        Gpt2LmHeadModel::from_pretrained(tmp.path(), &device),
        Err(ModelError::MissingFile { .. })
    ));
    // Config present, weights missing.
    let cfg = std::fs::read_to_string(fixture("gpt2/tiny-a/config.json")).unwrap();
    std::fs::write(tmp.path().join("config.json"), &cfg).unwrap();
    let err = Gpt2LmHeadModel::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    // Invalid config values.
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"n_head\": 2", "\"n_head\": 3"),
    )
    .unwrap();
    let err = Gpt2LmHeadModel::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(err.to_string().contains("n_head"), "{err}");
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        Gpt2LmHeadModel::from_pretrained(tmp.path(), &device),
        Err(ModelError::Config { .. })
    ));
    // Another architecture.
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"gpt2\"", "\"bert\""),
    )
    .unwrap();
    assert!(matches!(
        Gpt2LmHeadModel::from_pretrained(tmp.path(), &device),
        Err(ModelError::WrongArchitecture { .. })
    ));
    // Weights of a different shape: the error names the tensor.
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"n_embd\": 16", "\"n_embd\": 32"),
    )
    .unwrap();
    std::fs::copy(
        fixture("gpt2/tiny-a/model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let err = Gpt2LmHeadModel::from_pretrained(tmp.path(), &device).unwrap_err();
    assert!(err.to_string().contains("transformer."), "{err}");
    // Truncated weights.
    std::fs::write(tmp.path().join("config.json"), &cfg).unwrap();
    let bytes = std::fs::read(fixture("gpt2/tiny-a/model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), &bytes[..1000]).unwrap();
    assert!(Gpt2LmHeadModel::from_pretrained(tmp.path(), &device).is_err());
    // Too long a sequence.
    let (model, config) =
        Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let long = Tensor::<2, Int>::zeros([1, config.n_positions + 1], &device);
    assert!(matches!(
        model.forward(long, None),
        Err(ModelError::SequenceTooLong { .. })
    ));
    let prompt = vec![vec![1u32; config.n_positions]];
    assert!(matches!(
        model.generate(&prompt, &GenerationConfig::greedy(4), &device),
        Err(ModelError::SequenceTooLong { .. })
    ));
}

/// Merged export: adapter folded in, written as a plain Hugging Face checkpoint that reloads
/// (here, and in transformers: `python -c "from transformers import GPT2LMHeadModel as M;
/// M.from_pretrained(DIR)"`) with the merged logits.
#[test]
fn merged_checkpoint_reloads_with_equal_logits() {
    let device = Device::flex();
    let r = load("gpt2/reference-a.safetensors");
    let (base, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let (mut model, _) = load_adapter(&base, fixture("gpt2/peft-c_attn"), "default").unwrap();
    model.merge_active().unwrap();
    let dir = export_dir("gpt2_merged");
    std::fs::create_dir_all(&dir).unwrap();
    let state = lora_core::export_state_dict(&model, true).unwrap();
    assert!(state.iter().all(|(k, _)| !k.contains("lora")));
    lora_core::save_safetensors(dir.join("model.safetensors"), &state).unwrap();
    std::fs::copy(fixture("gpt2/tiny-a/config.json"), dir.join("config.json")).unwrap();
    let (reloaded, _) = Gpt2LmHeadModel::from_pretrained(&dir, &device).unwrap();
    let ids = int2(&r["right.ids"], &device);
    let mask = int2(&r["right.mask"], &device);
    let want = model.forward(ids.clone(), Some(mask.clone())).unwrap();
    let got = reloaded.forward(ids, Some(mask)).unwrap();
    crate::common::assert_close("merged reload", &host(got.clone()), &host(want), 1e-6);
    check_logits("merged export vs PEFT", got, &r, "peft", &r["right.mask"]);
}

/// A sharded checkpoint's index is checked: an empty or malformed `weight_map`, or a shard
/// name that leaves the model directory, is an error naming the index (it used to index an
/// empty list).
#[test]
fn sharded_checkpoint_index_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    for (text, why) in [
        (r#"{"weight_map": {}}"#, "empty"),
        (r#"{"weight_map": {"wte.weight": 3}}"#, "not a file name"),
        (
            r#"{"weight_map": {"wte.weight": "../model.safetensors"}}"#,
            "inside the model directory",
        ),
        (r#"{"metadata": {}}"#, "no `weight_map`"),
    ] {
        std::fs::write(&index, text).unwrap();
        match lora_models::hf::weight_files(dir.path()) {
            Err(lora_models::ModelError::Config { path, reason }) => {
                assert_eq!(path, index);
                assert!(reason.contains(why), "{text}: {reason}");
            }
            other => panic!("{text}: expected a Config error, got {other:?}"),
        }
    }
    std::fs::write(
        &index,
        r#"{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let files = lora_models::hf::weight_files(dir.path()).unwrap();
    assert_eq!(
        files,
        [
            dir.path().join("model-00001-of-00002.safetensors"),
            dir.path().join("model-00002-of-00002.safetensors")
        ]
    );
}

/// An adapter with NaN (a diverged run): every decoding is an error naming the step, never a
/// panic or a copy of another prompt's beam.
#[test]
fn non_finite_logits_are_an_error_naming_the_step() {
    // Autodiff, so the adapter's parameters count as trainable for `set_trainable_values`.
    let device = Device::flex().autodiff();
    let (model, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let lora = lora_core::LoraConfig::new(2, 4.0, &["c_attn"]);
    let (model, _) = lora_models::gpt2::inject_gpt2_lora(
        model,
        &lora,
        "default",
        lora_models::gpt2::CAttnMode::Fused,
    )
    .unwrap();
    let mut values: std::collections::HashMap<String, lora_core::io::HostTensor> =
        lora_train::optim::trainable_values(&model)
            .unwrap()
            .into_iter()
            .collect();
    for v in values.values_mut() {
        v.data.iter_mut().for_each(|x| *x = f32::NAN);
    }
    let model =
        lora_train::optim::set_trainable_values(model, &values, std::path::Path::new("nan"))
            .unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5]];
    let beam = GenerationConfig {
        decoding: Decoding::Beam {
            num_beams: 3,
            length_penalty: 1.0,
            early_stopping: false,
        },
        ..GenerationConfig::greedy(4)
    };
    for cfg in [GenerationConfig::greedy(4), beam] {
        let err = model
            .generate(&prompts, &cfg, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("non-finite logit") && err.contains("step 1"),
            "{err}"
        );
    }
}

/// Inputs a user passes to the library's forwards are checked where burn would panic deep
/// inside (or, on wgpu, read garbage): explicit position ids past `n_positions`, a KV cache of
/// another batch size, a `LoraLinear` input of the wrong width.
#[test]
fn forward_inputs_are_checked() {
    let device = Device::flex();
    let (model, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
    let n = model.transformer.n_positions;
    let ids = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
    let far = Tensor::<2, Int>::from_data([[0, 1, n as i64]], &device);
    let err = model
        .forward_cached(ids.clone(), None, Some(far), None)
        .unwrap_err();
    assert!(err.to_string().contains("position_ids"), "{err}");
    let (_, cache) = model.forward_cached(ids.clone(), None, None, None).unwrap();
    let two = Tensor::<2, Int>::from_data([[4], [5]], &device);
    let err = model
        .forward_cached(two, None, None, Some(cache))
        .unwrap_err();
    assert!(err.to_string().contains("KV cache holds 1"), "{err}");

    let layer = lora_core::LoraLinearConfig::new(4, 2).init(&device);
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        layer.forward(Tensor::<2>::zeros([1, 3], &device))
    }));
    let msg = wrong.unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("last dimension is 3, the layer takes 4"),
        "{msg}"
    );
}

/// A malformed `pytorch_model.bin` (truncated, garbage, an empty file, a zip without a pickle)
/// is a typed error naming the file, never a panic through burn-store's pickle reader.
#[test]
fn malformed_pickle_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pytorch_model.bin");
    let mut zip_without_pickle = b"PK\x03\x04".to_vec();
    zip_without_pickle.extend([0u8; 64]);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("garbage", b"not a pickle at all \x80\x02}q\x00".to_vec()),
        ("zip header only", zip_without_pickle),
        (
            "protocol 2 truncated",
            vec![0x80, 0x02, 0x7d, 0x71, 0x00, 0x58],
        ),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let result = std::panic::catch_unwind(|| lora_models::hf::read_pytorch(&path));
        match result {
            Ok(Err(lora_models::ModelError::Pickle { path: p, .. })) => assert_eq!(p, path),
            Ok(other) => panic!(
                "{what}: expected a Pickle error, got {:?}",
                other.map(|m| m.len())
            ),
            Err(_) => panic!("{what}: the reader panicked"),
        }
    }
}

/// A copy of tiny-a with its config edited by `config` and its tensors by `tensors`.
fn edited_tiny_a(
    config: impl Fn(&mut serde_json::Value),
    tensors: impl Fn(&mut Vec<(String, HostTensor)>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt2/tiny-a");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut c);
    std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
    let mut t: Vec<(String, HostTensor)> =
        lora_core::read_safetensors(src.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    tensors(&mut t);
    lora_core::save_safetensors(dir.path().join("model.safetensors"), &t).unwrap();
    dir
}

/// Checkpoint contents the model does not read are honoured or refused by name, never
/// silently dropped (issue 14 item 7): an untied LM head, cross-attention, an unread body
/// tensor. Other heads' tensors (`score`) are skipped as transformers skips them.
#[test]
fn unread_checkpoint_contents_are_refused_by_name() {
    let device = Device::flex();
    let load = |d: &tempfile::TempDir| Gpt2LmHeadModel::from_pretrained(d.path(), &device);
    let wte = |t: &Vec<(String, HostTensor)>| {
        t.iter()
            .find(|(k, _)| k.ends_with("wte.weight"))
            .unwrap()
            .1
            .clone()
    };
    // Untied config, lm_head equal to wte: the same model, loads.
    let untie = |c: &mut serde_json::Value| c["tie_word_embeddings"] = false.into();
    let same = edited_tiny_a(untie, |t| {
        let w = wte(t);
        t.push(("lm_head.weight".into(), w));
    });
    load(&same).unwrap();
    // Untied with other values: refused, naming the setting.
    let other = edited_tiny_a(untie, |t| {
        let mut w = wte(t);
        w.data[0] += 1.0;
        t.push(("lm_head.weight".into(), w));
    });
    let e = load(&other).unwrap_err().to_string();
    assert!(e.contains("tie_word_embeddings"), "{e}");
    // Cross-attention is not implemented.
    let cross = edited_tiny_a(|c| c["add_cross_attention"] = true.into(), |_| {});
    let e = load(&cross).unwrap_err().to_string();
    assert!(e.contains("add_cross_attention"), "{e}");
    // A body tensor nothing reads: refused by name; another head's tensor: skipped.
    let extra = |key: &'static str| {
        edited_tiny_a(
            |_| {},
            move |t| {
                let w = wte(t);
                t.push((key.into(), w));
            },
        )
    };
    let e = load(&extra("transformer.h.0.crossattention.c_attn.weight"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("h.0.crossattention.c_attn.weight"), "{e}");
    load(&extra("score.weight")).unwrap();
}

/// tiny-a without dropout, so a plain and a segmented step see the same function.
pub(crate) fn tiny_a_without_dropout(device: &Device) -> Gpt2LmHeadModel {
    let mut model = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), device)
        .unwrap()
        .0;
    model.transformer.drop.prob = 0.0;
    for block in &mut model.transformer.h {
        block.attn.attn_dropout.prob = 0.0;
        block.attn.resid_dropout.prob = 0.0;
        block.mlp.dropout.prob = 0.0;
    }
    model
}

/// Every trainable gradient of a step, by parameter path.
pub(crate) fn step_grads(
    model: &Gpt2LmHeadModel,
    parts: Vec<burn::tensor::Gradients>,
) -> std::collections::BTreeMap<String, HostTensor> {
    let mut acc = lora_train::optim::GradAccumulator::new();
    acc.add_parts(model, parts, 1);
    acc.finish()
        .into_iter()
        .map(|(k, v)| (k, host(v)))
        .collect()
}

/// Activation checkpointing and the chunked loss (issue 15) change how a step is computed, not
/// what: the same loss and gradients (≤ 1e-5) as one forward and one backward, for LoRA
/// factors and for full fine-tuning (where the tied `wte` gets its gradient from the lookup
/// and the head, split across segments), with padding and label smoothing.
#[test]
fn checkpointing_and_a_chunked_loss_give_the_plain_gradients() {
    use lora_models::gpt2::MemoryOptions;
    let device = Device::flex().autodiff();
    let ids = Tensor::<2, Int>::from_data(
        [[5, 17, 300, 42, 9, 1000, 7, 8], [11, 2, 3, 4, 5, 0, 0, 0]],
        &device,
    );
    let mask = Tensor::<2, Int>::from_data(
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        &device,
    );
    let labels = labels_from_mask(ids.clone(), mask.clone());
    let lora = LoraConfig::new(4, 8.0, &["c_attn", "c_fc"]).with_init(InitLoraWeights::Random);
    for full in [false, true] {
        let base = tiny_a_without_dropout(&device);
        let model = match full {
            true => base,
            false => {
                inject_gpt2_lora(base, &lora, "default", CAttnMode::Fused)
                    .unwrap()
                    .0
            }
        };
        let logits = model.forward(ids.clone(), Some(mask.clone())).unwrap();
        let loss = causal_lm_loss(logits, labels.clone(), 0.1);
        let want = step_grads(&model, vec![loss.backward()]);
        assert!(want.contains_key("transformer.wte.weight") == full);
        let options = [(false, Some(5)), (true, None), (true, Some(3))];
        for (checkpoint_blocks, loss_chunk) in options {
            let options = MemoryOptions {
                checkpoint_blocks,
                loss_chunk,
            };
            let step = model
                .loss_and_grads(
                    ids.clone(),
                    Some(mask.clone()),
                    labels.clone(),
                    0.1,
                    options,
                )
                .unwrap();
            assert_eq!(step.count, 7 + 4);
            let what = format!("full {full}, {options:?}");
            crate::common::assert_close(&what, &host(step.loss), &host(loss.clone()), 1e-5);
            let got = step_grads(&model, step.parts);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (path, g) in &want {
                crate::common::assert_close(&format!("{what}: {path}"), &got[path], g, 1e-5);
            }
        }
    }
}

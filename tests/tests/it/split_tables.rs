//! Token-embedding tables stored in row blocks (issue 15, item 4): a device whose per-tensor
//! limit is below a table (wgpu on lavapipe or under WebGPU's defaults: 128 MiB, while GPT-2's
//! and RoBERTa's 50k × 768 tables are 147 MiB) gets the table in blocks. Here the split is
//! forced on small fixtures and checked against transformers' numbers and the whole table
//! (lookup, tied heads, gradients, merges, state dicts); then a model at GPT-2 small's width
//! and vocabulary loads and takes a LoRA step on wgpu, equal to flex (RoBERTa-base's table is
//! split by the same code, checked on the MLM fixture above).

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{InitLoraWeights, LoraConfig, LoraEmbedding, LoraLayer, LoraModelExt};
use lora_models::bert::{EncoderCheckpoint, RobertaForMaskedLM};
use lora_models::gpt2::{
    CAttnMode, GenerationConfig, Gpt2Config, Gpt2LmHeadModel, MemoryOptions, inject_gpt2_lora,
};
use lora_train::loss::{causal_lm_loss, labels_from_mask};

use crate::common::{assert_close, devices, fixture, host, load};
use crate::encoder::{enc, masked_diff, reference};
use crate::gpt2::{check_logits, ids_of, int2, ref_json, step_grads, tiny_a_without_dropout};

/// Blocks of `rows` rows of a `dim`-wide f32 table.
fn split(table: LoraEmbedding, rows: usize) -> LoraEmbedding {
    let dim = table.dims().1;
    let out = table.split_rows((rows * dim * 4) as u64).unwrap();
    assert!(out.is_split());
    out
}

#[test]
fn split_tables_match_transformers() {
    let gpt2 = load("gpt2/reference-a.safetensors");
    let encoder = reference();
    for (name, device) in devices() {
        let (mut model, _) =
            Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
        // 50257 rows: blocks of 20000, 20000 and 10257.
        model.transformer.wte = split(model.transformer.wte, 20000);
        assert_eq!(model.transformer.wte.row_blocks.len(), 2);
        assert_eq!(model.transformer.wte.dims(), (50257, 16));
        let ids = int2(&gpt2["right.ids"], &device);
        let mask = int2(&gpt2["right.mask"], &device);
        let logits = model.forward(ids.clone(), Some(mask.clone())).unwrap();
        check_logits(
            &format!("{name}: split wte"),
            logits.clone(),
            &gpt2,
            "right",
            &gpt2["right.mask"],
        );
        let loss = causal_lm_loss(logits, labels_from_mask(ids, mask), 0.0);
        let (ours, want) = (host(loss).data[0], gpt2["right.loss"].data[0]);
        assert!(
            (ours - want).abs() <= 1e-5 * want.max(1.0),
            "{ours} vs {want}"
        );
        // Generation reads the split head too (top-1 over the joined logits).
        let g = ref_json("a");
        let prompt: Vec<u32> = ids_of(&g["beam_prompt"]).into_iter().flatten().collect();
        let mut greedy = GenerationConfig::greedy(8);
        greedy.eos_token_id = None;
        let out = model
            .generate(std::slice::from_ref(&prompt), &greedy, &device)
            .unwrap();
        let (whole, _) = Gpt2LmHeadModel::from_pretrained(fixture("gpt2/tiny-a"), &device).unwrap();
        let want = whole.generate(&[prompt], &greedy, &device).unwrap();
        assert_eq!(out.tokens, want.tokens, "{name}: greedy with a split head");

        let (mut mlm, _) =
            RobertaForMaskedLM::from_pretrained(enc("roberta-mlm"), &device).unwrap();
        let table = mlm.roberta.embeddings.word_embeddings;
        mlm.roberta.embeddings.word_embeddings = split(table, 500);
        let (i, m) = (&encoder["roberta-mlm.ids"], &encoder["roberta-mlm.mask"]);
        let logits = mlm
            .forward(int2(i, &device), Some(int2(m, &device)), None)
            .unwrap();
        let d = masked_diff(&host(logits), &encoder["roberta-mlm.logits"], m);
        assert!(d <= 1e-4, "{name}: split MLM logits max abs diff {d:e}");
    }
}

/// Every gradient of a step, with a split table's block gradients joined in row order under
/// the whole table's path.
fn joined_grads(
    model: &Gpt2LmHeadModel,
    parts: Vec<burn::tensor::Gradients>,
) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    let mut blocks: Vec<(usize, HostTensor)> = Vec::new();
    for (path, g) in step_grads(model, parts) {
        match path.strip_prefix("transformer.wte.row_blocks.") {
            Some(i) => blocks.push((i.parse::<usize>().unwrap() + 1, g)),
            None if path == "transformer.wte.weight" => blocks.push((0, g)),
            None => {
                out.insert(path, g);
            }
        }
    }
    blocks.sort_by_key(|(i, _)| *i);
    if let Some((_, first)) = blocks.first().cloned() {
        let mut table = first;
        for (_, g) in &blocks[1..] {
            table.shape[0] += g.shape[0];
            table.data.extend(&g.data);
        }
        out.insert("transformer.wte.weight".into(), table);
    }
    out
}

/// Full fine-tuning through a split table gives the whole table's gradients (lookup and tied
/// head, plain and chunked steps); an embedding adapter merges and unmerges block by block;
/// state dicts see one tensor; `modules_to_save` on a split table is refused by name.
#[test]
fn split_tables_train_merge_and_round_trip_like_the_whole_table() {
    let device = Device::flex().autodiff();
    let ids = Tensor::<2, Int>::from_data(
        [[5, 17, 300, 42, 9, 50000, 7], [11, 20001, 3, 4, 5, 0, 0]],
        &device,
    );
    let mask = Tensor::<2, Int>::from_data([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], &device);
    let labels = labels_from_mask(ids.clone(), mask.clone());
    let whole = tiny_a_without_dropout(&device);
    let mut parts = whole.clone();
    parts.transformer.wte = split(parts.transformer.wte, 20000);
    let logits = whole.forward(ids.clone(), Some(mask.clone())).unwrap();
    let want = step_grads(
        &whole,
        vec![causal_lm_loss(logits, labels.clone(), 0.1).backward()],
    );
    let logits = parts.forward(ids.clone(), Some(mask.clone())).unwrap();
    let plain = joined_grads(
        &parts,
        vec![causal_lm_loss(logits, labels.clone(), 0.1).backward()],
    );
    let options = MemoryOptions {
        checkpoint_blocks: true,
        loss_chunk: Some(4),
    };
    let step = parts
        .loss_and_grads(ids.clone(), Some(mask.clone()), labels, 0.1, options)
        .unwrap();
    let chunked = joined_grads(&parts, step.parts);
    for (what, got) in [("plain", &plain), ("chunked", &chunked)] {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{what}"
        );
        for (path, g) in &want {
            assert_close(&format!("{what}: {path}"), &got[path], g, 1e-5);
        }
    }

    // An adapter on the split table (and c_attn), random so it changes the output.
    let lora = LoraConfig::new(4, 8.0, &["wte", "c_attn"]).with_init(InitLoraWeights::Random);
    let (whole, _) = inject_gpt2_lora(whole, &lora, "default", CAttnMode::Fused).unwrap();
    let mut adapted = whole.clone();
    adapted.transformer.wte = split(adapted.transformer.wte, 20000);
    let forward = |m: &Gpt2LmHeadModel| host(m.forward(ids.clone(), Some(mask.clone())).unwrap());
    let unmerged = forward(&whole);
    assert_close("adapter on split wte", &forward(&adapted), &unmerged, 1e-5);
    adapted.merge_active().unwrap();
    let mut merged_whole = whole.clone();
    merged_whole.merge_active().unwrap();
    assert_close(
        "merged split wte",
        &forward(&adapted),
        &forward(&merged_whole),
        1e-5,
    );
    assert_close(
        "merged table",
        &host(adapted.transformer.wte.base_weight()),
        &host(merged_whole.transformer.wte.base_weight()),
        1e-6,
    );
    adapted.unmerge_all().unwrap();
    assert_close("unmerged split wte", &forward(&adapted), &unmerged, 1e-5);

    // State dicts: one `wte.weight`, equal to the whole table's, and back into blocks.
    let exported = lora_core::export_state_dict(&parts, true).unwrap();
    assert_eq!(
        exported,
        lora_core::export_state_dict(&tiny_a_without_dropout(&device), true).unwrap()
    );
    let state = exported.into_iter().collect();
    let mut empty = tiny_a_without_dropout(&device);
    empty.transformer.wte = split(empty.transformer.wte, 7000);
    let (reloaded, report) = lora_core::load_state_dict(empty, state, true).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );
    assert_eq!(reloaded.transformer.wte.row_blocks.len(), 7);
    assert_close(
        "reloaded into blocks",
        &forward(&reloaded),
        &forward(&parts),
        1e-6,
    );

    // The loss in chunks (as on a device whose limit is below whole logits): same loss and
    // gradients through the split table.
    let chunked_loss = parts.clone().with_memory(MemoryOptions {
        checkpoint_blocks: false,
        loss_chunk: Some(3),
    });
    let labels = labels_from_mask(ids.clone(), mask.clone());
    let loss = chunked_loss
        .lm_loss(ids.clone(), Some(mask.clone()), labels.clone(), 0.1)
        .unwrap();
    let logits = parts.forward(ids.clone(), Some(mask.clone())).unwrap();
    let whole_loss = causal_lm_loss(logits, labels, 0.1);
    assert_close(
        "lm_loss in chunks",
        &host(loss.clone()),
        &host(whole_loss),
        1e-5,
    );
    let got = joined_grads(&chunked_loss, vec![loss.backward()]);
    for (path, g) in &want {
        assert_close(&format!("lm_loss: {path}"), &got[path], g, 1e-5);
    }

    let saved = LoraConfig::new(4, 8.0, &["c_attn"]).with_modules_to_save(&["wte"]);
    let e = lora_core::inject_adapter(parts, &saved, "default")
        .unwrap_err()
        .to_string();
    assert!(e.contains("wte") && e.contains("row blocks"), "{e}");
}

/// The wgpu device of [`devices`] (which says why there is none, or fails in CI).
fn wgpu() -> Option<Device> {
    devices()
        .into_iter()
        .find(|(n, _)| *n == "wgpu")
        .map(|(_, d)| d)
}

/// A checkpoint directory: `fixture`'s config.json with `edits`, and the weights of a model
/// initialised from it on flex (`weights` builds it and exports its state dict).
fn checkpoint(
    fixture_config: &Path,
    edits: serde_json::Value,
    weights: impl Fn(&Path) -> Vec<(String, HostTensor)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture_config).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (k, v) in edits.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let state = weights(dir.path());
    lora_core::save_safetensors(dir.path().join("model.safetensors"), &state).unwrap();
    dir
}

/// Whether `device` cannot hold a `rows × dim` f32 table in one tensor.
fn must_split(device: &Device, rows: usize, dim: usize) -> bool {
    lora_core::device::max_tensor_bytes(device).is_some_and(|l| (rows * dim * 4) as u64 > l)
}

/// GPT-2 small's width and vocabulary (one block, 16 positions per sequence) loads on wgpu
/// from a Hugging Face directory, its table split where the adapter's per-tensor limit needs
/// it (lavapipe: 128 MiB), and gives flex's logits, loss and LoRA gradients; logits too large
/// for the device are an error naming them, their size and the limit.
#[test]
fn gpt2_small_width_and_vocabulary_take_a_lora_step_on_wgpu() {
    let Some(wgpu) = wgpu() else { return };
    let edits = serde_json::json!({
        "n_embd": 768, "n_head": 12, "n_layer": 1, "n_positions": 64,
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
    });
    let dir = checkpoint(&fixture("gpt2/tiny-a/config.json"), edits, |dir| {
        let flex = Device::flex();
        flex.seed(11);
        let model = Gpt2Config::load(dir).unwrap().init(&flex);
        lora_core::export_state_dict(&model, true).unwrap()
    });
    let lora = LoraConfig::new(8, 16.0, &["c_attn"]).with_init(InitLoraWeights::Random);
    let adapter = tempfile::tempdir().unwrap();
    let (flex_base, _) = Gpt2LmHeadModel::from_pretrained(dir.path(), &Device::flex()).unwrap();
    let (with_lora, _) = inject_gpt2_lora(flex_base, &lora, "default", CAttnMode::Fused).unwrap();
    lora_core::save_adapter(&with_lora, &lora, "default", adapter.path()).unwrap();

    let ids: Vec<i64> = (0..32).map(|i| (i * 1571 + 13) % 50257).collect();
    let mut runs = Vec::new();
    for device in [Device::flex().autodiff(), wgpu.clone().autodiff()] {
        let (base, _) = Gpt2LmHeadModel::from_pretrained(dir.path(), &device).unwrap();
        assert_eq!(
            base.transformer.wte.is_split(),
            must_split(&device, 50257, 768)
        );
        let (model, config) = lora_core::load_adapter(&base, adapter.path(), "default").unwrap();
        let model = lora_core::apply_trainability(model, &config);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 16]), &device);
        let logits = host(model.forward(ids.clone(), None).unwrap());
        // The trainer's step (`TrainModel::train_step`): the loss, chunked under the device's
        // limit where needed, and one backward.
        let loss = model.lm_loss(ids.clone(), None, ids, 0.0).unwrap();
        let grads = step_grads(&model, vec![loss.backward()]);
        runs.push((logits, host(loss), grads));
    }
    let (flex, gpu) = (&runs[0], &runs[1]);
    assert_close("wgpu logits", &gpu.0, &flex.0, 1e-4);
    assert_close("wgpu loss", &gpu.1, &flex.1, 1e-4);
    assert!(
        flex.2.keys().all(|k| k.contains("lora")) && flex.2.len() == 2,
        "{:?}",
        flex.2.keys()
    );
    for (path, g) in &flex.2 {
        let scale = g.data.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        assert_close(
            &format!("wgpu gradient {path}"),
            &gpu.2[path],
            g,
            1e-4 * scale,
        );
    }

    if let Some(limit) = lora_core::device::max_tensor_bytes(&wgpu) {
        let (model, _) = Gpt2LmHeadModel::from_pretrained(dir.path(), &wgpu).unwrap();
        let rows = usize::try_from(limit / (50257 * 4)).unwrap();
        assert_eq!(model.max_logit_rows(&wgpu), rows);
        // More positions than the limit allows: refused before any work.
        let (b, t) = (rows / 64 + 1, 64);
        if b * t * 50257 * 4 > limit as usize {
            let ids = Tensor::<2, Int>::zeros([b, t], &wgpu);
            let e = model.forward(ids, None).unwrap_err().to_string();
            let shape = format!("[{b}, {t}, 50257]");
            assert!(
                e.contains("`logits`") && e.contains(&shape) && e.contains("per-tensor limit"),
                "{e}"
            );
        }
    }
}

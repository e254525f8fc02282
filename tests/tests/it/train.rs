//! lora-train: the training loop on the tiny GPT-2 fixture and a tiny classifier. Loss goes
//! down; flex, ndarray (and wgpu when present) give the same loss curve; accumulation equals a
//! full batch; resume is exact and survives interrupted checkpoint writes; only trainable
//! parameters have optimizer state; NaN stops training; data files load with clear errors;
//! burn's own Learner drives the same model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::prelude::*;
use lora_core::io::HostTensor;
use lora_core::{
    InitLoraWeights, LoraConfig, ParamReport, inject_adapter, load_adapter, save_adapter,
};
use lora_models::TextTokenizer;
use lora_models::gpt2::{CAttnMode, Gpt2LmHeadModel, inject_gpt2_lora};
use lora_train::checkpoint::{
    OPTIMIZER_FILE, TRAINABLE_FILE, latest_checkpoint, list_checkpoints, save_checkpoint,
};
use lora_train::loss::IGNORE_INDEX;
use lora_train::optim::{GradAccumulator, trainable_params, trainable_values};
use lora_train::{
    AdamW, BatchSource, Columns, DataConfig, EvalOutput, ItemTarget, LossConfig, LossOutput,
    OptimizerConfig, Predictions, ProgressMode, Resume, ScheduleConfig, ScheduleKind, StopReason,
    TargetKind, Task, TextBatch, TextDataset, TextItem, TrainError, TrainModel, Trainer,
    TrainerConfig, TrainerState, Warmup, class_loss, load_text_datasets, metrics,
};

use crate::common::{Tiny, devices, fixture, host, toy_classes};

// ---------------------------------------------------------------- helpers

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_dir(fixture("gpt2/tokenizer")).unwrap()
}

/// tiny-a with every dropout probability set to 0 (a copy in the target dir), so runs on
/// different backends or batch splits can be compared number for number.
fn tiny_no_dropout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpt2-tiny-a-no-dropout");
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let src = fixture("gpt2/tiny-a");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        for k in [
            "attn_pdrop",
            "embd_pdrop",
            "resid_pdrop",
            "summary_first_dropout",
        ] {
            cfg[k] = 0.0.into();
        }
        std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
        std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        dir
    })
}

fn gpt2(dir: &Path, device: &Device) -> Gpt2LmHeadModel {
    Gpt2LmHeadModel::from_pretrained(dir, device).unwrap().0
}

/// tiny-a with a fused c_attn adapter (r 4, alpha 8): the model most trainer tests train.
fn tiny_lm_lora(device: &Device) -> (Gpt2LmHeadModel, LoraConfig) {
    let lora = LoraConfig::new(4, 8.0, &["c_attn"]);
    let model = gpt2(&fixture("gpt2/tiny-a"), device);
    inject_gpt2_lora(model, &lora, "default", CAttnMode::Fused).unwrap()
}

fn lm_data(max_length: usize) -> (TextDataset, TextDataset) {
    let cfg = DataConfig {
        columns: Columns::prompt_completion("prompt", "completion"),
        max_length,
        validation_ratio: 0.25,
        ..Default::default()
    };
    let (t, v) = load_text_datasets(&fixture("train/lm.jsonl"), None, &cfg, &tokenizer()).unwrap();
    (t, v.unwrap())
}

fn quiet(out: &Path) -> TrainerConfig {
    TrainerConfig {
        output_dir: out.to_path_buf(),
        progress: ProgressMode::Off,
        plot: false,
        eval_each_epoch: false,
        save_each_epoch: false,
        ..Default::default()
    }
}

fn values(model: &impl burn::module::Module) -> HashMap<String, HostTensor> {
    trainable_values(model).unwrap().into_iter().collect()
}

fn max_param_diff(a: &HashMap<String, HostTensor>, b: &HashMap<String, HostTensor>) -> f32 {
    assert_eq!(a.len(), b.len(), "same trainable parameters");
    let mut d = 0f32;
    for (k, va) in a {
        let vb = &b[k];
        assert_eq!(va.shape, vb.shape, "{k}");
        for (x, y) in va.data.iter().zip(&vb.data) {
            d = d.max((x - y).abs());
        }
    }
    d
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------- GPT-2 training

#[test]
fn loss_decreases_on_tiny_gpt2_and_outputs_are_written() {
    let device = Device::flex();
    device.seed(42);
    // The tied LM head is the frozen token table (an unmerged `wte` adapter changes only the
    // input lookup, as in PEFT) and ln_f bounds the hidden states: training ln_f fully lets
    // this tiny random model scale its logits and move its output distribution quickly.
    let lora = LoraConfig::new(8, 16.0, &["c_attn", "c_fc", "wte"]).with_modules_to_save(&["ln_f"]);
    let (model, lora) = inject_gpt2_lora(
        gpt2(&fixture("gpt2/tiny-a"), &device),
        &lora,
        "default",
        CAttnMode::Fused,
    )
    .unwrap();
    let (train, valid) = lm_data(24);
    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        num_epochs: 8,
        batch_size: 4,
        optimizer: OptimizerConfig {
            learning_rate: 2e-2,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Linear,
            warmup: Warmup::Ratio(0.1),
        },
        eval_each_epoch: true,
        save_each_epoch: true,
        progress: ProgressMode::Lines,
        plot: true,
        logging_steps: 4,
        ..quiet(out.path())
    };
    let trainer = Trainer::new(config, device.clone()).unwrap();
    let before = trainer.evaluate(&model, &valid).unwrap();
    let trained = trainer.fit(model, &lora, &train, Some(&valid)).unwrap();
    let s = &trained.summary;
    let first = s.losses[0];
    let last: f64 = s.losses[s.losses.len() - 3..].iter().sum::<f64>() / 3.0;
    let after = s.final_eval.clone().unwrap();
    eprintln!(
        "tiny-a LM: train loss {first:.4} -> {last:.4} over {} steps; eval loss {:.4} -> {:.4} (ppl {:.1} -> {:.1}); {:.0} tok/s",
        s.global_step,
        before["loss"],
        after["loss"],
        before["perplexity"],
        after["perplexity"],
        s.tokens_per_second
    );
    assert_eq!(
        s.global_step,
        8 * 3,
        "12 training examples, batch 4, 8 epochs"
    );
    assert_eq!(s.stop_reason, StopReason::Completed);
    // A frozen tied head of a random tiny model moves slowly (10.82 -> 10.57 measured): the
    // loss must still fall well beyond noise.
    assert!(
        last < first - 0.15,
        "training loss should fall clearly: {first} -> {last}"
    );
    // The best adapter is the one with the lowest held-out loss.
    let best = s.best.clone().unwrap();
    eprintln!("best eval loss {:.4} at step {}", best.value, best.step);
    assert_eq!(best.name, "loss");
    assert!(
        best.value < before["loss"] - 0.15,
        "eval loss should fall: {before:?} -> {best:?}"
    );
    assert!((after["perplexity"] - after["loss"].exp()).abs() < 1e-9 * after["perplexity"]);

    // Outputs: the final adapter (PEFT format) reproduces the trained model; the best adapter,
    // retained checkpoints, metrics log and curve exist.
    assert!(
        s.best_adapter_dir
            .as_ref()
            .unwrap()
            .join("adapter_model.safetensors")
            .is_file()
    );
    let ckpts = list_checkpoints(out.path()).unwrap();
    assert_eq!(
        ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![21, 24],
        "last 2 kept"
    );
    let log = std::fs::read_to_string(&s.metrics_log).unwrap();
    let steps = log
        .lines()
        .filter(|l| l.contains("\"learning_rate\""))
        .count();
    let evals = log.lines().filter(|l| l.contains("\"eval_loss\"")).count();
    assert_eq!((steps, evals), (24, 8));
    let png = std::fs::read(out.path().join("curves.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    let base = gpt2(&fixture("gpt2/tiny-a"), &device);
    let (reloaded, _) = load_adapter(&base, &s.adapter_dir, "default").unwrap();
    let batch = valid.batch(&[0, 1], &device).unwrap();
    let a = trained
        .model
        .valid()
        .forward(batch.input_ids.clone(), Some(batch.attention_mask.clone()))
        .unwrap();
    let b = reloaded
        .forward(batch.input_ids, Some(batch.attention_mask))
        .unwrap();
    crate::common::assert_close("saved adapter = trained model", &host(a), &host(b), 1e-5);
}

#[test]
fn same_seed_gives_the_same_loss_curve_on_every_backend() {
    // One adapter initialisation for all backends (their RNGs differ), no dropout.
    let init = tempfile::tempdir().unwrap();
    let lora_cfg = LoraConfig::new(4, 8.0, &["c_attn", "c_fc"]).with_init(InitLoraWeights::Random);
    {
        let device = Device::flex();
        device.seed(7);
        let (m, cfg) = inject_gpt2_lora(
            gpt2(tiny_no_dropout(), &device),
            &lora_cfg,
            "default",
            CAttnMode::Fused,
        )
        .unwrap();
        save_adapter(&m, &cfg, "default", init.path()).unwrap();
    }
    let (train, _) = lm_data(20);
    let mut curves: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, device) in devices() {
        let (model, lora) =
            load_adapter(&gpt2(tiny_no_dropout(), &device), init.path(), "default").unwrap();
        let out = tempfile::tempdir().unwrap();
        let config = TrainerConfig {
            max_steps: Some(6),
            batch_size: 4,
            optimizer: OptimizerConfig {
                learning_rate: 1e-2,
                ..Default::default()
            },
            ..quiet(out.path())
        };
        let t = Trainer::new(config, device)
            .unwrap()
            .fit(model, &lora, &train, None)
            .unwrap();
        curves.push((name, t.summary.losses));
    }
    let (_, reference) = &curves[0];
    for (name, curve) in &curves[1..] {
        let d = max_abs_diff(reference, curve);
        eprintln!(
            "loss curve {name} vs flex: max |diff| {d:.2e} over {} steps ({reference:.4?})",
            curve.len()
        );
        assert!(d < 1e-4, "{name}: {curve:?} vs {reference:?}");
    }
    assert!(reference.last() < reference.first(), "{reference:?}");
}

#[test]
fn gradient_accumulation_equals_the_full_batch() {
    let device = Device::flex();
    let lora_cfg = LoraConfig::new(4, 8.0, &["c_attn"]).with_init(InitLoraWeights::Random);
    let (train, _) = lm_data(20);
    // One initialisation, cloned: the device RNG is shared by concurrently running tests.
    device.seed(3);
    let (model, lora) = inject_gpt2_lora(
        gpt2(tiny_no_dropout(), &device),
        &lora_cfg,
        "default",
        CAttnMode::Fused,
    )
    .unwrap();
    let mut results = Vec::new();
    for (batch_size, accum) in [(8, 1), (4, 2), (2, 4)] {
        let out = tempfile::tempdir().unwrap();
        let config = TrainerConfig {
            max_steps: Some(1),
            batch_size,
            gradient_accumulation_steps: accum,
            optimizer: OptimizerConfig {
                learning_rate: 1e-2,
                max_grad_norm: Some(0.5),
                ..Default::default()
            },
            schedule: ScheduleConfig {
                kind: ScheduleKind::Constant,
                warmup: Warmup::Steps(0),
            },
            ..quiet(out.path())
        };
        let t = Trainer::new(config, device.clone())
            .unwrap()
            .fit(model.clone(), &lora, &train, None)
            .unwrap();
        results.push((batch_size, accum, values(&t.model), t.summary.losses[0]));
    }
    let (_, _, full, full_loss) = &results[0];
    for (b, a, params, loss) in &results[1..] {
        let d = max_param_diff(full, params);
        eprintln!(
            "accumulation {a} x {b} vs batch 8: params max |diff| {d:.2e}, loss {loss:.6} vs {full_loss:.6}"
        );
        assert!(d <= 1e-5, "{a} x {b}: {d}");
        assert!((loss - full_loss).abs() < 1e-5);
    }
}

/// Runs the calling test again in a child process (only it) and asserts it passed: burn's
/// device RNG is process-global, so a check that depends on dropout masks must not share the
/// process with concurrently running tests. Returns true in the child, which then does the work.
fn in_own_process(test: &str) -> bool {
    if std::env::var("LORA_TRAIN_CHILD_TEST").is_ok_and(|t| t == test) {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("LORA_TRAIN_CHILD_TEST", test)
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed in its own process");
    false
}

#[test]
fn resume_is_exact_and_survives_interrupted_checkpoint_writes() {
    if !in_own_process("train::resume_is_exact_and_survives_interrupted_checkpoint_writes") {
        return;
    }
    // Dropout on (model and adapter) to show the RNG is restored too.
    let lora_cfg = LoraConfig::new(4, 16.0, &["c_attn", "c_fc"]).with_dropout(0.1);
    let build = |seed: u64| {
        let device = Device::flex();
        device.seed(seed);
        inject_gpt2_lora(
            gpt2(&fixture("gpt2/tiny-a"), &device),
            &lora_cfg,
            "default",
            CAttnMode::QueryValue,
        )
        .unwrap()
    };
    let (train, valid) = lm_data(24);
    let config = |out: &Path| TrainerConfig {
        max_steps: Some(7),
        batch_size: 2,
        gradient_accumulation_steps: 2,
        optimizer: OptimizerConfig {
            learning_rate: 5e-3,
            loraplus_lr_ratio: Some(4.0),
            ..Default::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup: Warmup::Steps(2),
        },
        eval_each_epoch: true,
        save_each_epoch: true,
        group_by_length: true,
        ..quiet(out)
    };
    // Straight through.
    let out_a = tempfile::tempdir().unwrap();
    let (model, lora) = build(1);
    let straight = Trainer::new(config(out_a.path()), Device::flex())
        .unwrap()
        .fit(model, &lora, &train, Some(&valid))
        .unwrap();
    assert_eq!(straight.summary.global_step, 7);

    // Stopped after 4 steps (mid-epoch: 3 steps per epoch), in a fresh process' worth of state.
    let out_b = tempfile::tempdir().unwrap();
    let (model, lora) = build(1);
    let first = Trainer::new(
        TrainerConfig {
            stop_after_steps: Some(4),
            ..config(out_b.path())
        },
        Device::flex(),
    )
    .unwrap()
    .fit(model, &lora, &train, Some(&valid))
    .unwrap();
    assert_eq!(first.summary.stop_reason, StopReason::Interrupted);
    assert_eq!(first.summary.global_step, 4);
    let ckpt = latest_checkpoint(out_b.path()).unwrap().unwrap();
    let state = TrainerState::load(&ckpt).unwrap();
    assert_eq!(
        (
            state.global_step,
            state.epoch,
            state.batch_in_epoch,
            state.total_steps
        ),
        (4, 1, 2, 7)
    );

    // A crash while writing the next checkpoint: a failed write, and a killed one (.tmp left).
    let failed = save_checkpoint(out_b.path(), 5, |dir| {
        std::fs::write(dir.join("adapter_model.safetensors"), b"half a file").unwrap();
        Err(TrainError::config("simulated", "crash mid-write"))
    });
    assert!(failed.is_err());
    let killed = out_b.path().join("checkpoint-5.tmp");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::copy(ckpt.join(TRAINABLE_FILE), killed.join(TRAINABLE_FILE)).unwrap();
    std::fs::write(
        killed.join("trainer_state.json"),
        b"{\"format\": 1, \"global_",
    )
    .unwrap();
    assert_eq!(
        latest_checkpoint(out_b.path()).unwrap(),
        Some(ckpt.clone()),
        "previous checkpoint still the latest"
    );

    // Resume on a model rebuilt differently seeded (the checkpoint overrides its adapter).
    let (model, lora) = build(99);
    let resumed = Trainer::new(
        TrainerConfig {
            resume: Resume::Latest,
            ..config(out_b.path())
        },
        Device::flex(),
    )
    .unwrap()
    .fit(model, &lora, &train, Some(&valid))
    .unwrap();
    assert_eq!(resumed.summary.resumed_from, Some(4));
    assert_eq!(resumed.summary.global_step, 7);
    assert!(!killed.exists(), "stale .tmp removed");

    let d = max_param_diff(&values(&straight.model), &values(&resumed.model));
    let mut joined = first.summary.losses.clone();
    joined.extend(&resumed.summary.losses);
    let dl = max_abs_diff(&straight.summary.losses, &joined);
    eprintln!(
        "resume 4 + 3 vs 7 straight: adapter max |diff| {d:.2e}, loss curve max |diff| {dl:.2e}"
    );
    assert!(d <= 1e-6, "adapter tensors differ by {d}");
    assert!(
        dl <= 1e-6,
        "same data order and dropout: {:?} vs {joined:?}",
        straight.summary.losses
    );
    assert_eq!(straight.summary.final_eval, resumed.summary.final_eval);
    assert_eq!(straight.summary.best, resumed.summary.best);

    // The metrics log of the resumed run has each step once.
    let log = std::fs::read_to_string(&resumed.summary.metrics_log).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("learning_rate").is_some())
        .filter_map(|v| v["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=7).collect::<Vec<_>>());

    // Resuming with other data or batch settings is refused.
    let (model, lora) = build(1);
    let err = Trainer::new(
        TrainerConfig {
            resume: Resume::Latest,
            batch_size: 4,
            ..config(out_b.path())
        },
        Device::flex(),
    )
    .unwrap()
    .fit(model, &lora, &train, Some(&valid))
    .unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
}

#[test]
fn only_trainable_parameters_have_optimizer_state() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let (model, lora) = tiny_lm_lora(&device);
    let trainable = trainable_params(&model);
    let report = ParamReport::new(&model, &lora);
    assert_eq!(trainable.len(), 2 * 2, "A and B in each of the 2 layers");
    let (train, _) = lm_data(20);
    let batch = train.batch(&[0, 1, 2], &device).unwrap();

    let step = |ratio: Option<f64>| {
        let mut optim = AdamW::new(OptimizerConfig {
            learning_rate: 1e-3,
            loraplus_lr_ratio: ratio,
            max_grad_norm: None,
            ..Default::default()
        });
        let out = model.train_step(&batch, &LossConfig::default()).unwrap();
        let mut acc = GradAccumulator::new();
        acc.add(&model, out.loss.backward(), out.count);
        let updated = optim.step(model.clone(), acc.finish(), 0, None).unwrap();
        (optim, updated)
    };
    let (optim, updated) = step(None);
    eprintln!(
        "optimizer state: {} params, {} tensors, {} values; trainable {} of {} params",
        optim.num_states(),
        optim.num_state_tensors(),
        optim.num_state_elements(),
        report.trainable,
        report.total
    );
    assert_eq!(optim.num_states(), trainable.len());
    assert_eq!(optim.num_state_tensors(), 2 * trainable.len());
    assert_eq!(optim.num_state_elements(), 2 * report.trainable);
    let mut paths: Vec<String> = trainable.iter().map(|p| p.path.clone()).collect();
    paths.sort();
    assert_eq!(optim.state_paths(), paths);

    // Frozen parameters are bit-identical after the update; B moved (A has no gradient while B = 0).
    let changed = |a: &Gpt2LmHeadModel, b: &Gpt2LmHeadModel| {
        let (va, vb) = (
            host(a.transformer.h[0].attn.c_attn.weight.val()),
            host(b.transformer.h[0].attn.c_attn.weight.val()),
        );
        va != vb
    };
    assert!(!changed(&model, &updated), "frozen base weight changed");
    let b_delta = |m: &Gpt2LmHeadModel| {
        host(m.transformer.h[0].attn.c_attn.adapters[0].lora_b[0].val())
            .data
            .iter()
            .map(|v| v.abs())
            .fold(0.0f32, f32::max)
    };
    // LoRA+: B's first Adam step is ratio × larger (B starts at zero).
    let (_, plus) = step(Some(16.0));
    let ratio = b_delta(&plus) / b_delta(&updated);
    eprintln!("LoRA+ ratio 16: max |ΔB| ratio {ratio:.4}");
    assert!((ratio - 16.0).abs() < 1e-3, "{ratio}");

    // A checkpoint's optimizer file holds exactly two moments per trainable tensor.
    let out = tempfile::tempdir().unwrap();
    let t = Trainer::new(
        TrainerConfig {
            max_steps: Some(2),
            batch_size: 4,
            ..quiet(out.path())
        },
        Device::flex(),
    )
    .unwrap()
    .fit(gpt_with(&lora).0, &lora, &train, None)
    .unwrap();
    let ckpt = t.summary.last_checkpoint.unwrap();
    let saved = lora_core::read_safetensors(ckpt.join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(saved.len(), 2 * trainable.len());
    let n: usize = saved.values().map(|t| t.data.len()).sum();
    assert_eq!(n, 2 * report.trainable);
}

/// tiny-a on flex with a fused adapter, and the config used.
fn gpt_with(lora: &LoraConfig) -> (Gpt2LmHeadModel, LoraConfig) {
    let device = Device::flex();
    device.seed(5);
    inject_gpt2_lora(
        gpt2(&fixture("gpt2/tiny-a"), &device),
        lora,
        "default",
        CAttnMode::Fused,
    )
    .unwrap()
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let lora_cfg = LoraConfig::new(4, 8.0, &["c_attn", "c_fc"]);
    let (model, lora) = gpt_with(&lora_cfg);
    let (train, _) = lm_data(20);
    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        max_steps: Some(10),
        batch_size: 4,
        save_steps: Some(1),
        save_total_limit: Some(3),
        optimizer: OptimizerConfig {
            learning_rate: 1e36,
            max_grad_norm: None,
            ..Default::default()
        },
        schedule: ScheduleConfig {
            kind: ScheduleKind::Constant,
            warmup: Warmup::Steps(0),
        },
        ..quiet(out.path())
    };
    let err = Trainer::new(config, Device::flex())
        .unwrap()
        .fit(model, &lora, &train, None)
        .unwrap_err();
    eprintln!("{err}");
    let TrainError::NonFinite {
        step,
        last_checkpoint,
        ..
    } = &err
    else {
        panic!("expected a non-finite error, got {err}");
    };
    let ckpt = last_checkpoint
        .clone()
        .expect("a checkpoint before the failure");
    let state = TrainerState::load(&ckpt).unwrap();
    assert_eq!(
        state.global_step,
        step - 1,
        "the last checkpoint is the step before"
    );
    assert!(!out.path().join(format!("checkpoint-{step}")).exists());
    assert!(err.to_string().contains(&ckpt.display().to_string()));
    // It loads.
    let base = gpt2(&fixture("gpt2/tiny-a"), &Device::flex());
    assert!(load_adapter(&base, &ckpt, "default").is_ok());

    // A fresh run into the same directory is refused unless told to overwrite.
    let sane = TrainerConfig {
        max_steps: Some(1),
        batch_size: 4,
        ..quiet(out.path())
    };
    let (model, lora) = gpt_with(&lora_cfg);
    let err = Trainer::new(sane.clone(), Device::flex())
        .unwrap()
        .fit(model.clone(), &lora, &train, None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("already holds checkpoints (checkpoint-1)"),
        "{err}"
    );
    let overwrite = TrainerConfig {
        overwrite_output_dir: true,
        ..sane
    };
    let t = Trainer::new(overwrite, Device::flex())
        .unwrap()
        .fit(model, &lora, &train, None)
        .unwrap();
    let steps: Vec<usize> = list_checkpoints(out.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![1]);
    assert_eq!(t.summary.losses.len(), 1);
}

// ---------------------------------------------------------------- classification

/// The common tiny classifier (vocab 20, 3 classes) as a trainable model.
impl TrainModel for Tiny {
    type Batch = TextBatch;

    fn train_step(&self, batch: &TextBatch, _: &LossConfig) -> lora_train::Result<LossOutput> {
        let logits = self.forward(batch.input_ids.clone());
        Ok(LossOutput::new(
            class_loss(logits, batch.class_labels()?),
            batch.len(),
        ))
    }

    fn eval_step(&self, batch: &TextBatch) -> lora_train::Result<EvalOutput> {
        let logits = self.forward(batch.input_ids.clone());
        let loss = class_loss(logits.clone(), batch.class_labels()?);
        let predictions = Predictions::from_logits(logits, batch.gold_classes()?.to_vec())?;
        Ok(EvalOutput {
            loss,
            count: batch.len(),
            predictions,
        })
    }

    fn save_adapter(
        &self,
        lora: &LoraConfig,
        name: &str,
        dir: &std::path::Path,
    ) -> lora_core::Result<()> {
        lora_core::save_adapter(self, lora, name, dir)
    }
}

#[test]
fn classifier_trains_evaluates_and_stops_early() {
    let device = Device::flex();
    device.seed(11);
    let lora = LoraConfig::new(4, 8.0, &["q", "v", "fc"]).with_modules_to_save(&["head"]);
    let model = inject_adapter(Tiny::new(&device), &lora, "default").unwrap();
    let (train, valid) = (toy_classes(48, 1), toy_classes(24, 2));
    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        num_epochs: 10,
        batch_size: 8,
        metric_for_best: lora_train::Metric::Accuracy,
        eval_each_epoch: true,
        optimizer: OptimizerConfig {
            learning_rate: 3e-2,
            ..Default::default()
        },
        ..quiet(out.path())
    };
    let trainer = Trainer::new(config.clone(), device.clone()).unwrap();

    // evaluate() agrees with the metrics computed by hand from the model's logits.
    let m = trainer.evaluate(&model, &valid).unwrap();
    let batch = valid
        .batch(&(0..valid.len()).collect::<Vec<_>>(), &device)
        .unwrap();
    let logits = model.forward(batch.input_ids.clone());
    let pred: Vec<usize> = logits
        .clone()
        .argmax(1)
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let gold = batch.gold_classes().unwrap().to_vec();
    assert_eq!(m["accuracy"], metrics::accuracy(&pred, &gold));
    assert_eq!(m["f1"], metrics::f1(&pred, &gold, 3));
    assert_eq!(m["mcc"], metrics::mcc(&pred, &gold, 3));
    let loss = host(class_loss(logits, batch.class_labels().unwrap())).data[0] as f64;
    assert!((m["loss"] - loss).abs() < 1e-5, "{} vs {loss}", m["loss"]);

    let trained = trainer
        .fit(model.clone(), &lora, &train, Some(&valid))
        .unwrap();
    let after = trained.summary.final_eval.clone().unwrap();
    eprintln!("tiny classifier: {m:?} -> {after:?}");
    assert!(after["loss"] < m["loss"]);
    assert!(after["accuracy"] > m["accuracy"]);
    assert_eq!(trained.summary.best.as_ref().unwrap().name, "accuracy");

    // With a zero learning rate nothing improves: patience 2 stops after the 3rd evaluation.
    let out2 = tempfile::tempdir().unwrap();
    let frozen = TrainerConfig {
        output_dir: out2.path().to_path_buf(),
        early_stopping_patience: Some(2),
        metric_for_best: lora_train::Metric::Loss,
        optimizer: OptimizerConfig {
            learning_rate: 0.0,
            ..Default::default()
        },
        ..config
    };
    let t = Trainer::new(frozen, device)
        .unwrap()
        .fit(model, &lora, &train, Some(&valid))
        .unwrap();
    assert_eq!(t.summary.stop_reason, StopReason::EarlyStopping);
    assert_eq!(t.summary.global_step, 3 * 6, "three epochs of 6 steps");
    // An unknown metric for this task is a clear error.
    let out3 = tempfile::tempdir().unwrap();
    let bad = TrainerConfig {
        metric_for_best: lora_train::Metric::Pearson,
        max_steps: Some(1),
        ..quiet(out3.path())
    };
    let device = Device::flex();
    let model = inject_adapter(Tiny::new(&device), &lora, "default").unwrap();
    let err = Trainer::new(bad, device)
        .unwrap()
        .fit(model, &lora, &train, Some(&valid))
        .unwrap_err();
    assert!(err.to_string().contains("accuracy, f1, loss, mcc"), "{err}");
}

#[test]
fn encoders_fine_tune_on_classification_and_regression() {
    use lora_models::bert::{
        BertForSequenceClassification, EncoderCheckpoint, RobertaForSequenceClassification,
        inject_encoder_lora,
    };
    let device = Device::flex();
    device.seed(21);
    let lora_cfg = LoraConfig::new(4, 8.0, &["query", "value"]);

    // RoBERTa with its 3-label head (id2label negative/neutral/positive) on the sentiment CSV,
    // whose labels are named after it.
    let dir = fixture("encoder/roberta-a");
    let (model, _) = RobertaForSequenceClassification::from_pretrained(&dir, &device).unwrap();
    let (model, lora) = inject_encoder_lora(model, &lora_cfg, "default").unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let names = ["negative", "neutral", "positive"]
        .map(String::from)
        .to_vec();
    let data = DataConfig {
        columns: Columns::labeled("sentence", None, "label"),
        task: Task::Classification {
            labels: Some(names),
        },
        max_length: 24,
        validation_ratio: 0.25,
        ..Default::default()
    };
    let (train, valid) =
        load_text_datasets(&fixture("train/sentiment.csv"), None, &data, &tok).unwrap();
    assert_eq!(train.items()[0].input_ids[0], 0, "<s> first");
    let out = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        num_epochs: 10,
        batch_size: 3,
        eval_each_epoch: true,
        metric_for_best: lora_train::Metric::Mcc,
        optimizer: OptimizerConfig {
            learning_rate: 1e-2,
            ..Default::default()
        },
        ..quiet(out.path())
    };
    let t = Trainer::new(config.clone(), device.clone())
        .unwrap()
        .fit(model.clone(), &lora, &train, valid.as_ref())
        .unwrap();
    let l = &t.summary.losses;
    let eval = t.summary.final_eval.clone().unwrap();
    eprintln!(
        "roberta-a sentiment: train loss {:.4} -> {:.4} over {} steps; eval {eval:?}",
        l[0],
        l[l.len() - 1],
        l.len()
    );
    assert!(l[l.len() - 3..].iter().sum::<f64>() / 3.0 < l[0], "{l:?}");
    assert!(
        ["accuracy", "f1", "mcc", "loss"]
            .iter()
            .all(|k| eval.contains_key(*k))
    );
    // PEFT's SEQ_CLS adapter, classifier included, reloads onto the base model.
    let base = RobertaForSequenceClassification::from_pretrained(&dir, &device)
        .unwrap()
        .0;
    let (reloaded, _) = load_adapter(&base, &t.summary.adapter_dir, "default").unwrap();
    let batch = valid.as_ref().unwrap().batch(&[0, 1], &device).unwrap();
    let ids = || batch.input_ids.clone();
    let mask = || Some(batch.attention_mask.clone());
    let a = t.model.valid().forward(ids(), mask(), None).unwrap();
    let b = reloaded.forward(ids(), mask(), None).unwrap();
    crate::common::assert_close("encoder adapter round trip", &host(a), &host(b), 1e-5);

    // Labels inferred from the file (2 classes) do not fit the 3-label head: a clear error.
    let inferred = DataConfig {
        task: Task::Classification { labels: None },
        ..data
    };
    let (train2, _) =
        load_text_datasets(&fixture("train/sentiment.csv"), None, &inferred, &tok).unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let err = Trainer::new(
        TrainerConfig {
            max_steps: Some(1),
            ..quiet(out2.path())
        },
        device.clone(),
    )
    .unwrap()
    .fit(model, &lora, &train2, None)
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("the head has 3 labels but the data has 2 classes"),
        "{err}"
    );

    // BERT with a regression head on sentence pairs (STS-B style).
    let dir = fixture("encoder/bert-b");
    let (model, _) = BertForSequenceClassification::from_pretrained(&dir, &device).unwrap();
    let (model, lora) = inject_encoder_lora(model, &lora_cfg, "default").unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let data = DataConfig {
        columns: Columns::labeled("sentence1", Some("sentence2"), "score"),
        task: Task::Regression,
        max_length: 20,
        validation_ratio: 0.34,
        ..Default::default()
    };
    let (train, valid) = load_text_datasets(&fixture("train/stsb.tsv"), None, &data, &tok).unwrap();
    let item = &train.items()[0];
    assert!(item.token_type_ids.contains(&1), "pairs carry segment ids");
    let out3 = tempfile::tempdir().unwrap();
    let config = TrainerConfig {
        num_epochs: 15,
        batch_size: 2,
        metric_for_best: lora_train::Metric::Pearson,
        optimizer: OptimizerConfig {
            learning_rate: 1e-2,
            ..Default::default()
        },
        ..quiet(out3.path())
    };
    let t = Trainer::new(config, device)
        .unwrap()
        .fit(model, &lora, &train, valid.as_ref())
        .unwrap();
    let l = &t.summary.losses;
    let eval = t.summary.final_eval.clone().unwrap();
    eprintln!(
        "bert-b STS-B: train loss {:.4} -> {:.4} over {} steps; eval {eval:?}",
        l[0],
        l[l.len() - 1],
        l.len()
    );
    assert!(l[l.len() - 2..].iter().sum::<f64>() / 2.0 < l[0], "{l:?}");
    assert!(eval.contains_key("pearson") && eval.contains_key("spearman"));
}

// ---------------------------------------------------------------- data

#[test]
fn data_files_load_tokenize_and_batch() {
    let tok = tokenizer();
    let device = Device::flex();
    // Prompt/completion with a validation split: prompt positions carry no label.
    let (train, valid) = lm_data(24);
    assert_eq!((train.len(), valid.len()), (12, 4));
    let batch = train.batch(&[0, 1, 2], &device).unwrap();
    let [b, t] = batch.input_ids.dims();
    assert_eq!(b, 3);
    let ids = batch
        .input_ids
        .clone()
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    let mask = batch
        .attention_mask
        .clone()
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    let labels = batch
        .token_labels()
        .unwrap()
        .into_data()
        .try_into_vec_as::<i64>()
        .unwrap();
    let mut targets = 0;
    for (row, item) in train.items()[..3].iter().enumerate() {
        let ItemTarget::Tokens { loss_from } = item.target else {
            panic!()
        };
        let n = item.input_ids.len();
        assert_eq!(
            item.input_ids.last(),
            Some(&50256),
            "ends with <|endoftext|>"
        );
        for j in 0..t {
            let k = row * t + j;
            assert_eq!(mask[k], (j < n) as i64);
            let want = if j >= loss_from && j < n {
                ids[k]
            } else {
                IGNORE_INDEX
            };
            assert_eq!(labels[k], want, "row {row} pos {j}");
        }
        targets += n - loss_from.max(1);
    }
    assert_eq!(batch.num_targets, targets);

    // Truncation keeps the completion and cuts the prompt from the left: 5 tokens of room.
    let cfg = DataConfig {
        max_length: 5,
        validation_ratio: 0.0,
        ..Default::default()
    };
    let (short, none) = load_text_datasets(&fixture("train/lm.jsonl"), None, &cfg, &tok).unwrap();
    assert!(none.is_none());
    let item = &short.items()[1]; // "The sky looks" + " blue." + eos
    assert_eq!(
        tok.decode(&item.input_ids, false).unwrap(),
        " sky looks blue.<|endoftext|>"
    );
    assert_eq!(item.target, ItemTarget::Tokens { loss_from: 2 });

    // E2E `context||completion` lines.
    let cfg = DataConfig {
        columns: Columns::e2e("text"),
        max_length: 32,
        validation_ratio: 0.0,
        ..Default::default()
    };
    let (e2e, _) = load_text_datasets(&fixture("train/e2e.txt"), None, &cfg, &tok).unwrap();
    let ItemTarget::Tokens { loss_from } = e2e.items()[0].target else {
        panic!()
    };
    assert_eq!(
        tok.decode(&e2e.items()[0].input_ids[loss_from..], false)
            .unwrap(),
        " The Vaults is an Italian pub.<|endoftext|>"
    );

    // CSV classification with string labels; TSV pair regression.
    let cfg = DataConfig {
        columns: Columns::labeled("sentence", None, "label"),
        task: Task::Classification { labels: None },
        max_length: 16,
        validation_ratio: 0.25,
        ..Default::default()
    };
    let (sst, sst_valid) =
        load_text_datasets(&fixture("train/sentiment.csv"), None, &cfg, &tok).unwrap();
    assert_eq!(sst.label_names().unwrap(), ["negative", "positive"]);
    assert_eq!(
        sst_valid.unwrap().label_names().unwrap(),
        ["negative", "positive"]
    );
    assert_eq!(sst.kind(), TargetKind::Classes { num_classes: 2 });
    let cfg = DataConfig {
        columns: Columns::labeled("sentence1", Some("sentence2"), "score"),
        task: Task::Regression,
        max_length: 12,
        validation_ratio: 0.0,
        ..Default::default()
    };
    let (sts, _) = load_text_datasets(&fixture("train/stsb.tsv"), None, &cfg, &tok).unwrap();
    assert_eq!(sts.items()[3].target, ItemTarget::Value(3.5));
    assert!(
        sts.items().iter().all(|i| i.input_ids.len() <= 12),
        "pairs truncated to max_length"
    );
    let (values, gold) = {
        let b = sts.batch(&[0, 2], &device).unwrap();
        let (v, g) = b.values().unwrap();
        (host(v).data, g.to_vec())
    };
    assert_eq!(values, vec![4.8, 0.6]);
    assert_eq!(gold, vec![4.8f32 as f64, 0.6f32 as f64]);

    // Errors name file and line; nothing panics.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\"}\n",
    )
    .unwrap();
    let err = load_text_datasets(&bad, None, &DataConfig::default(), &tok).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:2: no column `completion`", bad.display())
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert!(matches!(
        load_text_datasets(&empty, None, &DataConfig::default(), &tok),
        Err(TrainError::EmptyDataset { .. })
    ));
    let blank = dir.path().join("blank.jsonl");
    std::fs::write(&blank, "{\"prompt\": \"a\", \"completion\": \"  \"}\n").unwrap();
    let err = load_text_datasets(&blank, None, &DataConfig::default(), &tok).unwrap_err();
    assert!(
        err.to_string().ends_with(":1: the completion is empty"),
        "{err}"
    );
    let unknown = dir.path().join("valid.csv");
    std::fs::write(&unknown, "sentence,label\nfine,neutral\n").unwrap();
    let cfg = DataConfig {
        columns: Columns::labeled("sentence", None, "label"),
        task: Task::Classification { labels: None },
        ..Default::default()
    };
    let err = load_text_datasets(&fixture("train/sentiment.csv"), Some(&unknown), &cfg, &tok)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("valid.csv:2: label `neutral` is not one of the known classes"),
        "{err}"
    );
    let reg = DataConfig {
        task: Task::Regression,
        ..cfg.clone()
    };
    let err = load_text_datasets(&fixture("train/sentiment.csv"), None, &reg, &tok).unwrap_err();
    assert!(
        err.to_string()
            .contains("sentiment.csv:2: label `positive` is not a finite number"),
        "{err}"
    );
    let mismatched = DataConfig {
        task: Task::CausalLm,
        ..cfg
    };
    assert!(matches!(
        load_text_datasets(&fixture("train/sentiment.csv"), None, &mismatched, &tok),
        Err(TrainError::InvalidConfig { .. })
    ));
}

// ---------------------------------------------------------------- burn interop

#[test]
fn burn_learner_drives_the_same_model() {
    use burn::data::dataloader::DataLoaderBuilder;
    use burn::optim::AdamWConfig;
    use burn::train::metric::LossMetric;
    use burn::train::{Interrupter, Learner, SupervisedTraining};
    use lora_train::LearnerAdapter;

    let device = Device::flex();
    device.seed(2);
    let (model, _) = tiny_lm_lora(&device);
    let before = values(&model.clone().train());
    let (train, valid) = lm_data(20);
    let loader = |ds: TextDataset| {
        DataLoaderBuilder::new(ds.batcher())
            .batch_size(4)
            .shuffle(1)
            .build(ds)
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |model, train, valid| {
        let interrupter = Interrupter::new();
        let adapter = LearnerAdapter::new(model, &interrupter);
        let learner = Learner::new(adapter, AdamWConfig::new().init(), 1e-2);
        SupervisedTraining::new(dir.path(), loader(train), loader(valid))
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .num_epochs(1)
            .with_interrupter(interrupter)
            .launch(learner)
    };
    // A step error (sequences past tiny-a's 32 positions) stops training through burn's
    // interrupter with the message; before, the step panicked.
    let long = TextItem {
        input_ids: vec![5; 40],
        token_type_ids: vec![0; 40],
        target: ItemTarget::Tokens { loss_from: 0 },
    };
    let too_long = TextDataset::from_items(vec![long; 4], 50256, TargetKind::Tokens).unwrap();
    let failed = run(model.clone(), too_long.clone(), too_long);
    let reason = failed
        .interrupted
        .and_then(|i| i.reason)
        .unwrap_or_default();
    assert!(reason.contains("train step failed"), "{reason}");
    assert!(failed.model.error().is_some_and(|e| e.contains("32")));

    let result = run(model, train, valid);
    assert!(result.interrupted.is_none() && result.model.error().is_none());
    let trained = result.model.inner.train();
    let d = max_param_diff(&before, &values(&trained));
    eprintln!("burn Learner: adapter moved by up to {d:.2e}");
    assert!(d > 0.0, "the adapter trained");
    assert_eq!(
        trainable_params(&trained).len(),
        4,
        "still only the adapter trains"
    );
}

/// Label smoothing enters the training loss exactly as `causal_lm_loss` (checked against
/// PyTorch in the GPT-2 tests) computes it; evaluation stays the plain cross-entropy.
#[test]
fn label_smoothing_applies_to_training_only() {
    let device = Device::flex();
    let (train, _) = lm_data(32);
    let batch = lora_train::BatchSource::batch(&train, &[0, 1, 2], &device).unwrap();
    let model = gpt2(&fixture("gpt2/tiny-a"), &device);
    let plain = model
        .train_step(&batch, &LossConfig::default())
        .unwrap()
        .loss;
    let smoothing = LossConfig {
        label_smoothing: 0.1,
    };
    let smoothed = model.train_step(&batch, &smoothing).unwrap().loss;
    let logits = model
        .forward(batch.input_ids.clone(), Some(batch.attention_mask.clone()))
        .unwrap();
    let want = lora_train::loss::causal_lm_loss(logits, batch.token_labels().unwrap(), 0.1);
    let (p, s, w) = (
        host(plain).data[0],
        host(smoothed).data[0],
        host(want).data[0],
    );
    assert!((s - w).abs() <= 1e-6 * w.abs(), "smoothed {s} vs {w}");
    assert!((s - p).abs() > 1e-3, "smoothing changes the training loss");
    let eval = model.eval_step(&batch).unwrap().loss;
    assert!(
        (host(eval).data[0] - p).abs() <= 1e-6 * p.abs(),
        "eval ignores smoothing"
    );
}

/// Token ids the model's tables do not hold (a tokenizer from another checkpoint, added
/// tokens, a pair template on RoBERTa's single segment) are typed errors naming the id, the
/// table size and the example, before any step: before, flex's embedding gather panicked.
#[test]
fn token_ids_outside_the_model_are_typed_errors() {
    let device = Device::flex();
    let out = tempfile::tempdir().unwrap();
    let trainer = Trainer::new(quiet(out.path()), device.clone()).unwrap();
    let (model, lora) = tiny_lm_lora(&device);
    let item = |ids: Vec<u32>, types: Vec<u32>, target| TextItem {
        token_type_ids: types,
        input_ids: ids,
        target,
    };
    let lm = ItemTarget::Tokens { loss_from: 0 };
    let ok = item(vec![1, 2, 3], vec![0; 3], lm.clone());
    let bad = item(vec![1, 60_000, 3], vec![0; 3], lm.clone());
    let data = TextDataset::from_items(vec![ok.clone(), bad], 50256, TargetKind::Tokens).unwrap();
    let e = trainer.fit(model.clone(), &lora, &data, None).unwrap_err();
    assert!(
        matches!(
            &e,
            TrainError::IdOutOfRange {
                id: 60_000,
                limit: 50_257,
                example: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("training data"), "{e}");
    let e = trainer.evaluate(&model, &data).unwrap_err();
    assert!(e.to_string().contains("evaluation data"), "{e}");
    // A pad id beyond the table (a tokenizer's added pad token).
    let padded = TextDataset::from_items(vec![ok], 60_001, TargetKind::Tokens).unwrap();
    assert!(trainer.evaluate(&model, &padded).is_err());
    // Prompts for generation.
    let greedy = lora_models::gpt2::GenerationConfig::greedy(2);
    let e = model
        .valid()
        .generate(&[vec![5, 60_000]], &greedy, &device)
        .unwrap_err();
    assert!(e.to_string().contains("60000"), "{e}");

    // RoBERTa has one segment: a token-type id 1 (a pair template) is out of range.
    use lora_models::bert::EncoderCheckpoint;
    let (roberta, _) = lora_models::bert::RobertaForSequenceClassification::from_pretrained(
        fixture("encoder/roberta-a"),
        &device,
    )
    .unwrap();
    let (roberta, lora) =
        lora_models::bert::inject_encoder_lora(roberta, &LoraConfig::default(), "default").unwrap();
    let pair = item(
        vec![0, 5, 2, 2, 6, 2],
        vec![0, 0, 0, 1, 1, 1],
        ItemTarget::Class(1),
    );
    let classes = TargetKind::Classes { num_classes: 3 };
    let data = TextDataset::from_items(vec![pair], 1, classes).unwrap();
    let e = trainer.fit(roberta, &lora, &data, None).unwrap_err();
    assert!(
        matches!(
            &e,
            TrainError::IdOutOfRange {
                what: "token-type",
                id: 1,
                limit: 1,
                ..
            }
        ),
        "{e}"
    );
}

//! The programs end to end on the tiny fixtures, as a user runs them; bad input gives one
//! clear line and a non-zero exit.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gpt2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpt2-lora"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the program starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn info_generate_and_merge() {
    let o = gpt2(&["info", "--model", "fixtures/gpt2/tiny-a", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // q/v slices of c_attn, r = 4, two blocks of width 16: 2 · (16·8 + 2·4·16).
    assert_eq!(v["lora"], 512);

    let o = gpt2(&[
        "generate",
        "--model",
        "fixtures/gpt2/tiny-a",
        "--tokenizer",
        "fixtures/gpt2/tokenizer",
        "--adapter",
        "fixtures/gpt2/peft-c_attn",
        "--prompt",
        "The quick brown fox",
        "--max-new-tokens",
        "5",
        "--beams",
        "3",
        "--no-repeat-ngram-size",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 5);
    assert!(v["text"].is_string());

    let out = tempfile::tempdir().unwrap();
    let o = gpt2(&[
        "merge",
        "--model",
        "fixtures/gpt2/tiny-a",
        "--adapter",
        "fixtures/gpt2/peft-c_attn",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.path().join("model.safetensors").exists());
    assert!(out.path().join("config.json").exists());
    // The merged checkpoint is a plain model: it loads without the adapter.
    let o = gpt2(&["info", "--model", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let cases: [&[&str]; 6] = [
        &["info", "--model", "no/such/dir"],
        &["info", "--model", "gpt2"],
        &[
            "info",
            "--model",
            "fixtures/gpt2/tiny-a",
            "--device",
            "cuda",
        ],
        &[
            "merge",
            "--model",
            "fixtures/gpt2/tiny-a",
            "--adapter",
            "fixtures/core",
            "--out",
            "/tmp/x",
        ],
        // Not E2E data: no `text` column of `context||reference`.
        &[
            "e2e-eval",
            "--model",
            "fixtures/gpt2/tiny-a",
            "--data",
            "fixtures/train/lm.jsonl",
        ],
        &[
            "e2e-eval",
            "--model",
            "fixtures/gpt2/tiny-a",
            "--data",
            "fixtures/train/e2e.txt",
            "--max-new-tokens",
            "100000",
        ],
    ];
    for args in cases {
        let o = gpt2(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got:\n{err}"
        );
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn train_then_eval_with_the_adapter() {
    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    let common = [
        "--model",
        "fixtures/gpt2/tiny-a",
        "--tokenizer",
        "fixtures/gpt2/tokenizer",
    ];
    let mut args = vec!["train"];
    args.extend(common);
    args.extend([
        "--data",
        "fixtures/train/lm.jsonl",
        "--out",
        out_s,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-2",
    ]);
    let o = gpt2(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "curves.png",
        "run.json",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    // A second fresh run into the same directory is refused without --overwrite.
    let o = gpt2(&args);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("--overwrite") || err.contains("overwrite"),
        "{err}"
    );

    let adapter = format!("{out_s}/adapter");
    let eval = |with: bool| {
        let mut a = vec!["eval"];
        a.extend(common);
        a.extend(["--data", "fixtures/train/lm.jsonl", "--json"]);
        if with {
            a.extend(["--adapter", adapter.as_str()]);
        }
        let o = gpt2(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let (base, tuned) = (eval(false), eval(true));
    assert!(
        tuned < base,
        "training lowers the loss on its data: {base} -> {tuned}"
    );

    // Malformed data: one line naming the file and line.
    let bad = out.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{not json\n",
    )
    .unwrap();
    let mut a = vec!["eval"];
    a.extend(common);
    let bad_s = bad.to_str().unwrap();
    a.extend(["--data", bad_s]);
    let o = gpt2(&a);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.jsonl") && err.contains('2'), "{err}");
}

fn encoder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_encoder-lora"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the program starts")
}

#[test]
fn encoder_train_eval_predict() {
    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    let model = [
        "--model",
        "fixtures/encoder/roberta-a",
        "--max-length",
        "30",
    ];
    let mut args = vec!["train"];
    args.extend(model);
    args.extend([
        "--data",
        "fixtures/train/sentiment.csv",
        "--valid",
        "fixtures/train/sentiment.csv",
        "--out",
        out_s,
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
    ]);
    let o = encoder(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    // Held-out score before and after, as the README's main job shows it.
    let before: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("eval_before.json")).unwrap(),
    )
    .unwrap();
    assert!(before["accuracy"].is_number(), "{before}");
    let log = stderr(&o);
    assert!(log.contains("held-out accuracy: "), "{log}");
    assert!(log.contains(" before → "), "{log}");
    let adapter = format!("{out_s}/adapter");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "labels.json",
    ] {
        assert!(out.path().join("adapter").join(f).exists(), "{f} missing");
    }
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["task_type"], "SEQ_CLS");

    let mut a = vec!["eval"];
    a.extend(model);
    a.extend([
        "--adapter",
        adapter.as_str(),
        "--data",
        "fixtures/train/sentiment.csv",
        "--json",
    ]);
    let o = encoder(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["accuracy", "f1", "mcc", "loss"] {
        assert!(m[k].is_number(), "{k} in {m}");
    }

    let mut a = vec!["predict"];
    a.extend(model);
    a.extend([
        "--adapter",
        adapter.as_str(),
        "--text",
        "a delight from start to finish",
        "--json",
    ]);
    let o = encoder(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let probs = p["probabilities"].as_object().unwrap();
    let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{p}");
    assert!(
        probs.contains_key("positive") && probs.contains_key("negative"),
        "{p}"
    );
}

#[test]
fn e2e_eval_groups_references_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture plus a second reference for its first MR (same context, another row).
    let mut data = std::fs::read_to_string(root().join("fixtures/train/e2e.txt")).unwrap();
    data.push_str(
        "name : The Vaults | Type : pub | food : Italian || An Italian pub: The Vaults.\n",
    );
    let data_path = dir.path().join("e2e.txt");
    std::fs::write(&data_path, data).unwrap();
    let out = dir.path().join("eval");
    let o = gpt2(&[
        "e2e-eval",
        "--model",
        "fixtures/gpt2/tiny-a",
        "--tokenizer",
        "fixtures/gpt2/tokenizer",
        "--adapter",
        "fixtures/gpt2/peft-c_attn",
        "--data",
        data_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--beams",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_mrs"], 6, "{v}");
    assert_eq!(v["n_references"], 7, "{v}");
    for k in ["bleu", "rouge_l"] {
        let x = v[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    assert_eq!(v["decoding"]["no_repeat_ngram_size"], 4);
    let hyps = std::fs::read_to_string(out.join("hypotheses.txt")).unwrap();
    assert_eq!(hyps.lines().count(), 6);
    // Multi-reference file: the first MR has two lines, then a blank line between MRs.
    let refs = std::fs::read_to_string(out.join("references.txt")).unwrap();
    let blocks: Vec<&str> = refs.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), 6, "{refs}");
    assert_eq!(blocks[0].lines().count(), 2, "{refs}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!(saved["bleu"], v["bleu"]);
}

/// Ctrl-C (SIGINT) during `train`: the run stops after its step, saves a checkpoint, prints
/// one line and exits with 130.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits() {
    use std::time::{Duration, Instant};
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gpt2-lora"))
        .args([
            "train",
            "--model",
            "fixtures/gpt2/tiny-a",
            "--tokenizer",
            "fixtures/gpt2/tokenizer",
            "--data",
            "fixtures/train/lm.jsonl",
            "--out",
            out.path().to_str().unwrap(),
            "--epochs",
            "100000",
            "--batch-size",
            "2",
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the program starts");
    // The first logged step means training (and so the handler, installed before it) runs.
    let log = out.path().join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|s| s.contains("\"step\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no training step logged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("interrupted after step") && last.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let checkpoints = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count();
    assert!(checkpoints > 0, "no checkpoint saved: {err}");
    assert!(
        out.path()
            .join("adapter/adapter_model.safetensors")
            .exists()
    );
}

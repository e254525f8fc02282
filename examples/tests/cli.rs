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
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["base_model_name_or_path"], "fixtures/gpt2/tiny-a");
    assert_eq!(saved["task_type"], "CAUSAL_LM");
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

/// `--gradient-checkpointing` and `--loss-chunk` change how a step is computed (issue 15): the
/// run trains like the plain one; a zero chunk is one clear line.
#[test]
fn gradient_checkpointing_and_a_chunked_loss_train() {
    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    let mut args = vec![
        "train",
        "--model",
        "fixtures/gpt2/tiny-a",
        "--tokenizer",
        "fixtures/gpt2/tokenizer",
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
        "--gradient-checkpointing",
        "--loss-chunk",
    ];
    let mut zero = args.clone();
    zero.push("0");
    let o = gpt2(&zero);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--loss-chunk"), "{err}");
    args.push("5");
    let o = gpt2(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2, "{metrics}");
    assert!(losses.last() < losses.first(), "{losses:?}");
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
    // ... and the log starts with it, at step 0, so curves.png shows where training started.
    let log0 = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log0.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 0);
    assert_eq!(first["eval_accuracy"], before["accuracy"]);
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
    // PEFT's AutoPeftModel finds the base model from the adapter (as given to --model).
    assert_eq!(
        saved["base_model_name_or_path"],
        "fixtures/encoder/roberta-a"
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("run.json")).unwrap())
            .unwrap();
    assert_eq!(run["lora"]["task_type"], "SEQ_CLS");

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

/// Texts of `scripts/make_encoder_fixtures.py` (SINGLE and PAIRS), whose logits it recorded.
const SINGLE: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "A man is eating food.",
];
const PAIRS: [(&str, &str); 3] = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The dog runs.", "Is the quick fox brown or red?"),
    ("Hello", "world"),
];

/// Rows `[n, k]` of a reference tensor written by the fixture script.
fn reference(key: &str) -> Vec<Vec<f64>> {
    let refs =
        lora_core::adapter::read_safetensors(root().join("fixtures/encoder/reference.safetensors"))
            .unwrap();
    let t = &refs[key];
    let k = t.shape.get(1).copied().unwrap_or(1);
    t.data
        .chunks(k)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::MIN, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The JSON lines a `predict --data` run printed.
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Probabilities of one prediction in the order of `names`.
fn probs(p: &serde_json::Value, names: &[&str]) -> Vec<f64> {
    names
        .iter()
        .map(|n| p["probabilities"][n].as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{what}: {a:?} vs {b:?}");
    }
}

fn write_jsonl(dir: &std::path::Path, name: &str, rows: &[serde_json::Value]) -> String {
    let p = dir.join(name);
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn predict_and_eval_on_a_plain_hf_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["negative", "neutral", "positive"];
    let rows: Vec<serde_json::Value> = SINGLE
        .iter()
        .zip([2, 0, 1])
        .map(|(t, l)| serde_json::json!({"sentence": t, "label": l}))
        .collect();
    let data = write_jsonl(dir.path(), "single.jsonl", &rows);
    let model = ["--model", "fixtures/encoder/roberta-a"];
    // Batched: one JSON line per row, labels named by the checkpoint's id2label.
    let mut a = vec!["predict", "--data", data.as_str()];
    a.extend(model);
    let batch = json_lines(&encoder(&a));
    assert_eq!(batch.len(), 3);
    for (i, (p, logits)) in batch
        .iter()
        .zip(reference("roberta-a.single.right.logits"))
        .enumerate()
    {
        let want = softmax(&logits);
        assert_close(&probs(p, &names), &want, 1e-4, &format!("row {i}"));
        let best = (0..3).fold(0, |b, j| if want[j] > want[b] { j } else { b });
        assert_eq!(p["label"], names[best], "{p}");
    }
    // One process per sentence gives the same numbers as the batch.
    for (text, p) in SINGLE.iter().zip(&batch) {
        let mut a = vec!["predict", "--text", text, "--json"];
        a.extend(model);
        let o = encoder(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let one: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_close(&probs(&one, &names), &probs(p, &names), 1e-5, text);
    }
    // Standard input, in JSON lines, gives the same too.
    let mut child = Command::new(env!("CARGO_BIN_EXE_encoder-lora"))
        .args(["predict", "--data", "-"])
        .args(model)
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let stdin_rows = std::fs::read(&data).unwrap();
    child.stdin.take().unwrap().write_all(&stdin_rows).unwrap();
    let piped = json_lines(&child.wait_with_output().unwrap());
    assert_eq!(piped, batch);
    // eval: integer labels are class indices; the loss is transformers'.
    let want_loss = reference("roberta-a.loss")[0][0];
    let mut a = vec!["eval", "--data", data.as_str(), "--json"];
    a.extend(model);
    let o = encoder(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        (m["loss"].as_f64().unwrap() - want_loss).abs() < 1e-4,
        "{m} vs {want_loss}"
    );
    // ... and label names work as well as indices.
    let named: Vec<serde_json::Value> = SINGLE
        .iter()
        .zip(["positive", "negative", "neutral"])
        .map(|(t, l)| serde_json::json!({"sentence": t, "label": l}))
        .collect();
    let named = write_jsonl(dir.path(), "named.jsonl", &named);
    let mut a = vec!["eval", "--data", named.as_str(), "--json"];
    a.extend(model);
    let o = encoder(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let m2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m2["loss"], m["loss"]);
}

#[test]
fn predict_with_a_python_peft_adapter_without_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<serde_json::Value> = PAIRS
        .iter()
        .map(|(a, b)| serde_json::json!({"sentence": a, "other": b}))
        .collect();
    let data = write_jsonl(dir.path(), "pairs.jsonl", &rows);
    let names = ["negative", "neutral", "positive"];
    let o = encoder(&[
        "predict",
        "--model",
        "fixtures/encoder/roberta-a",
        "--adapter",
        "fixtures/encoder/peft-roberta-a",
        "--data",
        &data,
        "--pair-column",
        "other",
        "--batch-size",
        "2",
    ]);
    let got = json_lines(&o);
    assert_eq!(got.len(), 3);
    for (p, logits) in got
        .iter()
        .zip(reference("peft-roberta-a.pair.right.logits"))
    {
        assert_close(
            &probs(p, &names),
            &softmax(&logits),
            1e-4,
            "PEFT SEQ_CLS adapter",
        );
    }
    // A regression head (BERT, one output) with its PEFT adapter: the value is PEFT's logit.
    let o = encoder(&[
        "predict",
        "--model",
        "fixtures/encoder/bert-b",
        "--adapter",
        "fixtures/encoder/peft-bert-b",
        "--data",
        &data,
        "--pair-column",
        "other",
    ]);
    let got = json_lines(&o);
    for (p, want) in got.iter().zip(reference("peft-bert-b.pair.right.logits")) {
        assert!(
            (p["value"].as_f64().unwrap() - want[0]).abs() < 1e-4,
            "{p} vs {want:?}"
        );
    }
    // eval with that adapter needs no labels.json either (the head's size comes from the file).
    let labeled: Vec<serde_json::Value> = PAIRS
        .iter()
        .zip([0, 2, 1])
        .map(|((a, b), l)| serde_json::json!({"sentence": a, "other": b, "label": l}))
        .collect();
    let labeled = write_jsonl(dir.path(), "labeled.jsonl", &labeled);
    let o = encoder(&[
        "eval",
        "--model",
        "fixtures/encoder/roberta-a",
        "--adapter",
        "fixtures/encoder/peft-roberta-a",
        "--data",
        &labeled,
        "--pair-column",
        "other",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Cross-entropy of PEFT's logits at the given labels.
    let want: f64 = reference("peft-roberta-a.pair.right.logits")
        .iter()
        .zip([0, 2, 1])
        .map(|(l, y)| -softmax(l)[y].ln())
        .sum::<f64>()
        / 3.0;
    assert!(
        (m["loss"].as_f64().unwrap() - want).abs() < 1e-4,
        "{m} vs {want}"
    );
}

#[test]
fn labels_fall_back_to_indices_and_a_missing_head_is_an_error() {
    // roberta-a without id2label (but with its 3-output head): classes are named by index.
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("fixtures/encoder/roberta-a");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = dir.path().join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let obj = c.as_object_mut().unwrap();
    obj.remove("id2label");
    obj.remove("label2id");
    obj.insert("num_labels".into(), serde_json::json!(3));
    std::fs::write(&cfg, c.to_string()).unwrap();
    let o = encoder(&[
        "predict",
        "--model",
        dir.path().to_str().unwrap(),
        "--text",
        "Hello world",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = softmax(&reference("roberta-a.single.right.logits")[1]);
    assert_close(&probs(&p, &["0", "1", "2"]), &want, 1e-4, "index names");

    // A checkpoint without a classification head (a masked-LM one): one line, non-zero exit.
    let o = encoder(&[
        "predict",
        "--model",
        "fixtures/encoder/roberta-mlm",
        "--text",
        "Hello",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no trained classification head"), "{err}");
}

/// A tokenizer whose ids the model does not have (here a word-level one with an id past
/// tiny-a's 50257) gives one line naming the id and the vocabulary, for every command that
/// feeds ids to the model; before, flex's embedding gather panicked.
#[test]
fn ids_outside_the_vocabulary_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "sky": 60000, "blue": 5, "<|endoftext|>": 50256}, "unk_token": "[UNK]"}
    });
    std::fs::write(tmp.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let data = tmp.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"sky\", \"completion\": \"blue\"}\n".repeat(4),
    )
    .unwrap();
    let tok = tmp.path().to_str().unwrap();
    let model = "fixtures/gpt2/tiny-a";
    let out = tmp.path().join("out");
    for args in [
        vec![
            "eval",
            "--model",
            model,
            "--tokenizer",
            tok,
            "--data",
            data.to_str().unwrap(),
        ],
        vec![
            "train",
            "--model",
            model,
            "--tokenizer",
            tok,
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
        ],
        vec![
            "generate",
            "--model",
            model,
            "--tokenizer",
            tok,
            "--prompt",
            "sky blue",
        ],
    ] {
        let o = gpt2(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(
            err.contains("60000") && err.contains("50257"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let errors = err.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(errors, 1, "{args:?}: {err}");
    }
}

/// `gpt2-lora train` on tiny-a for 6 epochs of batch 2 (42 steps, a checkpoint each epoch)
/// into `out`, plus `extra`: the run the fault-injection tests interrupt.
fn tiny_train_args(out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let base = "train --model fixtures/gpt2/tiny-a --tokenizer fixtures/gpt2/tokenizer \
                --data fixtures/train/lm.jsonl --epochs 6 --batch-size 2 --out";
    let mut args: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    args.push(out.to_str().unwrap().into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Polls `out` until a save is under way (a `.tmp` entry), the child exits, or `limit` passes.
#[cfg(unix)]
fn wait_for_save(
    out: &std::path::Path,
    child: &mut std::process::Child,
    limit: std::time::Duration,
) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit && matches!(child.try_wait(), Ok(None)) {
        let saving = std::fs::read_dir(out)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
        if saving {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `kill -9` of a real `train` at 10 moments spread over the run (every other one as soon as
/// the next save has begun). Saves are slowed (`LORA_BURN_SAVE_DELAY_MS`) so that kills land
/// inside checkpoint and adapter writes, the final ones included. Every checkpoint and adapter left behind loads (an adapter caught
/// between the two renames of its replacement is `adapter.old`, which the next run puts
/// back), and `--resume` (or a fresh start when no checkpoint was complete) ends with an
/// adapter bit-identical to an uninterrupted run's.
#[cfg(unix)]
#[test]
fn kill_9_at_any_moment_then_resume_ends_bit_identical() {
    use std::time::Instant;
    let train = |out: &std::path::Path, extra: &[&str]| {
        let args = tiny_train_args(out, extra);
        let mut c = Command::new(env!("CARGO_BIN_EXE_gpt2-lora"));
        c.args(args).current_dir(root());
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let adapter = |out: &std::path::Path| {
        std::fs::read(out.join("adapter").join("adapter_model.safetensors")).unwrap()
    };
    let reference = tempfile::tempdir().unwrap();
    let o = train(reference.path(), &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let want = adapter(reference.path());
    let (mut resumed, mut fresh, mut mid_save) = (0, 0, 0);
    // With slowed saves the run takes longer: measure it once.
    let slow = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut c = train(slow.path(), &[]);
    assert!(
        c.env("LORA_BURN_SAVE_DELAY_MS", "100")
            .output()
            .unwrap()
            .status
            .success()
    );
    let full = start.elapsed();
    for trial in 0..10u32 {
        let out = tempfile::tempdir().unwrap();
        let mut c = train(out.path(), &[]);
        let mut child = c.env("LORA_BURN_SAVE_DELAY_MS", "100").spawn().unwrap();
        std::thread::sleep(full.mul_f64((f64::from(trial) + 0.5) / 10.0));
        if trial % 2 == 1 {
            // Every other trial waits for the next save to start, so kills land inside saves
            // however fast the machine runs the steps between them.
            wait_for_save(out.path(), &mut child, full);
        }
        child.kill().ok(); // SIGKILL (an error: the run already ended)
        child.wait().unwrap();
        let names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        mid_save += usize::from(
            names
                .iter()
                .any(|n| n.ends_with(".tmp") || n.ends_with(".old")),
        );
        // Whatever is complete is whole: checkpoints load, adapters read.
        let checkpoints = lora_train::checkpoint::list_checkpoints(out.path()).unwrap();
        for (_, dir) in &checkpoints {
            lora_train::TrainerState::load(dir).unwrap();
        }
        for dir in ["adapter", "adapter.old", "best", "best.old"] {
            let d = out.path().join(dir);
            if d.join("adapter_config.json").exists() {
                lora_core::LoraConfig::load(&d).unwrap();
                lora_core::read_safetensors(d.join("adapter_model.safetensors")).unwrap();
            }
        }
        let flag = if checkpoints.is_empty() {
            fresh += 1;
            "--overwrite"
        } else {
            resumed += 1;
            "--resume"
        };
        let o = train(out.path(), &[flag]).output().unwrap();
        assert!(o.status.success(), "trial {trial}: {}", stderr(&o));
        assert!(
            adapter(out.path()) == want,
            "trial {trial} ({flag}): another adapter"
        );
    }
    eprintln!(
        "kill -9: {resumed} trials resumed from a checkpoint, {fresh} started over, \
         {mid_save} killed inside a save"
    );
    assert!(resumed >= 3, "too few trials had a checkpoint: {resumed}");
    assert!(
        mid_save >= 3,
        "too few kills landed inside a save: {mid_save}"
    );
}

/// Valid command lines of both programs, each damaged at random (a value swapped for a wrong
/// one: missing files, other formats, negative, huge or non-numbers; a flag dropped or added):
/// each ends with status 0, 1 (one `error:` line) or 2 (clap's usage error), never a panic.
/// Seeded; `LORA_FUZZ_CASES` scales it (default 40 per program).
#[test]
fn damaged_command_lines_never_panic() {
    let cases: usize = std::env::var("LORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(40, |n: usize| n / 4);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap().to_string();
    let base = |program: &str, command: usize| -> Vec<String> {
        let gpt2 = [
            "train --model fixtures/gpt2/tiny-a --tokenizer fixtures/gpt2/tokenizer --data fixtures/train/lm.jsonl --max-steps 2 --batch-size 2 --out OUT",
            "eval --model fixtures/gpt2/tiny-a --tokenizer fixtures/gpt2/tokenizer --data fixtures/train/lm.jsonl --adapter fixtures/gpt2/peft-c_attn",
            "generate --model fixtures/gpt2/tiny-a --tokenizer fixtures/gpt2/tokenizer --prompt hello --max-new-tokens 3 --num-beams 2",
            "merge --model fixtures/gpt2/tiny-a --adapter fixtures/gpt2/peft-c_attn --out OUT",
        ];
        let encoder = [
            "train --model fixtures/encoder/roberta-a --data fixtures/train/sentiment.csv --max-steps 2 --batch-size 2 --out OUT",
            "eval --model fixtures/encoder/roberta-a --data fixtures/train/sentiment.csv",
            "train --model fixtures/encoder/bert-b --data fixtures/train/stsb.tsv --max-steps 2 --out OUT",
            "eval --model fixtures/encoder/bert-b --data fixtures/train/stsb.tsv",
        ];
        let line = if program == "gpt2-lora" {
            gpt2[command]
        } else {
            encoder[command]
        };
        let fixtures = root().join("fixtures");
        let fixtures = fixtures.to_str().unwrap();
        line.split(' ')
            .map(|w| w.replace("OUT", &out).replace("fixtures", fixtures))
            .collect()
    };
    let in_repo = |p: &str| root().join(p).to_str().unwrap().to_string();
    let bad_out = ["", "0", "99999999999999999999", "NaN"];
    let mut bad: Vec<String> = [
        "fixtures/missing",
        "README.md",
        "fixtures/train/e2e.txt",
        "fixtures/encoder/roberta-a",
        "fixtures/gpt2/tiny-b",
    ]
    .iter()
    .map(|p| in_repo(p))
    .collect();
    bad.extend(
        [
            "0",
            "-1",
            "1e309",
            "NaN",
            "99999999999999999999",
            "",
            "--json",
        ]
        .map(String::from),
    );
    let extra = [
        "--lr",
        "--r",
        "--seed",
        "--device",
        "--resume",
        "--overwrite",
        "--valid",
    ];
    let mut g = lora_train::sampler::SplitMix64::new(7);
    let mut pick = |n: usize| g.below(n as u64) as usize;
    let mut statuses = std::collections::BTreeMap::new();
    for program in ["gpt2-lora", "encoder-lora"] {
        let exe = match program {
            "gpt2-lora" => env!("CARGO_BIN_EXE_gpt2-lora"),
            _ => env!("CARGO_BIN_EXE_encoder-lora"),
        };
        for case in 0..cases {
            let mut args = base(program, pick(4));
            // One damage in most cases; some lines stay valid (status 0 must stay reachable).
            for _ in 0..usize::from(pick(5) != 0) {
                let i = 1 + pick(args.len() - 1);
                match pick(3) {
                    // An output directory only gets names that land in the temporary working
                    // directory: a fixture path there would overwrite the fixture.
                    0 if args[i] == out => args[i] = bad_out[pick(bad_out.len())].into(),
                    0 if !args[i].starts_with("--") => args[i] = bad[pick(bad.len())].clone(),
                    1 if args.len() > 2 => {
                        args.remove(i);
                    }
                    _ => {
                        args.push(extra[pick(extra.len())].into());
                        args.push(bad[pick(bad.len())].clone());
                    }
                }
            }
            let o = Command::new(exe)
                .args(&args)
                .current_dir(tmp.path())
                .output()
                .unwrap();
            let err = stderr(&o);
            let code = o.status.code();
            *statuses.entry(code).or_insert(0) += 1;
            assert!(
                !err.contains("panicked"),
                "{program} {args:?} (case {case}): {err}"
            );
            assert!(
                matches!(code, Some(0..=2)),
                "{program} {args:?}: {code:?} {err}"
            );
            if code == Some(1) {
                let errors = err.lines().filter(|l| l.starts_with("error")).count();
                assert_eq!(errors, 1, "{program} {args:?}: {err}");
            }
        }
    }
    eprintln!(
        "fuzz command lines: {} cases, exit statuses {statuses:?}",
        2 * cases
    );
}

/// A full disk during the saves of step 14 (the best adapter's, then the checkpoint's; the
/// per-file size limit of `ulimit -f`, with SIGXFSZ ignored, makes the first one fail with EFBIG
/// as ENOSPC would; a tmpfs would need mount rights CI may lack): one clear error line,
/// the previous checkpoint and adapters intact, no temporary directory left, and `--resume`
/// with room again ends bit-identical to an uninterrupted run.
#[cfg(unix)]
#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one() {
    let exe = env!("CARGO_BIN_EXE_gpt2-lora");
    let args = tiny_train_args;
    let reference = tempfile::tempdir().unwrap();
    let o = Command::new(exe)
        .args(args(reference.path(), &[]))
        .current_dir(root())
        .output();
    assert!(o.unwrap().status.success());
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(exe)
        .args(args(out.path(), &["--max-steps", "7"]))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // 4 KiB per file: the step-14 writes (adapters, optimizer state) do not fit.
    let limited = "trap '' XFSZ; ulimit -f 4; exec \"$0\" \"$@\"";
    let o = Command::new("bash")
        .arg("-c")
        .arg(limited)
        .arg(exe)
        .args(args(out.path(), &["--resume"]))
        .current_dir(root())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("File too large") || errors[0].contains("No space"),
        "{err}"
    );
    let checkpoints = lora_train::checkpoint::list_checkpoints(out.path()).unwrap();
    assert_eq!(checkpoints.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [7]);
    lora_train::TrainerState::load(&checkpoints[0].1).unwrap();
    for dir in ["adapter", "best"] {
        let d = out.path().join(dir);
        lora_core::read_safetensors(d.join("adapter_model.safetensors")).unwrap();
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = Command::new(exe)
        .args(args(out.path(), &["--resume"]))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter/adapter_model.safetensors"));
    assert!(adapter(out.path()).unwrap() == adapter(reference.path()).unwrap());
}

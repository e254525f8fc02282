//! `lora-bench`: LoRA vs full fine-tuning vs burn's `apply_lora`, and merged/unmerged
//! inference, on GPT-2 small and RoBERTa-base shapes, on every compiled device; optionally
//! PyTorch + PEFT in the same run. See the crate docs and `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use lora_bench::arch::{Arch, LoraShape, Size, Targets, TrainMode};
use lora_bench::measure::{InferRun, RunSpec, TrainRun, run_infer, run_train};
use lora_bench::report::{Report, Setup, TORCH_DEVICE, is_torch};
use lora_bench::{BenchError, Result};
use lora_core::device::{device_names, parse_device};
use lora_models::gpt2::MemoryOptions;
use serde::{Deserialize, Serialize};

/// Benchmark LoRA training and inference (random weights of real shapes; nothing downloaded).
#[derive(Parser, Debug)]
#[command(name = "lora-bench", version)]
struct Args {
    /// Architectures to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["gpt2", "roberta"])]
    arch: Vec<Arch>,
    /// Devices (default: every one compiled in; one without an adapter is reported, not fatal).
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Training modes.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["full", "lora", "burn-lora", "weight-lora"])]
    mode: Vec<TrainMode>,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Untimed warm-up steps per measurement.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Layers that get adapters: `attention` (the paper's: GPT-2 `c_attn`, RoBERTa
    /// `query`/`value`) or `all-linear` (every linear layer of the blocks).
    #[arg(long, value_enum, default_value = "attention")]
    targets: Targets,
    /// Vocabulary size instead of the real one (50257 / 50265), for a smaller head. Not needed
    /// for small GPU limits: a table above the adapter's per-tensor limit (lavapipe: 128 MiB)
    /// is stored in row blocks.
    #[arg(long)]
    vocab: Option<usize>,
    /// GPT-2: activation checkpointing per block in the training step (our modes only).
    #[arg(long)]
    checkpointing: bool,
    /// GPT-2: compute the LM head and loss this many target positions at a time, forward and
    /// backward per chunk, so the full logits never exist (our modes only).
    #[arg(long, value_name = "TOKENS")]
    loss_chunk: Option<usize>,
    /// `real` shapes, or `tiny` ones for a quick check of the pipeline.
    #[arg(long, value_enum, default_value = "real")]
    size: Size,
    /// Skip the inference comparison.
    #[arg(long)]
    no_infer: bool,
    /// Skip training (inference only).
    #[arg(long)]
    no_train: bool,
    /// Python interpreter with torch, transformers and peft: also run `scripts/bench_torch.py`
    /// on the same shapes, in this run, and compare.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<PathBuf>,
    /// The PyTorch script (default: the workspace's `scripts/bench_torch.py`).
    #[arg(long)]
    torch_script: Option<PathBuf>,
    /// Threads PyTorch may use (default: the number of CPUs, as burn's CPU backends use).
    #[arg(long)]
    torch_threads: Option<usize>,
    /// Write the report as JSON here.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Also write the Markdown tables here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Run measurements in this process instead of one child process each (faster to start,
    /// but every peak-memory figure then includes the runs before it).
    #[arg(long)]
    in_process: bool,
    /// Internal: run one measurement (JSON task) and print its result as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// One measurement, as handed to a child process.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    spec: RunSpec,
    /// `None`: the inference comparison.
    mode: Option<TrainMode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Outcome {
    Train(TrainRun),
    Infer(InferRun),
}

fn run_task(task: &Task) -> Result<Outcome> {
    let device = parse_device(&task.spec.device)?;
    Ok(match task.mode {
        Some(mode) => Outcome::Train(run_train(&task.spec, mode, &device)?),
        None => Outcome::Infer(run_infer(&task.spec, &device)?),
    })
}

/// Runs `task` in a fresh process of this program, so its peak memory is its own.
fn run_child(task: &Task) -> Result<Outcome> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(task)?)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    if !out.status.success() {
        let why = if last.is_empty() {
            format!("exit status {}", out.status)
        } else {
            last.to_string()
        };
        return Err(BenchError::Invalid(why));
    }
    Ok(serde_json::from_str(last)?)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
}

fn git_commit() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rev = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    if !rev.status.success() {
        return None;
    }
    let mut commit = String::from_utf8_lossy(&rev.stdout).trim().to_string();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str("-dirty");
    }
    Some(commit)
}

/// What `scripts/bench_torch.py` writes.
#[derive(Debug, Deserialize)]
struct TorchResults {
    setup: serde_json::Value,
    train: Vec<TrainRun>,
    infer: Vec<InferRun>,
    #[serde(default)]
    failures: Vec<String>,
}

/// `scripts/bench_torch.py`'s arguments for the same runs as ours (`--json` aside).
fn torch_args(args: &Args) -> Vec<String> {
    let threads = args
        .torch_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let archs: Vec<&str> = args.arch.iter().map(|a| a.name()).collect();
    let modes: Vec<&str> = args
        .mode
        .iter()
        .filter(|m| matches!(m, TrainMode::Full | TrainMode::Lora))
        .map(|m| m.name())
        .collect();
    let size = if args.size == Size::Tiny {
        "tiny"
    } else {
        "real"
    };
    let mut out: Vec<String> = [
        ("--arch", archs.join(",")),
        ("--mode", modes.join(",")),
        ("--batch", args.batch.to_string()),
        ("--seq", args.seq.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--steps", args.steps.to_string()),
        ("--r", args.r.to_string()),
        ("--alpha", args.alpha.to_string()),
        ("--threads", threads.to_string()),
        ("--targets", args.targets.name().to_string()),
        ("--size", size.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    out.extend(args.vocab.map(|v| format!("--vocab={v}")));
    if args.no_infer {
        out.push("--no-infer".into());
    }
    if args.no_train {
        out.push("--no-train".into());
    }
    out
}

fn run_torch(args: &Args, python: &Path) -> Result<TorchResults> {
    let script = args
        .torch_script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_torch.py"));
    if !script.is_file() {
        return Err(BenchError::Invalid(format!(
            "PyTorch script {} not found",
            script.display()
        )));
    }
    let out_file =
        std::env::temp_dir().join(format!("lora-bench-torch-{}.json", std::process::id()));
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(torch_args(args))
        .arg("--json")
        .arg(&out_file);
    eprintln!("PyTorch + PEFT reference: {}", script.display());
    let status = cmd
        .stderr(Stdio::inherit())
        .stdout(Stdio::inherit())
        .status();
    let status =
        status.map_err(|e| BenchError::Invalid(format!("running {}: {e}", python.display())))?;
    if !status.success() {
        return Err(BenchError::Invalid(format!(
            "{} exited with {status}",
            script.display()
        )));
    }
    let text = std::fs::read_to_string(&out_file)?;
    let _ = std::fs::remove_file(&out_file);
    Ok(serde_json::from_str(&text)?)
}

fn run(args: Args) -> Result<()> {
    if let Some(task) = &args.child {
        let task: Task = serde_json::from_str(task)?;
        let outcome = run_task(&task)?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    if args.batch == 0 || args.seq < 2 || args.steps == 0 || args.r == 0 {
        return Err(BenchError::Invalid(
            "--batch, --steps and --r must be at least 1 and --seq at least 2".into(),
        ));
    }
    let devices = if args.device.is_empty() {
        device_names()
            .into_iter()
            .filter(|d| ["flex", "ndarray", "wgpu"].contains(d))
            .map(String::from)
            .collect()
    } else {
        args.device.clone()
    };
    let mut report = new_report(&args);
    for &arch in &args.arch {
        for device in &devices {
            // Probe once in this process: a missing GPU is a line in the report, not an error.
            match parse_device(device) {
                Ok(_) => measure_device(&args, arch, device, &mut report),
                Err(e) => (report.failures).push(format!("{} on {device}: {e}", arch.label())),
            }
        }
    }
    if let Some(python) = &args.torch {
        add_torch(&args, python, &mut report);
    }
    report.compute_ratios();
    let table = report.table();
    println!("{table}");
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", args.json.display());
    if let Some(md) = &args.markdown {
        std::fs::write(md, &table)?;
        eprintln!("wrote {}", md.display());
    }
    Ok(())
}

/// An empty report describing this run's setup.
fn new_report(args: &Args) -> Report {
    Report {
        setup: Setup {
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            commit: git_commit(),
            batch: args.batch,
            seq: args.seq,
            warmup: args.warmup,
            steps: args.steps,
            lora: Some(lora_shape(args)),
            targets: Some(args.targets),
            vocab: args.vocab,
            size: Some(args.size),
            torch: None,
        },
        ..Report::default()
    }
}

fn lora_shape(args: &Args) -> LoraShape {
    LoraShape {
        r: args.r,
        alpha: args.alpha,
    }
}

/// Every requested training mode (and inference) of `arch` on `device`, each in its own
/// process unless `--in-process`; a failure is a line in the report.
fn measure_device(args: &Args, arch: Arch, device: &str, report: &mut Report) {
    let spec = RunSpec {
        arch,
        size: args.size,
        device: device.to_string(),
        batch: args.batch,
        seq: args.seq,
        warmup: args.warmup,
        steps: args.steps,
        lora: lora_shape(args),
        targets: args.targets,
        vocab: args.vocab,
        memory: MemoryOptions {
            checkpoint_blocks: args.checkpointing,
            loss_chunk: args.loss_chunk,
        },
    };
    let mut tasks: Vec<Option<TrainMode>> = Vec::new();
    if !args.no_train {
        tasks.extend(args.mode.iter().copied().map(Some));
    }
    if !args.no_infer {
        tasks.push(None);
    }
    for mode in tasks {
        let task = Task {
            spec: spec.clone(),
            mode,
        };
        let what = mode.map_or("inference", TrainMode::name);
        eprintln!("{} on {device}: {what}", arch.label());
        let outcome = match args.in_process {
            true => run_task(&task),
            false => run_child(&task),
        };
        match outcome {
            Ok(Outcome::Train(r)) => report.train.push(r),
            Ok(Outcome::Infer(r)) => report.infer.push(r),
            Err(e) => {
                let line = format!(
                    "{} on {device}, {what}: {}",
                    arch.label(),
                    first_line(&e.to_string())
                );
                eprintln!("  failed: {line}");
                report.failures.push(line);
            }
        }
    }
}

/// PyTorch + PEFT's rows (`scripts/bench_torch.py` run by `python`), or a failure line.
fn add_torch(args: &Args, python: &Path, report: &mut Report) {
    match run_torch(args, python) {
        Ok(t) => {
            report.setup.torch = Some(t.setup);
            // The script names its device (`torch-cpu`, `torch-cuda`); anything else is
            // labelled as the CPU reference.
            let label = |d: String| if is_torch(&d) { d } else { TORCH_DEVICE.into() };
            report.train.extend(t.train.into_iter().map(|mut r| {
                r.device = label(r.device);
                r
            }));
            report.infer.extend(t.infer.into_iter().map(|mut r| {
                r.device = label(r.device);
                r
            }));
            report.failures.extend(t.failures);
        }
        Err(e) => report
            .failures
            .push(format!("PyTorch reference: {}", first_line(&e.to_string()))),
    }
}

fn main() -> ExitCode {
    lora_train::malloc::reuse_freed_memory();
    let args = Args::parse();
    let child = args.child.is_some();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = first_line(&e.to_string());
            if child {
                // The parent reads the last stdout line as the reason.
                println!("{line}");
            } else {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

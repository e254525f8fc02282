//! Adapter-only checkpoints, written atomically, with everything exact resume needs.
//!
//! A checkpoint is a directory `<output_dir>/checkpoint-<step>/` holding:
//!
//! | file | contents |
//! |---|---|
//! | `adapter_config.json`, `adapter_model.safetensors` | the adapter in PEFT's format (loads in PEFT) |
//! | `trainable.safetensors` | every trainable tensor by burn path, exactly as trained (what resume loads) |
//! | `optimizer.safetensors` | AdamW moments by parameter path, step counts in the metadata |
//! | `trainer_state.json` | step, epoch, position in the epoch's data order, seed, best metric, early-stopping count ([`TrainerState`]) |
//!
//! It is first written as `checkpoint-<step>.tmp/` and renamed into place once complete, so a
//! crash mid-write leaves at most a `.tmp` directory next to the previous checkpoints, which
//! stay loadable; `.tmp` directories are ignored when looking for checkpoints and removed when
//! training starts. Only the newest `save_total_limit` checkpoints are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// `trainer_state.json`.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// `trainable.safetensors`.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// `optimizer.safetensors`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Where training stands: everything besides tensors that exact resume needs.
///
/// Randomness needs no saved generator state: the device RNG is reseeded before every
/// micro-batch from `(seed, step, micro-batch)` (dropout masks), and each epoch's data order is
/// a permutation derived from `(seed, epoch)` ([`epoch_order`](crate::sampler::epoch_order)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Checkpoint layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Optimizer steps done.
    pub global_step: usize,
    /// The current epoch (0-based).
    pub epoch: usize,
    /// Micro-batches of the current epoch's order already consumed.
    pub batch_in_epoch: usize,
    /// Optimizer steps the schedule spans.
    pub total_steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Whether epochs are shuffled.
    pub shuffle: bool,
    /// Whether batches are length-grouped.
    pub group_by_length: bool,
    /// Number of training examples.
    pub train_len: usize,
    /// Fingerprint of the training data (hex).
    pub data_fingerprint: String,
    /// How randomness is derived (documentation for readers of the file).
    pub rng: String,
    /// The metric tracked for the best checkpoint.
    pub metric_for_best: String,
    /// Best value of that metric so far.
    pub best_metric: Option<f64>,
    /// Step at which it was reached.
    pub best_step: Option<usize>,
    /// Evaluations since the last improvement (early stopping).
    pub evals_without_improvement: usize,
    /// Examples seen.
    pub samples_seen: u64,
    /// Tokens seen.
    pub tokens_seen: u64,
    /// Learning rate of the last step.
    pub last_learning_rate: f64,
    /// Training loss of the last step.
    pub last_loss: Option<f64>,
    /// Training time so far, seconds (all runs together).
    pub elapsed_secs: f64,
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(TRAINER_STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(TrainError::io("cannot read", &path))?;
        let state: Self = serde_json::from_str(&text).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        if state.format != FORMAT_VERSION {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "layout version {} (this build reads {FORMAT_VERSION})",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// Writes `dir/trainer_state.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TRAINER_STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        lora_core::io::write_atomic(&path, text.as_bytes())?;
        Ok(())
    }
}

/// The directory name of the checkpoint at `step`.
pub fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Creates directory `target` atomically: `fill` writes into `<target>.tmp/`, which is then
/// renamed to `target` (replacing an older `target`). If `fill` fails, the temporary directory
/// is removed and `target` is untouched.
pub fn write_dir_atomic(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(target);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io("cannot remove", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io("cannot create", &tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fault_injection_pause();
    // Replacing a directory is two renames; in between, `old` still holds the previous copy
    // (and `remove_stale` puts it back if the process dies there).
    let old = target.with_extension("old");
    if target.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(TrainError::io("cannot remove", &old))?;
        }
        std::fs::rename(target, &old).map_err(TrainError::io("cannot rename", target))?;
        fault_injection_pause();
    }
    std::fs::rename(&tmp, target).map_err(TrainError::io("cannot rename", &tmp))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(TrainError::io("cannot remove", &old))?;
    }
    if let Some(parent) = target.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        // Make the rename durable where the platform allows syncing a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Test hook for fault-injection tests: `LORA_BURN_SAVE_DELAY_MS` makes every atomic
/// directory write pause that long after writing and between its renames, so that a `kill -9`
/// can be made to land inside one. Unset (always, outside such tests), it costs nothing.
fn fault_injection_pause() {
    static DELAY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("LORA_BURN_SAVE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(ms) = delay {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}

fn tmp_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    target.with_file_name(name)
}

/// Writes checkpoint `step` under `output_dir` with [`write_dir_atomic`]; `fill` must write
/// [`TRAINER_STATE_FILE`] (last), since a directory without it is not a checkpoint.
pub fn save_checkpoint(
    output_dir: &Path,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let target = output_dir.join(checkpoint_name(step));
    write_dir_atomic(&target, |dir| {
        fill(dir)?;
        if !dir.join(TRAINER_STATE_FILE).exists() {
            return Err(TrainError::Checkpoint {
                path: target.clone(),
                reason: format!("{TRAINER_STATE_FILE} was not written"),
            });
        }
        Ok(())
    })?;
    Ok(target)
}

/// The complete checkpoints under `output_dir` (`checkpoint-<step>` directories holding a
/// [`TRAINER_STATE_FILE`]), oldest first. `.tmp` leftovers are ignored.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(output_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(TrainError::Io {
                action: "cannot list",
                path: output_dir.to_path_buf(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path.join(TRAINER_STATE_FILE).is_file() {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint under `output_dir`, if any.
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop().map(|(_, p)| p))
}

/// Deletes all but the newest `keep` checkpoints (at least one is always kept).
pub fn prune_checkpoints(output_dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(output_dir)?;
    let n = all.len().saturating_sub(keep.max(1));
    for (_, path) in all.into_iter().take(n) {
        std::fs::remove_dir_all(&path).map_err(TrainError::io("cannot remove", &path))?;
    }
    Ok(())
}

/// Cleans up after interrupted writes under `output_dir`: `*.tmp` directories are removed; an
/// `X.old` whose `X` is missing (the process died between the two renames of a replacement)
/// is put back as `X`, other `*.old` are removed.
pub fn remove_stale(output_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("old") if !path.with_extension("").exists() => {
                let target = path.with_extension("");
                std::fs::rename(&path, &target).map_err(TrainError::io("cannot rename", &path))?;
            }
            Some("tmp" | "old") => {
                std::fs::remove_dir_all(&path).map_err(TrainError::io("cannot remove", &path))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replacement killed between its renames leaves only `X.old`: it comes back as `X`.
    #[test]
    fn stale_leftovers_are_removed_or_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for d in ["adapter.old", "best", "best.old", "checkpoint-3.tmp"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("adapter.old").join("a"), "kept").unwrap();
        remove_stale(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(p("adapter").join("a")).unwrap(),
            "kept"
        );
        assert!(p("best").exists() && !p("best.old").exists() && !p("checkpoint-3.tmp").exists());
    }

    fn state(step: usize) -> TrainerState {
        TrainerState {
            format: FORMAT_VERSION,
            global_step: step,
            epoch: 0,
            batch_in_epoch: step,
            total_steps: 10,
            seed: 1,
            batch_size: 2,
            gradient_accumulation_steps: 1,
            shuffle: true,
            group_by_length: false,
            train_len: 20,
            data_fingerprint: "0".into(),
            rng: String::new(),
            metric_for_best: "loss".into(),
            best_metric: None,
            best_step: None,
            evals_without_improvement: 0,
            samples_seen: 0,
            tokens_seen: 0,
            last_learning_rate: 0.0,
            last_loss: None,
            elapsed_secs: 0.0,
        }
    }

    #[test]
    fn atomic_checkpoints_survive_failed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for step in [1, 2, 3] {
            save_checkpoint(out, step, |d| state(step).save(d)).unwrap();
        }
        prune_checkpoints(out, 2).unwrap();
        let steps: Vec<usize> = list_checkpoints(out)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![2, 3]);

        // A write that fails half-way leaves the previous checkpoints as they were.
        let err = save_checkpoint(out, 4, |d| {
            std::fs::write(d.join("adapter_model.safetensors"), b"partial").unwrap();
            Err(TrainError::config("simulated", "crash"))
        });
        assert!(err.is_err());
        assert!(
            !out.join("checkpoint-4.tmp").exists(),
            "temporary directory removed"
        );
        // A process killed mid-write leaves its .tmp directory behind: it is ignored.
        std::fs::create_dir_all(out.join("checkpoint-5.tmp")).unwrap();
        std::fs::write(
            out.join("checkpoint-5.tmp").join(TRAINER_STATE_FILE),
            b"{trunc",
        )
        .unwrap();
        let latest = latest_checkpoint(out).unwrap().unwrap();
        assert_eq!(latest, out.join("checkpoint-3"));
        assert_eq!(TrainerState::load(&latest).unwrap(), state(3));
        remove_stale(out).unwrap();
        assert!(!out.join("checkpoint-5.tmp").exists());

        // Saving the same step again replaces it.
        save_checkpoint(out, 3, |d| state(30).save(d)).unwrap();
        assert_eq!(
            TrainerState::load(&out.join("checkpoint-3"))
                .unwrap()
                .global_step,
            30
        );
        // A fill that forgets the state file is refused.
        assert!(save_checkpoint(out, 6, |_| Ok(())).is_err());
        assert!(!out.join("checkpoint-6").exists());
    }
}

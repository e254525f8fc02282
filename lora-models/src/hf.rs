//! Reading Hugging Face model directories: `config.json`, and weights from `model.safetensors`,
//! sharded `model.safetensors.index.json`, or `pytorch_model.bin`, all converted to f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lora_core::io::HostTensor;

use crate::error::{ModelError, Result};

/// Reads `config.json` of a model directory (or the given file) as JSON.
pub fn read_config_json(path: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        return Err(ModelError::MissingFile {
            what: "model config",
            dir: path.to_path_buf(),
            looked_for: "config.json".into(),
        });
    }
    let text = std::fs::read_to_string(&file).map_err(|e| ModelError::Config {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    let value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    Ok((file, value))
}

/// The weights file(s) of a model directory, in the order Hugging Face prefers them.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Config {
            path: index.clone(),
            reason: e.to_string(),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.clone(),
            reason: e.to_string(),
        })?;
        return shard_files(dir, &index, &v);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok(vec![bin]);
    }
    Err(ModelError::MissingFile {
        what: "model weights",
        dir: dir.to_path_buf(),
        looked_for: "model.safetensors, model.safetensors.index.json, pytorch_model.bin".into(),
    })
}

/// The shard files a `model.safetensors.index.json` names: a non-empty `weight_map` whose
/// values are plain file names inside `dir` (never a path that leaves it).
fn shard_files(dir: &Path, index: &Path, v: &serde_json::Value) -> Result<Vec<PathBuf>> {
    let bad = |reason: String| ModelError::Config {
        path: index.to_path_buf(),
        reason,
    };
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    if map.is_empty() {
        return Err(bad("`weight_map` is empty: it names no shard".into()));
    }
    let mut files = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let name = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name: {file}")))?;
        let plain = Path::new(name)
            .file_name()
            .is_some_and(|f| f == std::ffi::OsStr::new(name));
        if !plain {
            return Err(bad(format!(
                "`weight_map.{tensor}` = {name:?} is not a file name inside the model directory"
            )));
        }
        files.push(dir.join(name));
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Every tensor of the model directory's weights, as f32, keyed as in the file.
pub fn read_weights(dir: &Path) -> Result<(PathBuf, HashMap<String, HostTensor>)> {
    let files = weight_files(dir)?;
    let mut all = HashMap::new();
    for file in &files {
        let part = if file.extension().is_some_and(|e| e == "bin") {
            read_pytorch(file)?
        } else {
            lora_core::read_safetensors(file)?
        };
        all.extend(part);
    }
    Ok((files[0].clone(), all))
}

/// An output layer tied to the input embeddings (GPT-2's LM head, the masked-LM decoder). A
/// config that unties it (`tie_word_embeddings: false`) is honoured only when the file's
/// `head_key` holds the same values as the table (`is_table` finds its key): an untied head is
/// not implemented, and ignoring it would give other outputs than transformers. Tied, the file's
/// copy is ignored, as transformers ignores it.
pub(crate) fn check_untied_head(
    tied: bool,
    state: &HashMap<String, HostTensor>,
    head_key: &str,
    is_table: impl Fn(&str) -> bool,
    path: &Path,
) -> Result<()> {
    if tied {
        return Ok(());
    }
    let Some(head) = state.get(head_key) else {
        return Err(ModelError::MissingTensor {
            path: path.to_path_buf(),
            key: format!("{head_key} (tie_word_embeddings is false)"),
        });
    };
    let table = state.iter().find(|(k, _)| is_table(k)).map(|(_, t)| t);
    if table == Some(head) {
        return Ok(());
    }
    Err(ModelError::Config {
        path: path.to_path_buf(),
        reason: format!(
            "`tie_word_embeddings` is false and `{head_key}` differs from the input embeddings: \
             an untied output layer is not implemented"
        ),
    })
}

/// The error for a checkpoint tensor of the model's own architecture that nothing reads: an
/// option that is not implemented, which would otherwise be silently ignored.
pub(crate) fn unread_tensor(path: PathBuf, key: &str) -> ModelError {
    ModelError::Config {
        path,
        reason: format!(
            "`{key}` is part of the model but nothing here reads it (an architecture option \
             that is not implemented)"
        ),
    }
}

/// Reads a PyTorch pickle state dict (`pytorch_model.bin`) through burn-store's reader.
pub fn read_pytorch(path: &Path) -> Result<HashMap<String, HostTensor>> {
    lora_core::io::read_pytorch(path).map_err(|e| match e {
        lora_core::LoraError::Pickle { path, reason } => ModelError::Pickle { path, reason },
        other => other.into(),
    })
}

//! Hugging Face hub ids for `--model` and `--data`.
//!
//! What an argument names, and which files of a hub repository to fetch, is decided here
//! without the network (and tested offline). Downloading needs the `hub` cargo feature
//! (`hf-hub`'s blocking API, files cached under `$HF_HOME`, as Python's `huggingface_hub`);
//! without it a hub id is refused with one line that says how to pass local files instead.
//!
//! Datasets: `--data owner/name` selects the data files of one split (`owner/name:split` picks
//! another; the default depends on the flag: `train` for `--data` of `train`, `validation` for
//! `--valid` and `eval`). JSONL, CSV and TSV files are used as they are (shards joined into one
//! file); Parquet files (how the hub stores most datasets, e.g. `stanfordnlp/sst2`) are
//! converted to JSONL, one object per row.

use std::path::Path;

/// Data-file extensions read from a dataset repository, in order of preference (formats the
/// readers take directly come before Parquet, which needs a conversion).
pub const DATA_EXTENSIONS: [&str; 4] = ["jsonl", "csv", "tsv", "parquet"];

/// Extensions that make an argument a local file name rather than a hub id.
const LOCAL_EXTENSIONS: [&str; 9] = [
    "jsonl",
    "json",
    "ndjson",
    "csv",
    "tsv",
    "tab",
    "txt",
    "parquet",
    "safetensors",
];

/// Whether `s` has the shape of a hub repository id: `name` or `owner/name`, each part of
/// ASCII letters, digits, `-`, `_` and `.`, not starting or ending with `-` or `.`, no `..`,
/// at most 96 characters. Local paths such as `./gpt2`, `/abs/dir` or `a/b/c` are not.
pub fn is_repo_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("..")
    };
    let parts: Vec<&str> = s.split('/').collect();
    s.len() <= 96 && (1..=2).contains(&parts.len()) && parts.iter().all(|p| part_ok(p))
}

/// A dataset on the hub and the split to read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    /// `owner/name`.
    pub repo: String,
    /// `train`, `validation`, `test`, or any split name the repository's files use.
    pub split: String,
}

/// Reads `owner/name` or `owner/name:split` as a hub dataset (`None` when `arg` looks like a
/// local file: it has a data-file extension or is not a repository id).
pub fn parse_dataset(arg: &str, default_split: &str) -> Option<DatasetRef> {
    let (repo, split) = match arg.rsplit_once(':') {
        Some((r, s)) if !s.is_empty() && !s.contains('/') => (r, s),
        _ => (arg, default_split),
    };
    let ext = Path::new(repo)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.is_some_and(|e| LOCAL_EXTENSIONS.contains(&e.as_str())) || !is_repo_id(repo) {
        return None;
    }
    Some(DatasetRef {
        repo: repo.to_string(),
        split: split.to_string(),
    })
}

/// Names a split goes by in file names (`validation` is often `valid`, `val` or `dev`).
fn split_aliases(split: &str) -> Vec<String> {
    let s = split.to_ascii_lowercase();
    match s.as_str() {
        "validation" | "valid" | "val" | "dev" => {
            vec![
                "validation".into(),
                "valid".into(),
                "val".into(),
                "dev".into(),
            ]
        }
        _ => vec![s],
    }
}

/// Whether a path component names the split: `train`, `train.csv`, `train-00000-of-00002`,
/// `train_1` (but not `training` or `trainer`).
fn names_split(component: &str, aliases: &[String]) -> bool {
    let c = component.to_ascii_lowercase();
    aliases.iter().any(|a| {
        c == *a
            || c.strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with(['-', '_', '.']))
    })
}

fn extension(file: &str) -> Option<String> {
    Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// The files of `split` among a dataset repository's files (`siblings`, paths relative to the
/// repository), sorted so shards keep their order, all of one format (the first of
/// [`DATA_EXTENSIONS`] present). A repository with a single data file serves it for `train`.
/// The error lists what the repository holds.
pub fn dataset_files(siblings: &[String], split: &str) -> Result<Vec<String>, String> {
    let data: Vec<&String> = siblings
        .iter()
        .filter(|f| extension(f).is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str())))
        .collect();
    let aliases = split_aliases(split);
    let mut of_split: Vec<&String> = data
        .iter()
        .copied()
        .filter(|f| f.split('/').any(|c| names_split(c, &aliases)))
        .collect();
    if of_split.is_empty() && data.len() == 1 && split == "train" {
        of_split = data.clone();
    }
    let Some(ext) = DATA_EXTENSIONS.iter().find(|e| {
        of_split
            .iter()
            .any(|f| extension(f).as_deref() == Some(**e))
    }) else {
        let listing = if data.is_empty() {
            "no .jsonl, .csv, .tsv or .parquet files".to_string()
        } else {
            let names: Vec<&str> = data.iter().take(8).map(|s| s.as_str()).collect();
            format!("data files: {}", names.join(", "))
        };
        return Err(format!("no data files for split `{split}` ({listing})"));
    };
    let mut files: Vec<String> = of_split
        .into_iter()
        .filter(|f| extension(f).as_deref() == Some(*ext))
        .cloned()
        .collect();
    files.sort();
    Ok(files)
}

/// Files of a model repository worth fetching: `config.json`, the weights (`model.safetensors`,
/// else the sharded safetensors with their index, else `pytorch_model.bin`) and the tokenizer
/// and pooling files present. Errors when the config or the weights are missing.
pub fn model_files(siblings: &[String]) -> Result<Vec<String>, String> {
    let has = |f: &str| siblings.iter().any(|s| s == f);
    if !has("config.json") {
        return Err("the repository has no config.json".into());
    }
    let mut files = vec!["config.json".to_string()];
    if has("model.safetensors") {
        files.push("model.safetensors".into());
    } else if has("model.safetensors.index.json") {
        files.push("model.safetensors.index.json".into());
        let mut shards: Vec<String> = siblings
            .iter()
            .filter(|s| s.starts_with("model-") && s.ends_with(".safetensors"))
            .cloned()
            .collect();
        shards.sort();
        files.extend(shards);
    } else if has("pytorch_model.bin") {
        files.push("pytorch_model.bin".into());
    } else {
        return Err(
            "the repository has no model.safetensors, sharded safetensors or pytorch_model.bin"
                .into(),
        );
    }
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        if has(f) {
            files.push(f.into());
        }
    }
    Ok(files)
}

#[cfg(feature = "hub")]
mod online {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    use super::{DatasetRef, dataset_files, extension, model_files};

    /// One line: hf-hub's and ureq's errors can span lines.
    fn one_line(e: impl std::fmt::Display) -> String {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn api() -> Result<Api, String> {
        ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| format!("cannot set up the Hugging Face hub client: {}", one_line(e)))
    }

    fn fetch(repo: &ApiRepo, files: &[String]) -> Result<Vec<PathBuf>, String> {
        files
            .iter()
            .map(|f| {
                repo.get(f)
                    .map_err(|e| format!("cannot download {f}: {}", one_line(e)))
            })
            .collect()
    }

    /// Downloads (or finds in the cache) a model repository's config, weights and tokenizer
    /// files; returns the local snapshot directory holding them.
    pub fn download_model(id: &str) -> Result<PathBuf, String> {
        let api = api()?;
        let repo = api.model(id.to_string());
        let siblings: Vec<String> = match repo.info() {
            Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
            Err(e) => {
                // Offline: a complete earlier download in the cache still works.
                let cached = Cache::from_env().model(id.to_string()).get("config.json");
                if let Some(dir) = cached.as_deref().and_then(Path::parent)
                    && lora_models::hf::weight_files(dir).is_ok()
                {
                    return Ok(dir.to_path_buf());
                }
                return Err(format!(
                    "cannot reach the Hugging Face hub: {}",
                    one_line(e)
                ));
            }
        };
        let files = model_files(&siblings)?;
        let paths = fetch(&repo, &files)?;
        paths
            .first()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .ok_or_else(|| "the download returned no files".to_string())
    }

    /// Downloads the files of one split of a dataset repository and returns one local file
    /// the data readers take: the file itself, the shards joined, or Parquet converted to
    /// JSONL (written beside the downloaded files in the cache).
    pub fn download_dataset(d: &DatasetRef) -> Result<PathBuf, String> {
        let api = api()?;
        let repo = api.repo(Repo::new(d.repo.clone(), RepoType::Dataset));
        let info = repo
            .info()
            .map_err(|e| format!("cannot reach the Hugging Face hub: {}", one_line(e)))?;
        let siblings: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let files = dataset_files(&siblings, &d.split)?;
        let paths = fetch(&repo, &files)?;
        let ext = files.first().and_then(|f| extension(f)).unwrap_or_default();
        let dir = paths
            .first()
            .and_then(|p| p.parent())
            .ok_or_else(|| "the download returned no files".to_string())?;
        match (ext.as_str(), paths.as_slice()) {
            ("parquet", _) => {
                let out = dir.join(format!("lora-burn-{}.jsonl", d.split));
                parquet_to_jsonl(&paths, &out)?;
                Ok(out)
            }
            (_, [single]) => Ok(single.clone()),
            _ => {
                let out = dir.join(format!("lora-burn-{}.{ext}", d.split));
                join_shards(&paths, &out, ext != "jsonl")?;
                Ok(out)
            }
        }
    }

    /// Concatenates text shards; with `header`, every shard after the first loses its first
    /// line (the CSV/TSV header).
    pub fn join_shards(paths: &[PathBuf], out: &Path, header: bool) -> Result<(), String> {
        let mut text = String::new();
        for (i, p) in paths.iter().enumerate() {
            let s = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let body = if header && i > 0 {
                s.split_once('\n').map_or("", |(_, rest)| rest)
            } else {
                s.as_str()
            };
            text.push_str(body);
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
        }
        lora_core::io::write_atomic(out, text.as_bytes()).map_err(one_line)
    }

    /// Writes every row of the Parquet files as one JSON object per line (column name →
    /// value); returns the number of rows. Snappy-compressed and uncompressed files are read
    /// (the hub's own Parquet conversion uses Snappy).
    pub fn parquet_to_jsonl(paths: &[PathBuf], out: &Path) -> Result<usize, String> {
        let mut buf = Vec::new();
        let mut rows = 0;
        for p in paths {
            // The parquet crate panics on some malformed files (bad page headers, offsets):
            // its panic becomes an error naming the file.
            let converted = std::panic::catch_unwind(|| parquet_rows(p)).map_err(|_| {
                format!(
                    "{}: malformed Parquet file (the reader panicked)",
                    p.display()
                )
            })??;
            buf.extend_from_slice(&converted.0);
            rows += converted.1;
        }
        lora_core::io::write_atomic(out, &buf).map_err(one_line)?;
        Ok(rows)
    }

    /// One Parquet file's rows as JSON lines, and their count.
    fn parquet_rows(p: &Path) -> Result<(Vec<u8>, usize), String> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let file =
            std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let reader = SerializedFileReader::new(file).map_err(|e| {
            format!(
                "{}: not a readable Parquet file: {}",
                p.display(),
                one_line(e)
            )
        })?;
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| format!("{}: {}", p.display(), one_line(e)))?;
        let (mut buf, mut rows) = (Vec::new(), 0);
        for row in iter {
            let row = row.map_err(|e| format!("{}: {}", p.display(), one_line(e)))?;
            writeln!(buf, "{}", row.to_json_value())
                .map_err(|e| format!("cannot convert {}: {e}", p.display()))?;
            rows += 1;
        }
        Ok((buf, rows))
    }
}

#[cfg(feature = "hub")]
pub use online::{download_dataset, download_model, join_shards, parquet_to_jsonl};

#[cfg(test)]
mod tests {
    use super::*;

    /// Damaged copies of the committed Parquet sample convert or give an error naming the file,
    /// never a panic (`LORA_FUZZ_CASES`, default 150).
    #[cfg(feature = "hub")]
    #[test]
    fn malformed_parquet_is_an_error() {
        let cases: usize = std::env::var("LORA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(150);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let bytes = std::fs::read(root.join("fixtures/hub/sst2-sample.parquet")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (path, out) = (dir.path().join("x.parquet"), dir.path().join("x.jsonl"));
        let mut g = lora_train::sampler::SplitMix64::new(11);
        let mut converted = 0;
        for _ in 0..cases {
            let mut b = bytes.clone();
            for _ in 0..1 + g.below(6) {
                let i = g.below(b.len() as u64) as usize;
                b[i] ^= 1 << g.below(8);
            }
            if g.below(4) == 0 {
                b.truncate(g.below(b.len() as u64) as usize);
            }
            std::fs::write(&path, &b).unwrap();
            match parquet_to_jsonl(std::slice::from_ref(&path), &out) {
                Ok(_) => converted += 1,
                Err(e) => assert!(e.contains("x.parquet"), "{e}"),
            }
        }
        eprintln!("fuzz parquet: {cases} cases, {converted} converted, 0 panics");
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn repo_ids_and_paths() {
        for id in [
            "gpt2",
            "roberta-base",
            "stanfordnlp/sst2",
            "sentence-transformers/all-MiniLM-L6-v2",
        ] {
            assert!(is_repo_id(id), "{id}");
        }
        for p in [
            "./gpt2", "/abs/dir", "a/b/c", "../x", "", "a//b", "-x", "x.", "a/..b",
        ] {
            assert!(!is_repo_id(p), "{p}");
        }
    }

    #[test]
    fn dataset_arguments() {
        assert_eq!(
            parse_dataset("stanfordnlp/sst2", "train"),
            Some(DatasetRef {
                repo: "stanfordnlp/sst2".into(),
                split: "train".into()
            })
        );
        assert_eq!(
            parse_dataset("stanfordnlp/sst2:validation", "train").map(|d| d.split),
            Some("validation".into())
        );
        // Local-looking names are never hub ids.
        for local in [
            "train.csv",
            "data/train.jsonl",
            "fixtures/train/e2e.txt",
            "/abs/x",
            "a/b/c",
        ] {
            assert_eq!(parse_dataset(local, "train"), None, "{local}");
        }
    }

    #[test]
    fn picks_the_split_files() {
        let sst2 = names(&[
            ".gitattributes",
            "README.md",
            "data/train-00000-of-00001.parquet",
            "data/validation-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
        ]);
        assert_eq!(
            dataset_files(&sst2, "validation").unwrap(),
            names(&["data/validation-00000-of-00001.parquet"])
        );
        let shards = names(&[
            "plain_text/train-00001-of-00002.parquet",
            "plain_text/train-00000-of-00002.parquet",
            "plain_text/train.csv",
            "plain_text/dev.csv",
            "training_args.jsonl",
        ]);
        // CSV is preferred over Parquet; `training_args` is not the train split.
        assert_eq!(
            dataset_files(&shards, "train").unwrap(),
            names(&["plain_text/train.csv"])
        );
        assert_eq!(
            dataset_files(&shards, "validation").unwrap(),
            names(&["plain_text/dev.csv"])
        );
        let parquet_only = names(&[
            "train/0001.parquet",
            "train/0000.parquet",
            "test/0000.parquet",
        ]);
        assert_eq!(
            dataset_files(&parquet_only, "train").unwrap(),
            names(&["train/0000.parquet", "train/0001.parquet"])
        );
        // One file serves `train`; other splits must be named.
        let single = names(&["README.md", "e2e.jsonl"]);
        assert_eq!(
            dataset_files(&single, "train").unwrap(),
            names(&["e2e.jsonl"])
        );
        let e = dataset_files(&single, "test").unwrap_err();
        assert!(e.contains("e2e.jsonl"), "{e}");
        assert!(dataset_files(&names(&["README.md"]), "train").is_err());
    }

    #[test]
    fn picks_model_files() {
        let gpt2 = names(&[
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "generation_config.json",
        ]);
        assert_eq!(
            model_files(&gpt2).unwrap(),
            names(&[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "generation_config.json"
            ])
        );
        let sharded = names(&[
            "config.json",
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "model-00001-of-00002.safetensors",
        ]);
        assert_eq!(
            model_files(&sharded).unwrap()[1..],
            names(&[
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
        assert!(model_files(&names(&["config.json", "tf_model.h5"])).is_err());
        assert!(model_files(&names(&["model.safetensors"])).is_err());
    }

    /// `fixtures/hub/sst2-sample.parquet` (Snappy), written by scripts/make_parquet_fixture.py
    /// with pyarrow, the library the hub's own conversion uses.
    #[cfg(feature = "hub")]
    #[test]
    fn parquet_rows_become_jsonl() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let src = root.join("fixtures/hub/sst2-sample.parquet");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("train.jsonl");
        let n = parquet_to_jsonl(std::slice::from_ref(&src), &out).unwrap();
        let want = std::fs::read_to_string(root.join("fixtures/hub/sst2-sample.jsonl")).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(n, want.lines().count());
        for (g, w) in got.lines().zip(want.lines()) {
            let g: serde_json::Value = serde_json::from_str(g).unwrap();
            let w: serde_json::Value = serde_json::from_str(w).unwrap();
            assert_eq!(g, w);
        }
        // The readers take the result like any JSONL file.
        let records = lora_train::read_records(
            &out,
            &lora_train::Columns::labeled("sentence", None, "label"),
        )
        .unwrap();
        assert_eq!(records.len(), n);
        // Not Parquet: one-line error naming the file.
        let e = parquet_to_jsonl(&[root.join("fixtures/train/e2e.txt")], &out).unwrap_err();
        assert!(e.contains("e2e.txt") && !e.contains('\n'), "{e}");
    }
}

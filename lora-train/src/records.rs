//! Training data as [`Record`]s: read from JSONL, CSV, TSV and plain-text files with named
//! columns, or built in memory ([`Record::in_memory`]). Every unusable row is an error naming the file and line; nothing panics.
//!
//! | extension | format |
//! |---|---|
//! | `.jsonl`, `.json`, `.ndjson` | one JSON object per line |
//! | `.csv` | comma-separated, header row, RFC 4180 quoting |
//! | `.tsv`, `.tab` | tab-separated, header row, no quoting (GLUE style) |
//! | `.txt` | one example per line; every column name means the whole line |
//!
//! Columns are chosen with [`Columns`]: text (+ pair) + label for classification and
//! regression, prompt + completion for causal-LM fine-tuning (loss on the completion only),
//! a joined `context||completion` column (the E2E format of the LoRA paper), or plain text.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How a data file is parsed, normally from its extension ([`FileFormat::from_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row, quotes taken literally.
    Tsv,
    /// One example per line.
    Lines,
}

impl FileFormat {
    /// The format of `path` by extension (see the [module docs](self)).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "jsonl" | "json" | "ndjson" => Ok(Self::Jsonl),
            "csv" => Ok(Self::Csv),
            "tsv" | "tab" => Ok(Self::Tsv),
            "txt" => Ok(Self::Lines),
            _ => Err(TrainError::config(
                "data file",
                format!(
                    "cannot tell the format of {} from its extension (use .jsonl, .csv, .tsv or .txt)",
                    path.display()
                ),
            )),
        }
    }
}

/// Which columns of a data file hold what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Columns {
    /// Classification or regression: a text, an optional second text (sentence pairs), a label.
    Labeled {
        /// Column of the (first) text.
        text: String,
        /// Column of the second text of a pair.
        text_pair: Option<String>,
        /// Column of the label (class name or number; a number for regression).
        label: String,
    },
    /// Causal LM on prompt/completion pairs: the loss covers the completion only.
    PromptCompletion {
        /// Column of the prompt.
        prompt: String,
        /// Column of the completion.
        completion: String,
    },
    /// Causal LM on one column holding `prompt<separator>completion` (E2E: `context||completion`).
    Joined {
        /// The column (any name for `.txt` files).
        column: String,
        /// The separator, split at its first occurrence (E2E: `||`).
        separator: String,
    },
    /// Causal LM on plain text: the loss covers every token.
    Text {
        /// Column of the text.
        text: String,
    },
    /// Inputs to predict on: a text and an optional second text, no label (read with
    /// [`read_records`]; no training task takes them).
    Inputs {
        /// Column of the (first) text.
        text: String,
        /// Column of the second text of a pair.
        text_pair: Option<String>,
    },
}

impl Columns {
    /// Labeled text: `text` (+ `text_pair`) and `label`.
    pub fn labeled(text: &str, text_pair: Option<&str>, label: &str) -> Self {
        Self::Labeled {
            text: text.into(),
            text_pair: text_pair.map(Into::into),
            label: label.into(),
        }
    }

    /// Prompt and completion columns.
    pub fn prompt_completion(prompt: &str, completion: &str) -> Self {
        Self::PromptCompletion {
            prompt: prompt.into(),
            completion: completion.into(),
        }
    }

    /// The E2E form: one column `context||completion`.
    pub fn e2e(column: &str) -> Self {
        Self::Joined {
            column: column.into(),
            separator: "||".into(),
        }
    }

    /// Plain text for language modelling.
    pub fn text(column: &str) -> Self {
        Self::Text {
            text: column.into(),
        }
    }

    /// Unlabeled inputs: `text` (+ `text_pair`).
    pub fn inputs(text: &str, text_pair: Option<&str>) -> Self {
        Self::Inputs {
            text: text.into(),
            text_pair: text_pair.map(Into::into),
        }
    }

    /// Whether these columns describe causal-LM data.
    pub fn is_lm(&self) -> bool {
        matches!(
            self,
            Self::PromptCompletion { .. } | Self::Joined { .. } | Self::Text { .. }
        )
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Self::Labeled {
                text,
                text_pair,
                label,
            } => {
                let mut v = vec![text.as_str(), label.as_str()];
                if let Some(p) = text_pair {
                    v.insert(1, p.as_str());
                }
                v
            }
            Self::PromptCompletion { prompt, completion } => vec![prompt, completion],
            Self::Joined { column, .. } => vec![column],
            Self::Text { text } => vec![text],
            Self::Inputs { text, text_pair } => std::iter::once(text)
                .chain(text_pair)
                .map(String::as_str)
                .collect(),
        }
    }
}

/// One example as read from a file, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The text, or the prompt (empty for plain-text LM data).
    pub text: String,
    /// The second text of a pair.
    pub text_pair: Option<String>,
    /// The label or completion.
    pub target: RawTarget,
    /// Where it came from (for error messages).
    pub source: Source,
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl Record {
    /// A record built in memory, the `index`-th (0-based) of its list, so text is tokenized
    /// without a file ([`TextDataset::from_records`](crate::TextDataset::from_records)):
    /// errors name it as line `index + 1` of `<memory>`.
    pub fn in_memory(
        index: usize,
        text: impl Into<String>,
        text_pair: Option<String>,
        target: RawTarget,
    ) -> Self {
        Self {
            text: text.into(),
            text_pair,
            target,
            source: Source {
                path: PathBuf::from("<memory>"),
                line: index + 1,
            },
        }
    }
}

impl Source {
    /// A [`TrainError::Malformed`] at this row.
    pub fn error(&self, reason: impl Into<String>) -> TrainError {
        TrainError::Malformed {
            path: self.path.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }
}

/// The supervised part of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTarget {
    /// Plain text: nothing beyond the text.
    None,
    /// A label as written (class name or number).
    Label(String),
    /// A completion to learn, given the prompt in [`Record::text`].
    Completion(String),
}

/// A cell of a row, typed as far as the format knows.
enum Cell {
    Text(String),
    Scalar(String),
    Null,
    Missing,
    Other(&'static str),
}

trait Row {
    fn cell(&self, column: &str) -> Cell;
}

struct JsonRow(serde_json::Map<String, serde_json::Value>);

impl Row for JsonRow {
    fn cell(&self, column: &str) -> Cell {
        use serde_json::Value;
        match self.0.get(column) {
            None => Cell::Missing,
            Some(Value::Null) => Cell::Null,
            Some(Value::String(s)) => Cell::Text(s.clone()),
            Some(Value::Number(n)) => Cell::Scalar(n.to_string()),
            Some(Value::Bool(b)) => Cell::Scalar(b.to_string()),
            Some(Value::Array(_)) => Cell::Other("a list"),
            Some(Value::Object(_)) => Cell::Other("an object"),
        }
    }
}

struct CsvRow<'a> {
    header: &'a [String],
    record: csv::StringRecord,
}

impl Row for CsvRow<'_> {
    fn cell(&self, column: &str) -> Cell {
        match self.header.iter().position(|h| h == column) {
            Some(i) => self
                .record
                .get(i)
                .map_or(Cell::Missing, |s| Cell::Text(s.to_string())),
            None => Cell::Missing,
        }
    }
}

struct LineRow(String);

impl Row for LineRow {
    fn cell(&self, _column: &str) -> Cell {
        Cell::Text(self.0.clone())
    }
}

fn text_cell(row: &dyn Row, column: &str, src: &Source) -> Result<String> {
    match row.cell(column) {
        Cell::Text(s) => Ok(s),
        Cell::Scalar(s) => Err(src.error(format!("column `{column}` holds {s}, not a text"))),
        Cell::Null => Err(src.error(format!("column `{column}` is null"))),
        Cell::Missing => Err(src.error(format!("no column `{column}`"))),
        Cell::Other(what) => Err(src.error(format!("column `{column}` holds {what}, not a text"))),
    }
}

fn label_cell(row: &dyn Row, column: &str, src: &Source) -> Result<String> {
    match row.cell(column) {
        Cell::Text(s) | Cell::Scalar(s) => {
            let s = s.trim().to_string();
            if s.is_empty() {
                Err(src.error(format!("label column `{column}` is empty")))
            } else {
                Ok(s)
            }
        }
        Cell::Null => Err(src.error(format!("label column `{column}` is null"))),
        Cell::Missing => Err(src.error(format!("no column `{column}`"))),
        Cell::Other(what) => Err(src.error(format!("label column `{column}` holds {what}"))),
    }
}

fn record_of(row: &dyn Row, columns: &Columns, src: Source) -> Result<Record> {
    let pair =
        |column: &Option<String>| column.as_ref().map(|c| text_cell(row, c, &src)).transpose();
    let (text, text_pair, target) = match columns {
        Columns::Labeled {
            text,
            text_pair,
            label,
        } => (
            text_cell(row, text, &src)?,
            pair(text_pair)?,
            RawTarget::Label(label_cell(row, label, &src)?),
        ),
        Columns::PromptCompletion { prompt, completion } => (
            text_cell(row, prompt, &src)?,
            None,
            RawTarget::Completion(text_cell(row, completion, &src)?),
        ),
        Columns::Joined { column, separator } => {
            let joined = text_cell(row, column, &src)?;
            let Some((p, c)) = joined.split_once(separator.as_str()) else {
                return Err(src.error(format!(
                    "column `{column}` has no `{separator}` between prompt and completion"
                )));
            };
            (p.to_string(), None, RawTarget::Completion(c.to_string()))
        }
        Columns::Text { text } => (text_cell(row, text, &src)?, None, RawTarget::None),
        Columns::Inputs { text, text_pair } => (
            text_cell(row, text, &src)?,
            pair(text_pair)?,
            RawTarget::None,
        ),
    };
    Ok(Record {
        text,
        text_pair,
        target,
        source: src,
    })
}

/// Reads every record of a data file (format from its extension).
///
/// Blank lines are skipped. A row that cannot be parsed, lacks a column, has a null or
/// non-text value where text is needed, or (for joined columns) lacks the separator is a
/// [`TrainError::Malformed`] naming the file and line. A file without records is a
/// [`TrainError::EmptyDataset`].
pub fn read_records(path: &Path, columns: &Columns) -> Result<Vec<Record>> {
    read_records_as(path, FileFormat::from_path(path)?, columns)
}

/// [`read_records`] with an explicit format.
pub fn read_records_as(path: &Path, format: FileFormat, columns: &Columns) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(TrainError::io("cannot read", path))?;
    parse_records(&bytes, format, columns, path)
}

/// [`read_records`] from any reader (e.g. standard input); `name` stands for the source in
/// records and errors.
pub fn read_records_from(
    mut reader: impl std::io::Read,
    format: FileFormat,
    columns: &Columns,
    name: &Path,
) -> Result<Vec<Record>> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(TrainError::io("cannot read", name))?;
    parse_records(&bytes, format, columns, name)
}

fn parse_records(
    bytes: &[u8],
    format: FileFormat,
    columns: &Columns,
    path: &Path,
) -> Result<Vec<Record>> {
    let out = match format {
        FileFormat::Jsonl | FileFormat::Lines => line_records(bytes, format, columns, path)?,
        FileFormat::Csv | FileFormat::Tsv => table_records(bytes, format, columns, path)?,
    };
    if out.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: path.display().to_string(),
        });
    }
    Ok(out)
}

/// Where a record came from: `path`, line `line`.
fn source(path: &Path, line: usize) -> Source {
    Source {
        path: path.to_path_buf(),
        line,
    }
}

/// Records of a JSON-lines or plain-text file: one per non-blank line.
fn line_records(
    bytes: &[u8],
    format: FileFormat,
    columns: &Columns,
    path: &Path,
) -> Result<Vec<Record>> {
    let text = std::str::from_utf8(bytes).map_err(|e| TrainError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let src = source(path, i + 1);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if format == FileFormat::Lines {
            out.push(record_of(&LineRow(trimmed.to_string()), columns, src)?);
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
            let hint = if i == 0 && trimmed.starts_with('[') {
                " (a JSON array: write one object per line instead)"
            } else {
                ""
            };
            src.error(format!("invalid JSON: {e}{hint}"))
        })?;
        let map = match value {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Array(_) => {
                return Err(src.error(
                    "expected a JSON object, found a JSON array (write one object per line)",
                ));
            }
            other => return Err(src.error(format!("expected a JSON object, found `{other}`"))),
        };
        out.push(record_of(&JsonRow(map), columns, src)?);
    }
    Ok(out)
}

/// Records of a CSV or TSV file with a header naming the columns; blank rows are skipped.
fn table_records(
    bytes: &[u8],
    format: FileFormat,
    columns: &Columns,
    path: &Path,
) -> Result<Vec<Record>> {
    let mut builder = csv::ReaderBuilder::new();
    builder.has_headers(true).flexible(false);
    if format == FileFormat::Tsv {
        builder.delimiter(b'\t').quoting(false);
    }
    let mut reader = builder.from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(e, path, bytes))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if let Some(name) = (columns.names().into_iter()).find(|n| !header.iter().any(|h| h == *n)) {
        return Err(source(path, 1).error(format!(
            "no column `{name}` in the header (columns: {})",
            header.join(", ")
        )));
    }
    let mut out = Vec::new();
    let mut lines = LineCounter::default();
    for result in reader.records() {
        let record = result.map_err(|e| csv_error(e, path, bytes))?;
        let line = record
            .position()
            .map_or(0, |p| lines.line_at(bytes, p.byte()));
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let row = CsvRow {
            header: &header,
            record,
        };
        out.push(record_of(&row, columns, source(path, line))?);
    }
    Ok(out)
}

/// The 1-based line of the record starting at byte `offset`. The csv crate's own line count
/// is off by one on CRLF files, so count from the bytes, skipping line ends the offset may point
/// into.
fn line_at(bytes: &[u8], offset: u64) -> usize {
    LineCounter::default().line_at(bytes, offset)
}

/// [`line_at`] for offsets that only grow (records in file order): each call counts only the
/// bytes since the previous one, so a file's lines cost one pass, not one pass per record.
#[derive(Default)]
struct LineCounter {
    /// Bytes counted so far.
    at: usize,
    /// Line breaks in `bytes[..at]`.
    breaks: usize,
}

impl LineCounter {
    fn line_at(&mut self, bytes: &[u8], offset: u64) -> usize {
        let mut at = (offset as usize).min(bytes.len());
        while at < bytes.len() && matches!(bytes[at], b'\r' | b'\n') {
            at += 1;
        }
        if at < self.at {
            *self = Self::default();
        }
        self.breaks += bytes[self.at..at].iter().filter(|&&b| b == b'\n').count();
        self.at = at;
        1 + self.breaks
    }
}

fn csv_error(e: csv::Error, path: &Path, bytes: &[u8]) -> TrainError {
    let line = e.position().map_or(0, |p| line_at(bytes, p.byte()));
    match e.into_kind() {
        csv::ErrorKind::Io(source) => TrainError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => TrainError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: format!("{len} fields where the header has {expected_len}"),
        },
        csv::ErrorKind::Utf8 { err, .. } => TrainError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: format!("invalid UTF-8: {err}"),
        },
        other => TrainError::Malformed {
            path: path.to_path_buf(),
            line,
            reason: format!("{other:?}"),
        },
    }
}

/// What the model learns from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// Single-label classification.
    Classification {
        /// The label names, in class-index order. `None`: inferred from the training data
        /// (integer labels `0..k` are used as they are; other labels are sorted by name).
        labels: Option<Vec<String>>,
    },
    /// Regression on one numeric label.
    Regression,
    /// Causal language modelling (prompt/completion, joined or plain text).
    #[default]
    CausalLm,
}

/// Maps label strings to class indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    names: Vec<String>,
    numeric: bool,
}

impl LabelMap {
    /// A map with fixed names (index = position).
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            numeric: false,
        }
    }

    /// The map implied by the labels of `records`: integer labels `0..=max` stand for
    /// themselves; any non-integer label makes all labels names, sorted.
    pub fn infer(records: &[Record]) -> Self {
        let labels: BTreeSet<&str> = records
            .iter()
            .filter_map(|r| match &r.target {
                RawTarget::Label(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let ints: Option<Vec<usize>> = labels.iter().map(|l| l.parse::<usize>().ok()).collect();
        match ints {
            Some(ints) if !ints.is_empty() => {
                let max = ints.iter().copied().max().unwrap_or(0);
                Self {
                    names: (0..=max).map(|i| i.to_string()).collect(),
                    numeric: true,
                }
            }
            _ => Self {
                names: labels.into_iter().map(str::to_string).collect(),
                numeric: false,
            },
        }
    }

    /// The label names, by class index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    /// The class index of `label`: its position among the names; else, for an integer label
    /// below the class count, that integer (data sets often store class indices, e.g. `0`/`1`
    /// against a model's `NEGATIVE`/`POSITIVE`).
    pub fn index(&self, label: &str) -> Option<usize> {
        let as_index = || {
            label
                .parse::<usize>()
                .ok()
                .filter(|&i| i < self.names.len())
        };
        if self.numeric {
            return as_index();
        }
        self.names.iter().position(|n| n == label).or_else(as_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_jsonl_csv_tsv_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cols = Columns::labeled("sentence", None, "label");
        let j = write(
            dir.path(),
            "a.jsonl",
            "{\"sentence\": \"good\", \"label\": 1}\n\n{\"sentence\": \"bad\", \"label\": \"0\"}\n",
        );
        let r = read_records(&j, &cols).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].target, RawTarget::Label("1".into()));
        assert_eq!(r[1].source.line, 3);

        let c = write(
            dir.path(),
            "a.csv",
            "label,sentence\n1,\"a, quoted\"\"text\"\"\"\n0,plain\n",
        );
        let r = read_records(&c, &cols).unwrap();
        assert_eq!(r[0].text, "a, quoted\"text\"");
        assert_eq!((r[0].source.line, r[1].source.line), (2, 3));
        // Windows line ends, a blank line, a field spanning two lines.
        let c = write(
            dir.path(),
            "crlf.csv",
            "sentence,label\r\na,1\r\n\r\n\"two\r\nlines\",0\r\nb,1\r\n",
        );
        let r = read_records(&c, &cols).unwrap();
        let lines: Vec<usize> = r.iter().map(|r| r.source.line).collect();
        assert_eq!(lines, vec![2, 4, 6]);
        assert_eq!(r[1].text, "two\r\nlines");

        let t = write(dir.path(), "a.tsv", "sentence\tlabel\nit's \"fine\"\t1\n");
        let r = read_records(&t, &cols).unwrap();
        assert_eq!(r[0].text, "it's \"fine\"");

        let pair = Columns::labeled("s1", Some("s2"), "score");
        let p = write(
            dir.path(),
            "p.jsonl",
            "{\"s1\":\"a\",\"s2\":\"b\",\"score\":3.5}\n",
        );
        let r = read_records(&p, &pair).unwrap();
        assert_eq!(r[0].text_pair.as_deref(), Some("b"));
        assert_eq!(r[0].target, RawTarget::Label("3.5".into()));

        let e = write(dir.path(), "e2e.txt", "name : Aromi || Aromi is a pub.\n");
        let r = read_records(&e, &Columns::e2e("text")).unwrap();
        assert_eq!(r[0].text, "name : Aromi ");
        assert_eq!(
            r[0].target,
            RawTarget::Completion(" Aromi is a pub.".into())
        );
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cols = Columns::labeled("sentence", None, "label");
        let cases = [
            (
                "bad.jsonl",
                "{\"sentence\":\"x\",\"label\":1}\n{not json\n",
                2,
                "invalid JSON",
            ),
            (
                "miss.jsonl",
                "{\"sentence\":\"x\"}\n",
                1,
                "no column `label`",
            ),
            (
                "null.jsonl",
                "{\"sentence\":null,\"label\":1}\n",
                1,
                "is null",
            ),
            (
                "num.jsonl",
                "{\"sentence\":5,\"label\":1}\n",
                1,
                "not a text",
            ),
            ("arr.jsonl", "[1, 2]\n", 1, "JSON array"),
            (
                "ragged.csv",
                "sentence,label\na,1\nb,1,extra\n",
                3,
                "3 fields",
            ),
            ("hdr.csv", "text,label\na,1\n", 1, "no column `sentence`"),
            ("empty.csv", "sentence,label\na,\n", 2, "is empty"),
        ];
        for (name, text, line, want) in cases {
            let p = write(dir.path(), name, text);
            match read_records(&p, &cols) {
                Err(TrainError::Malformed {
                    path,
                    line: l,
                    reason,
                }) => {
                    assert_eq!(path, p);
                    assert_eq!(l, line, "{name}: {reason}");
                    assert!(reason.contains(want), "{name}: {reason}");
                }
                other => panic!("{name}: expected a malformed-row error, got {other:?}"),
            }
        }
        let p = write(dir.path(), "nosep.txt", "no separator here\n");
        assert!(matches!(
            read_records(&p, &Columns::e2e("text")),
            Err(TrainError::Malformed { line: 1, .. })
        ));
        let p = write(dir.path(), "blank.jsonl", "\n  \n");
        assert!(matches!(
            read_records(&p, &cols),
            Err(TrainError::EmptyDataset { .. })
        ));
        let p = write(dir.path(), "header-only.csv", "sentence,label\n");
        assert!(matches!(
            read_records(&p, &cols),
            Err(TrainError::EmptyDataset { .. })
        ));
        assert!(matches!(
            read_records(&dir.path().join("absent.jsonl"), &cols),
            Err(TrainError::Io { .. })
        ));
        assert!(matches!(
            read_records(&dir.path().join("x.parquet"), &cols),
            Err(TrainError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn label_maps() {
        let rec = |l: &str| Record {
            text: String::new(),
            text_pair: None,
            target: RawTarget::Label(l.into()),
            source: Source {
                path: PathBuf::new(),
                line: 1,
            },
        };
        let m = LabelMap::infer(&[rec("2"), rec("0")]);
        assert_eq!(m.num_classes(), 3);
        assert_eq!(m.index("2"), Some(2));
        assert_eq!(m.index("3"), None);
        let m = LabelMap::infer(&[rec("pos"), rec("neg"), rec("pos")]);
        assert_eq!(m.names(), ["neg", "pos"]);
        assert_eq!(m.index("pos"), Some(1));
        assert_eq!(m.index("neutral"), None);
    }
}

//! Tokenizers through Hugging Face's `tokenizers` crate: `tokenizer.json` when the model
//! directory has one, otherwise GPT-2's `vocab.json` + `merges.txt` (byte-level BPE).

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{ModelError, Result};

/// A loaded tokenizer plus the ids a model needs to know about.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("{context}: {e}"))
}

impl TextTokenizer {
    /// Loads from a model directory: `tokenizer.json`, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Self::from_file(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.exists() && merges.exists() {
            return Self::gpt2_from_files(&vocab, &merges);
        }
        Err(ModelError::MissingFile {
            what: "tokenizer",
            dir: dir.to_path_buf(),
            looked_for: "tokenizer.json, or vocab.json + merges.txt".into(),
        })
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner =
            Tokenizer::from_file(path).map_err(|e| tok_err(&path.display().to_string(), e))?;
        Ok(Self { inner })
    }

    /// GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, with `<|endoftext|>` special.
    pub fn gpt2_from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let (v, m) = (
            vocab.to_string_lossy().to_string(),
            merges.to_string_lossy().to_string(),
        );
        let bpe = BPE::from_file(&v, &m)
            .build()
            .map_err(|e| tok_err(&format!("{v} + {m}"), e))?;
        let mut inner = Tokenizer::new(bpe);
        // GPT-2 adds no prefix space; offsets trimmed; the GPT-2 split regex.
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        inner.with_post_processor(Some(byte_level));
        inner.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
        Ok(Self { inner })
    }

    /// Wraps an existing `tokenizers::Tokenizer`.
    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self { inner }
    }

    /// The wrapped tokenizer (for truncation, padding or pair settings).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Ids of `text`, with the tokenizer's special tokens (none for GPT-2).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of a sentence pair with the model's special tokens, and the token type ids.
    pub fn encode_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .inner
            .encode((a, b), true)
            .map_err(|e| tok_err("encode", e))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Text of `ids` (special tokens kept unless `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err("decode", e))
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

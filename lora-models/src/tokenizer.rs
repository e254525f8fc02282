//! Tokenizers through Hugging Face's `tokenizers` crate: `tokenizer.json` when the model
//! directory has one, otherwise GPT-2's `vocab.json` + `merges.txt` (byte-level BPE).
//! RoBERTa's byte-level BPE and BERT's WordPiece can also be built from their vocabulary files
//! ([`TextTokenizer::roberta_from_files`], [`TextTokenizer::bert_from_vocab`]).

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

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

/// A byte-level BPE tokenizer (GPT-2's and RoBERTa's: no prefix space, offsets trimmed, the
/// GPT-2 split regex) from `vocab.json` + `merges.txt`; also returns the vocab path for errors.
fn byte_level_bpe(vocab: &Path, merges: &Path) -> Result<(Tokenizer, String)> {
    let (v, m) = (
        vocab.to_string_lossy().to_string(),
        merges.to_string_lossy().to_string(),
    );
    let bpe = BPE::from_file(&v, &m)
        .build()
        .map_err(|e| tok_err(&format!("{v} + {m}"), e))?;
    let mut inner = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    inner.with_pre_tokenizer(Some(byte_level));
    inner.with_decoder(Some(byte_level));
    Ok((inner, v))
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

    /// Loads a `tokenizer.json`. Padding and truncation stored in the file are turned off, as
    /// transformers does: `encode` returns one sequence's ids, batches are padded by the caller,
    /// and truncation is asked for explicitly ([`with_truncation`](Self::with_truncation)).
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        // The tokenizers crate unwraps inside some of its deserializers (a malformed decoder
        // section panics): its panic becomes an error naming the file.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_file(path)).map_err(|_| {
            tok_err(
                &name,
                "malformed tokenizer.json (the tokenizers crate panicked reading it)",
            )
        })?;
        let mut inner = parsed.map_err(|e| tok_err(&name, e))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err("truncation", e))?;
        Ok(Self { inner })
    }

    /// GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, with `<|endoftext|>` special.
    pub fn gpt2_from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let (mut inner, _) = byte_level_bpe(vocab, merges)?;
        inner.with_post_processor(Some(ByteLevel::new(false, true, true)));
        inner.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
        Ok(Self { inner })
    }

    /// RoBERTa's byte-level BPE from `vocab.json` + `merges.txt`: no prefix space, and the
    /// specials `<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>` (which the vocabulary must hold), with
    /// `<s> A </s>` and `<s> A </s></s> B </s>` around inputs.
    pub fn roberta_from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let (mut inner, v) = byte_level_bpe(vocab, merges)?;
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(&v, format!("the vocabulary has no `{t}` token")))
        };
        let (cls, sep) = (id("<s>")?, id("</s>")?);
        for t in ["<pad>", "<unk>", "<mask>"] {
            id(t)?;
        }
        inner.with_post_processor(Some(
            RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
        let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .chain(std::iter::once(
                AddedToken::from("<mask>", true).lstrip(true),
            ))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Self { inner })
    }

    /// BERT's WordPiece from `vocab.txt` (one token a line): BERT's normaliser (lower-casing and
    /// accent stripping when `lowercase`), `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with token
    /// types 0 then 1. The vocabulary must hold `[UNK]`, `[CLS]`, `[SEP]`, `[PAD]` and `[MASK]`.
    pub fn bert_from_vocab(vocab: &Path, lowercase: bool) -> Result<Self> {
        let v = vocab.to_string_lossy().to_string();
        let model = WordPiece::from_file(&v)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_err(&v, e))?;
        let mut inner = Tokenizer::new(model);
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(&v, format!("the vocabulary has no `{t}` token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        for t in ["[UNK]", "[PAD]", "[MASK]"] {
            id(t)?;
        }
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Self { inner })
    }

    /// Truncates every input to at most `max_length` tokens, special tokens included (pairs:
    /// the longer sequence loses tokens first, as transformers' `truncation=True`), and turns
    /// off any padding stored in `tokenizer.json` (batches are padded by the caller).
    ///
    /// Errors if `max_length` cannot even hold the special tokens of a pair.
    pub fn with_truncation(mut self, max_length: usize) -> Result<Self> {
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if max_length <= added {
            return Err(ModelError::Tokenizer(format!(
                "truncation to {max_length} tokens leaves no room for text next to the {added} special tokens of a pair"
            )));
        }
        self.inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err("truncation", e))?;
        self.inner.with_padding(None);
        Ok(self)
    }

    /// The truncation length, if truncation is on.
    pub fn max_length(&self) -> Option<usize> {
        self.inner.get_truncation().map(|t| t.max_length)
    }

    /// Ids and token type ids of one text with the model's special tokens (truncated when
    /// [`with_truncation`](Self::with_truncation) was set).
    pub fn encode_with_types(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err("encode", e))?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
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

//! lora-train's [`Tokenizer`] for [`TextTokenizer`], so the text pipeline (datasets from
//! records, in memory or from files) tokenizes with a checkpoint's tokenizer.

use lora_train::{Tokenizer, TokenizerError};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::TextTokenizer;

fn error(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError(e.to_string())
}

impl Tokenizer for TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        TextTokenizer::encode(self, text).map_err(error)
    }

    fn encode_input(
        &self,
        text: &str,
        pair: Option<&str>,
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
        let enc = match pair {
            Some(p) => self.inner().encode((text, p), true),
            None => self.inner().encode(text, true),
        }
        .map_err(error)?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Counted on empty inputs, so it is what the post-processor really adds.
    fn num_special_tokens(&self, pair: bool) -> Result<usize, TokenizerError> {
        let input = if pair {
            tokenizers::EncodeInput::Dual("".into(), "".into())
        } else {
            tokenizers::EncodeInput::Single("".into())
        };
        let enc = self.inner().encode(input, true).map_err(error)?;
        Ok(enc.len())
    }

    fn truncating(&self, max_length: usize) -> Result<Self, TokenizerError> {
        let mut inner = self.inner().clone();
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(error)?;
        Ok(Self::from_tokenizer(inner))
    }

    fn token_id(&self, token: &str) -> Option<u32> {
        TextTokenizer::token_id(self, token)
    }
}

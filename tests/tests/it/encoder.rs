//! Encoder tests (RoBERTa/BERT): being written.

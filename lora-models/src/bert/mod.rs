//! RoBERTa and BERT-family encoders (work in progress).

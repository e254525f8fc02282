//! # lora-examples: command-line LoRA fine-tuning
//!
//! This crate will hold the runnable programs of lora-burn: GPT-2 (E2E data-to-text) and
//! RoBERTa/BERT (GLUE-style classification) fine-tuning with `train`, `eval`, `predict` /
//! `generate`, `merge` and `info` subcommands, writing PEFT-format adapters that Python's PEFT
//! loads too. They are being built in the examples issue.

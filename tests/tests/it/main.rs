//! lora-burn's cross-crate tests: one test binary (each binary links all of burn), one module
//! per subject. Numbers are compared with references written by the Python scripts in
//! `scripts/` (torch, transformers, peft), never with our own code alone.

mod common;
mod core_adapter;
mod core_layers;
mod core_targeting;
mod encoder;
mod fuzz;
mod gpt2;
mod peft_files;
mod peft_oracle;
mod saved_copies;
mod split_tables;
mod train;
mod weight;

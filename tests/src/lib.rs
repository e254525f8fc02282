//! # lora-tests: cross-crate integration and parity tests
//!
//! The tests live in `tests/it/` as one test binary (every binary links all of burn, so one
//! binary keeps build time and disk in check), one module per subject. They compare against
//! references written by the Python scripts in `scripts/` (torch, transformers, peft) and
//! committed under `fixtures/`.

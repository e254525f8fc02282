//! No code: this crate exists for its `Cargo.toml`, which makes every cargo invocation in the
//! lora-burn workspace resolve the same dependency features (see the comments there).

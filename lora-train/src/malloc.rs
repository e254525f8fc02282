//! glibc `malloc` settings for a training process: keep freed tensor buffers for reuse.
//!
//! A training step allocates and frees the same few hundred activation-sized buffers every
//! step. With glibc's defaults, buffers above its (adaptive) mmap threshold are mapped and
//! unmapped each time, and free memory at the top of each heap is handed back to the kernel,
//! so the next step takes a page fault and a zeroed page for every 4 KiB it touches again. On
//! the README main job that was about a sixth of the CPU time (docs/benchmarks.md).

/// glibc's `mallopt` parameters (`malloc.h`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    pub(super) const M_TRIM_THRESHOLD: i32 = -1;
    pub(super) const M_TOP_PAD: i32 = -2;
    pub(super) const M_MMAP_THRESHOLD: i32 = -3;

    unsafe extern "C" {
        /// Sets one malloc parameter; returns 1 on success, 0 on error.
        pub(super) fn mallopt(param: i32, value: i32) -> i32;
    }
}

/// Buffers up to this size come from the heap, not from their own mapping: glibc's largest
/// allowed value on 64-bit targets (32 MiB), above every activation of the README's jobs.
pub const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of a heap is returned to the kernel only past this much (1 GiB).
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Extra memory requested whenever a heap grows (64 MiB), so growth is rare.
pub const TOP_PAD: i32 = 64 << 20;

/// Makes glibc's `malloc` keep freed memory for reuse: buffers up to [`MMAP_THRESHOLD`] come
/// from the heap, and a heap shrinks only when [`TRIM_THRESHOLD`] of it is free.
///
/// Call it once, first thing in `main`, in a program that trains. It changes process-wide
/// allocator settings, which is why the library never calls it itself; this project's binaries
/// (`encoder-lora`, `gpt2-lora`, `lora-bench`) do. Peak resident memory stays the same, since the
/// memory kept is memory the next step asks for again. On the README main job it made 100 steps
/// ~17 % faster (docs/benchmarks.md); both settings are needed, either alone gained nothing.
///
/// Returns whether the settings were applied: `false` off glibc (musl, macOS, Windows), where
/// it does nothing. A program with its own `#[global_allocator]` is unaffected either way.
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use glibc::*;
        let settings = [
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        ];
        // SAFETY: `mallopt` takes two integers and only changes allocator parameters; the
        // values are within glibc's documented ranges.
        settings
            .into_iter()
            .all(|(param, value)| unsafe { mallopt(param, value) } == 1)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_accepts_the_settings() {
        let applied = super::reuse_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Allocation still works after the change, above and below the threshold.
        let small = vec![1u8; 1 << 20];
        let large = vec![2u8; 64 << 20];
        assert_eq!(small[12345] + large[1 << 25], 3);
    }
}

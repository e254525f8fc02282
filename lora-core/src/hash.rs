//! FNV-1a (64 bit), the one hash of lora-burn: small, stable across builds and platforms, no
//! dependency. It derives parameter ids from paths and fingerprints training data; it is not
//! meant to resist collisions made on purpose.

/// An FNV-1a 64-bit hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// A hasher at FNV's offset basis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `data`.
    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Feeds `v` as 8 little-endian bytes.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

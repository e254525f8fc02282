//! Seeded data order: every epoch's permutation is a pure function of `(seed, epoch)`, so a
//! resumed run regenerates exactly the order the interrupted one used, with no RNG state to
//! save. The generator is SplitMix64 with a Fisher–Yates shuffle, written out here so the order
//! never changes with a dependency's version.

/// SplitMix64: a small, well-mixed 64-bit generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A seed derived from a base seed and a sequence of integers (e.g. `(seed, epoch)` or
/// `(seed, step, micro_batch)`); different inputs give unrelated streams.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut g = SplitMix64::new(seed ^ 0x6c6f_7261_2d62_7572); // "lora-bur"
    let mut s = g.next_u64();
    for &p in parts {
        g = SplitMix64::new(s ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        s = g.next_u64();
    }
    s
}

/// The order of `n` items in `epoch`: a permutation seeded by `(seed, epoch)`, or `0..n` when
/// `shuffle` is off.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        SplitMix64::new(derive_seed(seed, &[0x0da7a, epoch as u64])).shuffle(&mut order);
    }
    order
}

/// Splits an order into batches of `batch_size` (the last may be smaller).
///
/// With `lengths`, batches are length-grouped as Hugging Face's `LengthGroupedSampler` does:
/// the (already shuffled) order is cut into mega-batches of 50 batches, each sorted by length,
/// longest first, so a batch holds similar lengths (less padding) while the epoch stays random.
pub fn make_batches(
    order: &[usize],
    batch_size: usize,
    lengths: Option<&dyn Fn(usize) -> usize>,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let order: Vec<usize> = match lengths {
        Some(len) => order
            .chunks(batch_size * 50)
            .flat_map(|mega| {
                let mut mega = mega.to_vec();
                // Stable sort: equal lengths keep their shuffled order.
                mega.sort_by_key(|&i| std::cmp::Reverse(len(i)));
                mega
            })
            .collect(),
        None => order.to_vec(),
    };
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

/// Splits `0..n` into (train, validation) index lists: a seeded shuffle, then the last
/// `round(n · ratio)` items (at least 1 when `ratio > 0` and `n > 1`) for validation. Each list
/// is returned in increasing index order (file order).
pub fn split_indices(n: usize, ratio: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(derive_seed(seed, &[0x5b117])).shuffle(&mut order);
    let mut n_valid = (n as f64 * ratio).round() as usize;
    if ratio > 0.0 && n > 1 {
        n_valid = n_valid.clamp(1, n - 1);
    }
    let mut valid = order.split_off(n - n_valid.min(n));
    let mut train = order;
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_seeded_permutations() {
        let a = epoch_order(100, 42, 0, true);
        assert_eq!(
            a,
            epoch_order(100, 42, 0, true),
            "same (seed, epoch) → same order"
        );
        assert_ne!(a, epoch_order(100, 42, 1, true), "epochs differ");
        assert_ne!(a, epoch_order(100, 43, 0, true), "seeds differ");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
        assert_eq!(epoch_order(5, 1, 3, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn batches_cover_everything_once() {
        let order = epoch_order(23, 7, 0, true);
        let lens = |i: usize| (i * 7) % 11;
        for grouped in [false, true] {
            let f: &dyn Fn(usize) -> usize = &lens;
            let b = make_batches(&order, 4, grouped.then_some(f));
            assert_eq!(b.len(), 6);
            assert_eq!(b.last().map(Vec::len), Some(3));
            let mut all: Vec<usize> = b.concat();
            all.sort_unstable();
            assert_eq!(all, (0..23).collect::<Vec<_>>());
            if grouped {
                // Within the single mega-batch, lengths never increase.
                let flat: Vec<usize> = b.concat().into_iter().map(lens).collect();
                assert!(flat.windows(2).all(|w| w[0] >= w[1]), "{flat:?}");
            }
        }
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t, v) = split_indices(10, 0.2, 1);
        assert_eq!((t.len(), v.len()), (8, 2));
        assert!(v.iter().all(|i| !t.contains(i)));
        assert_eq!(split_indices(10, 0.2, 1), (t, v));
        assert_eq!(
            split_indices(3, 0.01, 1).1.len(),
            1,
            "at least one validation item"
        );
        assert_eq!(split_indices(5, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn uniform_below_stays_in_range() {
        let mut g = SplitMix64::new(3);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            seen[g.below(6) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}

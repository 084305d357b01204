//! Weighted choice between versions, random or sticky.
//!
//! Weights are integers and a version's share is its weight over their sum (Envoy's
//! semantics), so 1 against 999 is 0.1%. The sticky pick hashes a key to a point in
//! [0, 1) and places the non-primary versions first on that line, so a key that lands on
//! the canary at weight w stays on the canary at any larger weight (monotone).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// A precomputed weighted choice over version indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightTable {
    /// (version index, weight) in line order: non-primary versions first, primary last.
    entries: Vec<(usize, u32)>,
    /// Running sums of the weights, in the same order.
    cumulative: Vec<u64>,
    total: u64,
}

impl WeightTable {
    /// Builds a table; `primary` is placed last so sticky picks are monotone.
    /// Returns None when the weights sum to 0.
    pub fn new(weights: &[(usize, u32)], primary: usize) -> Option<WeightTable> {
        let mut entries: Vec<(usize, u32)> = weights
            .iter()
            .copied()
            .filter(|(v, _)| *v != primary)
            .collect();
        entries.extend(weights.iter().copied().filter(|(v, _)| *v == primary));
        let mut total = 0u64;
        let cumulative = entries
            .iter()
            .map(|(_, w)| {
                total += u64::from(*w);
                total
            })
            .collect();
        (total > 0).then_some(WeightTable {
            entries,
            cumulative,
            total,
        })
    }

    /// The version at a point drawn uniformly from the 64-bit range.
    fn at(&self, point: u64) -> usize {
        // Scale the 64-bit point to [0, total) without bias worth measuring.
        let x = ((u128::from(point) * u128::from(self.total)) >> 64) as u64;
        let i = self.cumulative.partition_point(|c| *c <= x);
        self.entries[i.min(self.entries.len() - 1)].0
    }

    /// A random pick.
    pub fn pick(&self) -> usize {
        if self.entries.len() == 1 {
            return self.entries[0].0;
        }
        self.at(random_u64())
    }

    /// A pick decided by the key alone: the same key gets the same version.
    pub fn pick_sticky(&self, key: &[u8]) -> usize {
        self.at(sticky_hash(key))
    }

    /// (version index, weight) pairs in line order.
    pub fn entries(&self) -> &[(usize, u32)] {
        &self.entries
    }
}

/// A stable 64-bit hash of a sticky key (SipHash with fixed keys, so it survives restarts
/// and reloads of the same binary).
pub fn sticky_hash(key: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7765_6972_2d73_7469, 0x636b_792d_6b65_7931);
    h.write(key);
    h.finish()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // RandomState is seeded from the OS per process and varies per instance.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1
}

/// A fast per-thread pseudo-random number (xorshift64*); not for secrets.
pub fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// True with the given probability in percent (0 to 100).
pub fn chance(percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    if percent <= 0.0 {
        return false;
    }
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws n picks and checks the canary's count is within 5 standard deviations of
    /// the binomial mean.
    fn assert_split(canary: u32, primary: u32, n: u64) {
        let t = WeightTable::new(&[(0, primary), (1, canary)], 0).expect("positive weights");
        let hits = (0..n).filter(|_| t.pick() == 1).count() as f64;
        let p = f64::from(canary) / f64::from(canary + primary);
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (hits - mean).abs() <= 5.0 * sd,
            "canary {canary}/{}: {hits} hits, expected {mean} ± {}",
            canary + primary,
            5.0 * sd
        );
    }

    #[test]
    fn realised_split_over_100k_picks_is_within_binomial_noise() {
        assert_split(1, 999, 100_000);
        assert_split(5, 95, 100_000);
        assert_split(50, 50, 100_000);
    }

    #[test]
    fn zero_weight_is_never_picked_and_zero_sum_is_rejected() {
        let t = WeightTable::new(&[(0, 100), (1, 0)], 0).expect("positive sum");
        assert!((0..10_000).all(|_| t.pick() == 0));
        assert!((0..10_000).all(|i: u32| t.pick_sticky(&i.to_le_bytes()) == 0));
        assert_eq!(WeightTable::new(&[(0, 0), (1, 0)], 0), None);
    }

    #[test]
    fn sticky_pick_is_stable_and_follows_the_weights() {
        let t = WeightTable::new(&[(0, 90), (1, 10)], 0).expect("positive sum");
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let first: Vec<usize> = keys.iter().map(|k| t.pick_sticky(k.as_bytes())).collect();
        let again: Vec<usize> = keys.iter().map(|k| t.pick_sticky(k.as_bytes())).collect();
        assert_eq!(first, again);
        let share = first.iter().filter(|v| **v == 1).count() as f64 / keys.len() as f64;
        assert!((0.09..0.11).contains(&share), "share {share}");
    }

    #[test]
    fn sticky_pick_is_monotone_in_the_canary_weight() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("session-{i}")).collect();
        let mut previous: Option<Vec<usize>> = None;
        for w in [1u32, 5, 10, 25, 50, 75, 100] {
            let t = WeightTable::new(&[(0, 100 - w.min(100)), (1, w)], 0).expect("positive sum");
            let now: Vec<usize> = keys.iter().map(|k| t.pick_sticky(k.as_bytes())).collect();
            if let Some(prev) = &previous {
                for (i, (a, b)) in prev.iter().zip(&now).enumerate() {
                    assert!(
                        !(*a == 1 && *b == 0),
                        "{} left the canary when its weight grew to {w}",
                        keys[i]
                    );
                }
            }
            previous = Some(now);
        }
    }

    #[test]
    fn chance_extremes() {
        assert!((0..1000).all(|_| chance(100.0)));
        assert!((0..1000).all(|_| !chance(0.0)));
        let hits = (0..100_000).filter(|_| chance(10.0)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }
}

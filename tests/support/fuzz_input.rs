//! Shared by the stable fuzzers (`tests/fuzz_*.rs`, each includes this file with
//! `#[path]`): how long a run lasts and which seed it replays, both from the
//! environment, and byte-level damage to an input. Calls rand.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How long the run lasts: TIMBALA_FUZZ_SECONDS (default 2; `make test` sets 20).
pub fn duration() -> Duration {
    let seconds = std::env::var("TIMBALA_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(seconds)
}

/// The run's generator: seeded from TIMBALA_FUZZ_SEED, else at random; the seed is
/// printed so a failure can be replayed.
pub fn rng() -> SmallRng {
    let seed = std::env::var("TIMBALA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SmallRng::from_os_rng().random());
    println!("fuzz seed {seed} (TIMBALA_FUZZ_SEED to replay)");
    SmallRng::seed_from_u64(seed)
}

/// One to three kinds of damage: bit flips, bytes overwritten with or inserted from
/// `interesting`, random insertions, deletions, truncation, copies of a stretch.
pub fn mutate_bytes(rng: &mut SmallRng, bytes: &mut Vec<u8>, interesting: &[u8]) {
    for _ in 0..rng.random_range(1..4) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..bytes.len());
        let pick = |rng: &mut SmallRng| interesting[rng.random_range(0..interesting.len())];
        match rng.random_range(0..7) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = pick(rng),
            2 => bytes.insert(at, pick(rng)),
            3 => bytes.insert(at, rng.random()),
            4 => {
                let end = (at + rng.random_range(1..8)).min(bytes.len());
                bytes.drain(at..end);
            }
            5 => bytes.truncate(at),
            _ => {
                let end = (at + rng.random_range(1..16)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.random_range(0..bytes.len());
                bytes.splice(to..to, copy);
            }
        }
    }
}

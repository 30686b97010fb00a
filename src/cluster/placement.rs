//! Placement: the nodes that own a series. Pure and deterministic: every node, version
//! and CPU architecture must compute the same owners, so the bytes that are hashed and
//! the hash functions are specified here and pinned by test vectors (ADR 0004).
//!
//! - Partition key: FNV-1a 64 over the series' labels in name order, each as
//!   `name 0xFF value 0xFF` (`Labels::stable_hash`).
//! - Metric metadata (per metric family, not per series) is placed like the series
//!   `{__name__="<family>"}`: its key is `__name__ 0xFF <family> 0xFF` (ADR 0020).
//! - Replica key: FNV-1a 64 over `replica: u32 LE || attempt: u32 LE || partition key: u64
//!   LE`, finished with the SplitMix64 mixer so that nearby keys spread out.
//! - Replica r lives on bucket `jump(replica key, N)` of the slots in join order, where
//!   N counts every node ever placed, removed ones included (a removed node's slot is a
//!   tombstone, ADR 0015). When the bucket is a tombstone or a node that already holds an
//!   earlier replica, `attempt` counts up and the key is hashed again, so replicas land
//!   on distinct live nodes while jump hash's property holds for every attempt: a key
//!   only ever moves to a bucket added at the end, and removing a node moves only the
//!   replicas it held (each to the next candidate of its own probe sequence).
//!
//! Calls only `model`.

use std::hash::{BuildHasher, Hasher};

use jumphash::CustomJumpHasher;

use crate::model::{splitmix64_mix, Labels};

/// Copies of each series the cluster keeps.
pub const REPLICATION_FACTOR: usize = 3;

/// More rehash attempts than this is astronomically unlikely; past it a linear probe
/// keeps placement total and deterministic.
const MAX_ATTEMPTS: u32 = 64;

/// Whether `owners` picks every node for every key: true while the cluster has no more
/// nodes than replicas, so callers may skip hashing (the order of owners differs).
pub fn every_node_owns_every_series(node_count: usize) -> bool {
    node_count <= REPLICATION_FACTOR
}

/// The partition key of a series: what placement hashes.
pub fn partition_key(labels: &Labels) -> u64 {
    labels.stable_hash()
}

/// The partition key of a metric family's metadata: that of the series whose only label
/// is the family's name, so the owners are computed exactly as for series (ADR 0020).
pub fn metadata_partition_key(metric_family: &str) -> u64 {
    partition_key(&Labels::from_pairs([(
        crate::model::METRIC_NAME,
        metric_family,
    )]))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The jump-hash key of one replica placement attempt.
pub fn replica_key(partition_key: u64, replica: u32, attempt: u32) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&replica.to_le_bytes());
    bytes[4..8].copy_from_slice(&attempt.to_le_bytes());
    bytes[8..].copy_from_slice(&partition_key.to_le_bytes());
    splitmix64_mix(fnv1a64(&bytes))
}

/// A `Hasher` that passes a u64 through unchanged, so the `jumphash` crate jumps on the
/// key we computed rather than on a hash of our choosing it cannot promise to keep.
#[derive(Clone, Copy, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed through this type (see `jump`).
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl BuildHasher for PassThrough {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Jump consistent hash of `key` into `buckets` buckets (Lamping and Veach).
pub fn jump(key: u64, buckets: u32) -> u32 {
    debug_assert!(buckets > 0);
    CustomJumpHasher::new(PassThrough(0)).slot(&key, buckets)
}

/// Indices (into the join-ordered node list of `node_count` nodes, none removed) of the
/// nodes that own a series with this partition key: `min(replication, node_count)`
/// distinct indices, replica 0 first.
pub fn owners(partition_key: u64, node_count: usize, replication: usize) -> Vec<usize> {
    owners_among_slots(partition_key, node_count, replication, |_| false)
}

/// Indices (into `slot_count` join-ordered slots, of which those where `is_tombstone`
/// holds are removed nodes) of the live slots that own a series with this partition key:
/// `min(replication, live slots)` distinct indices, replica 0 first. Without tombstones
/// this is exactly `owners`.
pub fn owners_among_slots(
    partition_key: u64,
    slot_count: usize,
    replication: usize,
    is_tombstone: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let live = (0..slot_count).filter(|&i| !is_tombstone(i)).count();
    let wanted = replication.min(live);
    let buckets = u32::try_from(slot_count).unwrap_or(u32::MAX);
    let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
    let taken = |chosen: &[usize], i: usize| chosen.contains(&i) || is_tombstone(i);
    for replica in 0..wanted as u32 {
        let mut pick = None;
        let mut last = 0;
        for attempt in 0..MAX_ATTEMPTS {
            last = jump(replica_key(partition_key, replica, attempt), buckets) as usize;
            if !taken(&chosen, last) {
                pick = Some(last);
                break;
            }
        }
        // Out of attempts (astronomically rare without tombstones; about
        // `tombstone share ^ 64` with them): probe linearly from replica 0, or from the
        // last candidate when replica 0 itself found no live slot.
        let start = chosen.first().copied().unwrap_or(last);
        let node =
            pick.unwrap_or_else(|| first_free_after(start, slot_count, |i| taken(&chosen, i)));
        chosen.push(node);
    }
    chosen
}

fn first_free_after(start: usize, slot_count: usize, taken: impl Fn(usize) -> bool) -> usize {
    (1..=slot_count)
        .map(|step| (start + step) % slot_count)
        .find(|&i| !taken(i))
        .expect("fewer replicas than live slots leaves a free slot")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(i: usize) -> Labels {
        Labels::from_pairs([
            ("__name__", "node_cpu_seconds_total".to_string()),
            ("instance", format!("host-{}:9100", i / 64)),
            ("cpu", (i % 64).to_string()),
        ])
    }

    #[test]
    fn hash_functions_are_pinned() {
        // Test vectors, computed independently (a Python transcription of the spec in the
        // module comment). Changing any of them changes where existing data lives.
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "prometheus")]);
        assert_eq!(partition_key(&labels), 0x6dd8_60b3_99b2_5020);
        assert_eq!(replica_key(0, 0, 0), 0x6875_2350_ae1d_483f);
        assert_eq!(
            replica_key(partition_key(&labels), 2, 1),
            0x43db_6149_73a9_7a88
        );
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(0xdead_beef, 19), 16);
        assert_eq!(owners(partition_key(&labels), 5, 3), vec![2, 3, 4]);
        assert_eq!(metadata_partition_key("up"), 0xa6a0_cb87_086e_c65b);
    }

    #[test]
    fn tombstoned_slots_are_pinned() {
        // Computed by the same independent Python transcription, extended by the
        // tombstone rule of the module comment (ADR 0015). Changing any of them changes
        // where data lives once a node was removed.
        let key = partition_key(&Labels::from_pairs([
            ("__name__", "up"),
            ("job", "prometheus"),
        ]));
        let among = |slots: usize, tombs: &[usize]| {
            owners_among_slots(key, slots, 3, |i| tombs.contains(&i))
        };
        assert_eq!(
            among(5, &[]),
            owners(key, 5, 3),
            "no tombstone: the plain rule"
        );
        assert_eq!(among(5, &[2]), vec![3, 1, 4]);
        assert_eq!(among(5, &[3]), vec![2, 1, 4]);
        assert_eq!(among(5, &[0, 4]), vec![2, 3, 1]);
        assert_eq!(among(5, &[0, 1, 4]), vec![2, 3]);
        assert_eq!(among(5, &[0, 1, 2, 3, 4]), Vec::<usize>::new());
        assert_eq!(
            owners_among_slots(0, 8, 3, |i| i == 1 || i == 5),
            vec![7, 2, 6]
        );
        assert_eq!(owners(0, 8, 3), vec![7, 5, 6]);
        assert_eq!(owners(0, 6, 3), vec![4, 5, 0]);
        assert_eq!(owners_among_slots(0, 6, 3, |i| i == 4), vec![3, 5, 0]);
    }

    #[test]
    fn every_slot_tombstoned_in_turn_keeps_owners_distinct_and_live() {
        for slots in 2..=9usize {
            for tomb in 0..slots {
                for i in 0..500 {
                    let key = partition_key(&series(i));
                    let o = owners_among_slots(key, slots, REPLICATION_FACTOR, |s| s == tomb);
                    assert_eq!(o.len(), REPLICATION_FACTOR.min(slots - 1));
                    assert!(!o.contains(&tomb));
                    let mut sorted = o.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), o.len(), "duplicate owner in {o:?}");
                }
            }
        }
    }

    #[test]
    fn shortcut_agrees_with_owners() {
        for nodes in 1..=7 {
            let every_key_on_all = (0..500).all(|i| {
                owners(partition_key(&series(i)), nodes, REPLICATION_FACTOR).len() == nodes
            });
            assert_eq!(
                every_node_owns_every_series(nodes),
                every_key_on_all,
                "{nodes}"
            );
        }
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_node_count() {
        for nodes in 1..=7 {
            for i in 0..2000 {
                let o = owners(partition_key(&series(i)), nodes, REPLICATION_FACTOR);
                assert_eq!(o.len(), REPLICATION_FACTOR.min(nodes));
                let mut sorted = o.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), o.len(), "duplicate owner in {o:?}");
                assert!(o.iter().all(|&n| n < nodes));
            }
        }
    }

    /// Series per node, as (mean, standard deviation), and prints both histograms.
    fn distribution(node_count: usize, replication: usize, series_count: usize) -> (f64, f64) {
        let mut per_node = vec![0u64; node_count];
        let mut distinct_nodes_per_series = vec![0u64; replication + 1];
        for i in 0..series_count {
            let o = owners(partition_key(&series(i)), node_count, replication);
            distinct_nodes_per_series[o.len()] += 1;
            for n in o {
                per_node[n] += 1;
            }
        }
        let mean = per_node.iter().sum::<u64>() as f64 / node_count as f64;
        let var = per_node
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / node_count as f64;
        println!("{node_count} nodes, replication {replication}: series per node {per_node:?}");
        println!("  distinct nodes per series (index = count): {distinct_nodes_per_series:?}");
        println!(
            "  mean {mean:.1}, stddev {:.1} ({:.2}% of mean)",
            var.sqrt(),
            100.0 * var.sqrt() / mean
        );
        (mean, var.sqrt())
    }

    #[test]
    fn spreads_series_evenly() {
        for nodes in [1, 3, 5, 19] {
            for replication in [1, 3] {
                let (mean, stddev) = distribution(nodes, replication, 100_000);
                assert!(
                    stddev <= 0.02 * mean,
                    "{nodes} nodes rf {replication}: stddev {stddev} mean {mean}"
                );
            }
        }
    }

    #[test]
    fn adding_a_node_moves_little() {
        let series_count = 100_000;
        for nodes in [1usize, 3, 5, 19] {
            for replication in [1usize, 3] {
                let mut moved = 0usize;
                let mut total = 0usize;
                for i in 0..series_count {
                    let key = partition_key(&series(i));
                    let before = owners(key, nodes, replication);
                    let after = owners(key, nodes + 1, replication);
                    total += after.len();
                    moved += after.iter().filter(|n| !before.contains(n)).count();
                }
                // Ideal: the new node takes its fair share 1/(N+1) of all replicas.
                let ideal = total as f64 / (nodes + 1) as f64;
                println!(
                    "{nodes}->{} nodes rf {replication}: moved {moved} replicas, ideal {ideal:.0}",
                    nodes + 1
                );
                assert!(moved as f64 <= 1.1 * ideal, "moved {moved}, ideal {ideal}");
            }
        }
    }
}

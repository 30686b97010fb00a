//! Active anti-entropy in the simulation, as `replication::antientropy::AntiEntropy`
//! (ADR 0016) with its production planning functions: each placed node runs a pass
//! `AE_FIRST_DELAY` after it is placed and then every `AE_INTERVAL` (shorter than
//! production's 5 minutes so that runs stay short); a pass computes the window digests
//! (`tsdb::digest::window_digests`) of the series it owns at or before its settled bound
//! (`upto`, its clock minus `antientropy::SETTLE`), and for every other ring node not
//! down in its view compares the series both own (`both_own` over its own ring) level by
//! level: bucket digests, then the cells of the differing buckets, then the series
//! digests of the differing cells (`cells_of`, `bucket_digests`, `differing`,
//! `series_in_cells`), and pulls the differing ranges (`pulls`, cut at `upto`), keeping
//! of the answer only what it asked (`only_asked`) and storing what it lacks (a union).
//!
//! Each of the four kinds of request (buckets, cells, series, pull) is an internal HTTP
//! request over the simulated network: it fails when the peer is down, on the other side
//! of a partition or the request is lost, and the answering peer refuses a requester that
//! is not in its own ring (`DigestRequest::validate`); a failed exchange is retried at the
//! next pass. The peer answers from its own store and its own ring view, as
//! `answer_digests` and `answer_pull` do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use timbala::cluster::identity::NodeId;
use timbala::cluster::membership::MemberState;
use timbala::cluster::placement;
use timbala::model::{Sample, Series};
use timbala::replication::antientropy::{
    both_own, bucket_digests, bucket_of, cells_of, differing, only_asked, pulls, series_in_cells,
    Cell, PullRange, BUCKETS, SETTLE,
};
use timbala::tsdb::digest::{window_digests, SeriesDigests};

use super::World;

/// Between passes (production: `--anti-entropy-interval`, 5 minutes).
pub const AE_INTERVAL: Duration = Duration::from_secs(15);
/// Before the first pass once placed (production: 15 s, 3 s with the test profile).
pub const AE_FIRST_DELAY: Duration = Duration::from_secs(3);
/// Width of a digest window. Production uses the block duration (at least 1 h) and the
/// wire refuses less than 1 minute; the planning functions take any width, and 10 s
/// spreads the sim's 45 s of writes over several windows and cells.
pub const AE_WINDOW_MS: i64 = 10_000;
/// Cells per series-level request and ranges per pull, as in production.
const CELLS_PER_REQUEST: usize = 256;
const RANGES_PER_PULL: usize = 100;

/// The last pass of a node that compared with every other ring node without a failure.
#[derive(Clone, Copy, Debug)]
pub struct CleanPass {
    pub started: Duration,
    pub upto: i64,
}

impl World {
    /// The settled bound of a pass starting now.
    fn upto(&self) -> i64 {
        let now = i64::try_from(self.clock_ms.get()).unwrap_or(i64::MAX);
        now.saturating_sub(i64::try_from(SETTLE.as_millis()).unwrap_or(i64::MAX))
    }

    /// Window digests of node `n`'s series that `include` accepts (by partition key), over
    /// samples at or before `upto`, as `Tsdb::series_digests` computes them.
    fn digests_of(&self, n: usize, upto: i64, include: impl Fn(u64) -> bool) -> Vec<SeriesDigests> {
        let disk = self.nodes[n].disk.borrow();
        disk.samples
            .iter()
            .filter(|(&s, _)| include(placement::partition_key(&self.labels[s])))
            .filter_map(|(&s, times)| {
                let samples: Vec<Sample> = times
                    .range(..=upto)
                    .map(|&t| Sample::new(t, t as f64))
                    .collect();
                let windows = window_digests(&samples, AE_WINDOW_MS);
                (!windows.is_empty()).then(|| SeriesDigests {
                    labels: self.labels[s].clone(),
                    windows,
                })
            })
            .collect()
    }

    /// One digest request from `from` to `peer` over the network: the peer's digests of
    /// the series it and the requester both own by the peer's ring, restricted to the
    /// buckets asked (all when `None`). `None` when the request fails or is refused.
    fn ask_digests(
        &mut self,
        from: usize,
        peer: usize,
        upto: i64,
        buckets: Option<&BTreeSet<u32>>,
    ) -> Option<Vec<SeriesDigests>> {
        if !self.request(from, peer) {
            return None;
        }
        let requester = self.nodes[from].id?;
        let view = &self.nodes[peer].up.as_ref()?.view;
        if view.ring.node(requester).is_none() {
            // `DigestRequest::validate`: an unknown requester is refused (400).
            self.stats.ae_requests_refused += 1;
            return None;
        }
        let (ring, me) = (view.ring.clone(), view.local.id);
        Some(self.digests_of(peer, upto, |key| {
            buckets.is_none_or(|b| b.contains(&bucket_of(key, BUCKETS)))
                && both_own(&ring, key, me, requester)
        }))
    }

    /// One pull request: the peer's samples of the asked series in the asked ranges (as
    /// `answer_pull`), `None` when the request fails.
    fn ask_samples(
        &mut self,
        from: usize,
        peer: usize,
        ranges: &[PullRange],
    ) -> Option<Vec<Series>> {
        if !self.request(from, peer) {
            return None;
        }
        let disk = self.nodes[peer].disk.borrow();
        let mut answer = Vec::new();
        for range in ranges {
            let Some(s) = self.labels.iter().position(|l| *l == range.labels) else {
                continue;
            };
            let samples: Vec<Sample> = disk
                .samples
                .get(&s)
                .map(|times| {
                    times
                        .range(range.mint..=range.maxt)
                        .map(|&t| Sample::new(t, t as f64))
                        .collect()
                })
                .unwrap_or_default();
            if !samples.is_empty() {
                answer.push(Series {
                    labels: range.labels.clone(),
                    samples,
                });
            }
        }
        Some(answer)
    }

    /// Stores a pull answer on node `n`, counting the samples it lacked.
    fn store_pulled(&mut self, n: usize, series: Vec<Series>) {
        for s in series {
            let Some(index) = self.labels.iter().position(|l| *l == s.labels) else {
                continue;
            };
            let mut disk = self.nodes[n].disk.borrow_mut();
            let held = disk.samples.entry(index).or_default();
            for sample in s.samples {
                if held.insert(sample.t) {
                    self.stats.ae_samples_pulled += 1;
                }
            }
        }
    }

    /// A pass of node `i`, as `AntiEntropy::pass`.
    pub(super) fn anti_entropy(&mut self, i: usize) {
        let started = self.now;
        let Some(up) = self.nodes[i].up.as_ref() else {
            return;
        };
        let view = up.view.clone();
        let me = view.local.id;
        let ring = view.ring.clone();
        let upto = self.upto();
        let mine = self.digests_of(i, upto, |key| {
            placement::every_node_owns_every_series(ring.len()) || ring.owners(key).contains(&me)
        });
        self.stats.ae_passes += 1;
        let mut clean = true;
        for node in ring.nodes_in_join_order() {
            if node.id == me {
                continue;
            }
            if view
                .member(node.id)
                .is_none_or(|m| m.state == MemberState::Down)
            {
                // Skipped as production does; not a complete pass.
                clean = false;
                continue;
            }
            let shared: Vec<SeriesDigests> = mine
                .iter()
                .filter(|s| both_own(&ring, placement::partition_key(&s.labels), me, node.id))
                .cloned()
                .collect();
            self.stats.ae_exchanges += 1;
            if !self.exchange(i, node.id, &shared, upto) {
                self.stats.ae_failed_exchanges += 1;
                clean = false;
            }
        }
        if clean {
            self.up(i).ae_clean_pass = Some(CleanPass { started, upto });
        }
    }

    /// One comparison of node `i` with `peer` over `shared`, as `Exchange::run`; false
    /// when a request failed.
    fn exchange(&mut self, i: usize, peer: NodeId, shared: &[SeriesDigests], upto: i64) -> bool {
        let Some(p) = self.index_of(peer) else {
            return false;
        };
        let local_cells = cells_of(shared, BUCKETS);
        let local_buckets = bucket_digests(&local_cells);
        let Some(remote) = self.ask_digests(i, p, upto, None) else {
            return false;
        };
        let remote_buckets = bucket_digests(&cells_of(&remote, BUCKETS));
        let compared: BTreeSet<u32> = remote_buckets
            .keys()
            .chain(local_buckets.keys())
            .copied()
            .collect();
        self.stats.ae_buckets_compared += compared.len() as u64;
        let buckets = differing(&local_buckets, &remote_buckets);
        if buckets.is_empty() {
            return true;
        }
        self.stats.ae_buckets_differing += buckets.len() as u64;
        let asked: BTreeSet<u32> = buckets.into_iter().collect();
        let Some(remote) = self.ask_digests(i, p, upto, Some(&asked)) else {
            return false;
        };
        let remote_cells: BTreeMap<Cell, u64> = cells_of(&remote, BUCKETS);
        let cells = differing(&local_cells, &remote_cells);
        for part in cells.chunks(CELLS_PER_REQUEST) {
            let set: BTreeSet<Cell> = part.iter().copied().collect();
            let in_buckets: BTreeSet<u32> = set.iter().map(|c| c.0).collect();
            let Some(remote) = self.ask_digests(i, p, upto, Some(&in_buckets)) else {
                return false;
            };
            let remote = series_in_cells(&remote, &set, BUCKETS);
            let local = series_in_cells(shared, &set, BUCKETS);
            let ranges = pulls(&local, &remote, AE_WINDOW_MS, upto);
            for batch in ranges.chunks(RANGES_PER_PULL) {
                let Some(answer) = self.ask_samples(i, p, batch) else {
                    return false;
                };
                let kept = only_asked(batch, answer);
                self.store_pulled(i, kept);
            }
        }
        true
    }

    /// Whether node `i`'s anti-entropy is complete for the settled cluster: a pass that
    /// started at or after `settled` (no hint, repair or write moves samples any more)
    /// compared with every other ring node, with a bound past the last acknowledged
    /// sample. Every owner having pulled from every other owner then holds the union.
    pub(super) fn anti_entropy_done(&self, i: usize, settled: Duration) -> Result<(), String> {
        let last = self.acked.iter().map(|a| a.ts).max().unwrap_or(i64::MIN);
        match self.nodes[i].up.as_ref().and_then(|u| u.ae_clean_pass) {
            Some(p) if p.started >= settled && p.upto >= last => Ok(()),
            other => Err(format!(
                "node {i} has no complete anti-entropy pass since {settled:?} covering {last}: {other:?}"
            )),
        }
    }
}

//! Hinted handoff storage: the durable per-target queue of writes an owner missed.
//!
//! Owns: `<data>/hints/<node-id>/<seq>.hint`, one file per missed batch, the per-target
//! bookkeeping of the hint window and disk cap (`hint_window::TargetQueue`, one per
//! target, kept in memory and rebuilt from the files at start), the warnings when a
//! target's window or cap is exceeded and when it recovers (once per episode), and the
//! `timbala_handoff_*` and `timbala_hints_*` metrics. A file is
//! `"TBH1" | len u32 LE | crc32c u32 LE | payload` where the payload is exactly the body
//! of an internal write (snappy `prometheus.WriteRequest`), so replay re-sends it
//! unchanged. A hint is written to a temporary name, fsynced, renamed and the directory
//! fsynced before the write that produced it is acknowledged: a hint counts as a durable
//! copy (ADR 0006). A hint the window or cap refuses is not written at all (ADR 0017);
//! the caller decides what that means for the acknowledgement. The file's modification
//! time is its write time: after a restart the window of a target runs from its oldest
//! queued hint. Calls `hint_window`, std and crc32c.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::hint_window::{Admission, HintLimits, Limit, TargetQueue};
use crate::cluster::identity::NodeId;

const MAGIC: &[u8; 4] = b"TBH1";
const HEADER_LEN: usize = 12;
const HINT_EXT: &str = "hint";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Target {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLimit {
    target: String,
    limit: String,
}

/// Handoff metrics, labelled by the target node's id; a labelled family shows in
/// `/metrics` once it has a peer, so two unlabelled ones exist from start on every node
/// (a node of one too): the targets with hints queued, and the replay rounds run.
#[derive(Clone, Default)]
pub struct HandoffMetrics {
    targets_pending: Gauge,
    rounds: Counter,
    backlog: Family<Target, Gauge>,
    stored: Family<Target, Counter>,
    delivered: Family<Target, Counter>,
    failed: Family<Target, Counter>,
    bytes: Family<Target, Gauge>,
    oldest_age: Family<Target, Gauge>,
    exceeded: Family<TargetLimit, Gauge>,
    refused: Family<TargetLimit, Counter>,
    rerouted_files: Family<Target, Counter>,
    rerouted_series: Family<Target, Counter>,
}

impl HandoffMetrics {
    pub fn register(registry: &mut Registry) -> HandoffMetrics {
        let m = HandoffMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_handoff");
        r.register(
            "targets_pending",
            "Nodes this node holds hints for (0 when every owner has its copy)",
            m.targets_pending.clone(),
        );
        r.register(
            "rounds",
            "Hinted-handoff rounds run (replay, re-route, gauges), about one a second",
            m.rounds.clone(),
        );
        r.register(
            "backlog_batches",
            "Hinted batches waiting for their owner",
            m.backlog.clone(),
        );
        r.register(
            "stored",
            "Batches stored as hints for an owner that was down or failed",
            m.stored.clone(),
        );
        r.register(
            "delivered",
            "Hinted batches delivered to their owner",
            m.delivered.clone(),
        );
        r.register(
            "failed",
            "Hint deliveries that failed (retried later) or were refused or corrupt (dropped)",
            m.failed.clone(),
        );
        let r = registry.sub_registry_with_prefix("timbala_hints");
        r.register("files", "Hint files queued for a target", m.backlog.clone());
        r.register(
            "bytes",
            "Bytes of hint files queued for a target",
            m.bytes.clone(),
        );
        r.register(
            "oldest_age_seconds",
            "Age of the oldest hint queued for a target (0 when none)",
            m.oldest_age.clone(),
        );
        r.register(
            "exceeded",
            "1 while no new hints are written for a target because its hint window or disk cap was exceeded",
            m.exceeded.clone(),
        );
        r.register(
            "refused",
            "Hints not written because the target's hint window or disk cap was exceeded",
            m.refused.clone(),
        );
        r.register(
            "rerouted_files",
            "Hint files of a removed node delivered to the series' new owners and deleted",
            m.rerouted_files.clone(),
        );
        r.register(
            "rerouted_series",
            "Series of a removed node's hints delivered to their new owners",
            m.rerouted_series.clone(),
        );
        m
    }

    fn target(target: NodeId) -> Target {
        Target {
            target: target.to_string(),
        }
    }

    fn gauge(&self, target: NodeId) -> Gauge {
        self.backlog.get_or_create(&Self::target(target)).clone()
    }

    fn counter(family: &Family<Target, Counter>, target: NodeId) -> Counter {
        family.get_or_create(&Self::target(target)).clone()
    }

    fn with_limit(target: NodeId, limit: Limit) -> TargetLimit {
        TargetLimit {
            target: target.to_string(),
            limit: limit.label().to_string(),
        }
    }

    /// The gauges of one target from its queue.
    fn show(&self, target: NodeId, queue: &TargetQueue, oldest_age_seconds: i64) {
        self.gauge(target).set(queue.files as i64);
        self.bytes
            .get_or_create(&Self::target(target))
            .set(i64::try_from(queue.bytes).unwrap_or(i64::MAX));
        self.oldest_age
            .get_or_create(&Self::target(target))
            .set(oldest_age_seconds);
        for limit in [Limit::Window, Limit::Cap] {
            self.exceeded
                .get_or_create(&Self::with_limit(target, limit))
                .set(i64::from(queue.exceeded == Some(limit)));
        }
    }

    /// Creates a peer's counters at 0.
    fn touch_counters(&self, target: NodeId) {
        for family in [
            &self.stored,
            &self.delivered,
            &self.failed,
            &self.rerouted_files,
            &self.rerouted_series,
        ] {
            Self::counter(family, target);
        }
        for limit in [Limit::Window, Limit::Cap] {
            let _ = self.refused.get_or_create(&Self::with_limit(target, limit));
        }
    }

    /// A delivery attempt failed; the hint stays queued.
    pub fn on_failed_attempt(&self, target: NodeId) {
        Self::counter(&self.failed, target).inc();
    }
}

/// What became of a hint the replication asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hinted {
    /// Written and fsynced: it counts as the target's copy.
    Stored,
    /// Not written: the target's window or cap is exceeded.
    Refused(Limit),
}

/// Why a hint file left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The target acknowledged it.
    Delivered,
    /// The target refused it (4xx) or it failed its checksum.
    Dropped,
    /// The target was removed from the ring; the series' new owners acknowledged it.
    Rerouted { series: u64 },
}

/// Queued hints of one target, as the status page shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub target: NodeId,
    pub batches: u64,
    pub bytes: u64,
    /// Age of the oldest queued hint, seconds (None when none is queued).
    pub oldest_age_seconds: Option<u64>,
    /// When the current episode started (Unix ms).
    pub episode_start_ms: Option<u64>,
    /// The limit that stops new hints for this target, if one does.
    pub exceeded: Option<Limit>,
}

/// One target's bookkeeping: the queue plus the write time of its oldest file.
#[derive(Clone, Debug, Default)]
struct TargetState {
    queue: TargetQueue,
    oldest_ms: Option<u64>,
}

/// The hint directory of this node.
pub struct HintStore {
    root: PathBuf,
    next_seq: AtomicU64,
    limits: HintLimits,
    targets: Mutex<BTreeMap<NodeId, TargetState>>,
    metrics: HandoffMetrics,
}

impl HintStore {
    /// Opens (creating) `<data>/hints`, continuing the sequence after existing hints and
    /// rebuilding each target's queue (files, bytes, oldest write time) from the files.
    pub fn open(
        data_dir: &Path,
        metrics: HandoffMetrics,
        limits: HintLimits,
    ) -> io::Result<HintStore> {
        let root = data_dir.join("hints");
        fs::create_dir_all(&root)?;
        let store = HintStore {
            root,
            next_seq: AtomicU64::new(0),
            limits,
            targets: Mutex::new(BTreeMap::new()),
            metrics,
        };
        let mut max_seq = 0;
        for target in store.hint_dirs()? {
            remove_unfinished(&store.dir(target))?;
            let pending = store.pending(target)?;
            let mut bytes = 0;
            for file in &pending {
                bytes += fs::metadata(file)?.len();
            }
            let oldest_ms = pending.first().and_then(|f| written_ms(f));
            let queue = TargetQueue::recovered(pending.len() as u64, bytes, oldest_ms);
            store
                .lock()
                .insert(target, TargetState { queue, oldest_ms });
            if let Some(seq) = pending.last().and_then(|p| seq_of(p)) {
                max_seq = max_seq.max(seq + 1);
            }
        }
        store.next_seq.store(max_seq, Ordering::Relaxed);
        store.refresh_gauges(now_ms(), &[]);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<NodeId, TargetState>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn metrics(&self) -> &HandoffMetrics {
        &self.metrics
    }

    pub fn limits(&self) -> HintLimits {
        self.limits
    }

    fn dir(&self, target: NodeId) -> PathBuf {
        self.root.join(target.to_string())
    }

    /// Durably queues one internal-write body for `target`, unless the target's window or
    /// cap is exceeded (then nothing is written). Blocking (fsync).
    pub fn store(&self, target: NodeId, payload: &[u8]) -> io::Result<Hinted> {
        let size = (HEADER_LEN + payload.len()) as u64;
        let now = now_ms();
        let admission = self
            .lock()
            .entry(target)
            .or_default()
            .queue
            .admit(now, size, &self.limits);
        if let Admission::Refuse { limit, first } = admission {
            self.metrics
                .refused
                .get_or_create(&HandoffMetrics::with_limit(target, limit))
                .inc();
            if first {
                self.warn_exceeded(target, limit);
            }
            return Ok(Hinted::Refused(limit));
        }
        match self.write_file(target, payload) {
            Ok(()) => {
                let mut targets = self.lock();
                let state = targets.entry(target).or_default();
                state.queue.stored();
                state.oldest_ms.get_or_insert(now);
                HandoffMetrics::counter(&self.metrics.stored, target).inc();
                self.metrics.gauge(target).set(state.queue.files as i64);
                Ok(Hinted::Stored)
            }
            Err(e) => {
                if let Some(state) = self.lock().get_mut(&target) {
                    state.queue.unreserve(size);
                }
                Err(e)
            }
        }
    }

    fn warn_exceeded(&self, target: NodeId, limit: Limit) {
        let state = self.lock().get(&target).cloned().unwrap_or_default();
        let since_s = state
            .queue
            .episode_start_ms
            .map(|start| now_ms().saturating_sub(start) / 1000);
        match limit {
            Limit::Window => tracing::warn!(
                target_node = %target,
                window = ?self.limits.window,
                missing_for_seconds = since_s,
                queued_bytes = state.queue.bytes,
                "hint window exceeded: no new hints for this node until it is back and \
                 has taken its queued hints; writes are acknowledged only with a majority \
                 of real copies, and anti-entropy must restore this node's copy"
            ),
            Limit::Cap => tracing::warn!(
                target_node = %target,
                max_bytes_per_target = self.limits.max_bytes_per_target,
                queued_bytes = state.queue.bytes,
                "hint disk cap exceeded: no new hints for this node until it is back and \
                 has taken its queued hints; writes are acknowledged only with a majority \
                 of real copies, and anti-entropy must restore this node's copy"
            ),
        }
    }

    fn write_file(&self, target: NodeId, payload: &[u8]) -> io::Result<()> {
        let dir = self.dir(target);
        fs::create_dir_all(&dir)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{seq:020}.{HINT_EXT}");
        let tmp = dir.join(format!("{name}.tmp"));
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("hint payload larger than 4 GiB"))?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        let written = fs::File::create(&tmp).and_then(|mut file| {
            file.write_all(&header)?;
            file.write_all(payload)?;
            file.sync_all()
        });
        if let Err(e) = written {
            // A full disk must not keep the half-written hint: it holds the space.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, dir.join(&name))?;
        fs::File::open(&dir)?.sync_all()
    }

    /// Deletes a queued hint file of `target` (`file` from `pending`, `next` the file
    /// after it in that listing) and counts why it left. Blocking.
    pub fn remove(
        &self,
        target: NodeId,
        file: &Path,
        next: Option<&Path>,
        why: Removal,
    ) -> io::Result<()> {
        let size = fs::metadata(file)?.len();
        fs::remove_file(file)?;
        let mut targets = self.lock();
        let state = targets.entry(target).or_default();
        state.queue.removed(size);
        self.metrics.gauge(target).set(state.queue.files as i64);
        state.oldest_ms = if state.queue.files == 0 {
            None
        } else {
            // Replay goes oldest first: the next listed file is the oldest left, unless
            // the listing ended and newer hints arrived since (then list again).
            match next.and_then(written_ms) {
                Some(ms) => Some(ms),
                None => self
                    .pending(target)
                    .ok()
                    .and_then(|files| files.first().and_then(|f| written_ms(f))),
            }
        };
        drop(targets);
        match why {
            Removal::Delivered => {
                HandoffMetrics::counter(&self.metrics.delivered, target).inc();
            }
            Removal::Dropped => {
                HandoffMetrics::counter(&self.metrics.failed, target).inc();
            }
            Removal::Rerouted { series } => {
                HandoffMetrics::counter(&self.metrics.rerouted_files, target).inc();
                HandoffMetrics::counter(&self.metrics.rerouted_series, target).inc_by(series);
            }
        }
        Ok(())
    }

    /// The target is reachable and its queue was replayed: if nothing is queued any
    /// more its episode ends, and a window or cap it had exceeded is logged as recovered.
    pub fn end_episode_if_drained(&self, target: NodeId) {
        let recovered = self
            .lock()
            .get_mut(&target)
            .and_then(|s| s.queue.end_episode_if_drained());
        if let Some(limit) = recovered {
            tracing::warn!(
                target_node = %target,
                limit = limit.label(),
                "hinted handoff recovered: the node is back and took its queued hints; \
                 new hints are written for it again"
            );
        }
    }

    /// A removed target whose hints were all re-routed: forget it and its directory.
    pub fn forget_if_drained(&self, target: NodeId) {
        let mut targets = self.lock();
        if targets.get(&target).is_some_and(|s| !s.queue.is_empty()) {
            return;
        }
        targets.remove(&target);
        drop(targets);
        // Only an empty directory goes (a hint written meanwhile keeps it).
        let _ = fs::remove_dir(self.dir(target));
        self.metrics.show(target, &TargetQueue::default(), 0);
    }

    /// Targets with a hint directory or bookkeeping (refusals leave no directory).
    pub fn targets(&self) -> io::Result<Vec<NodeId>> {
        let mut out = self.hint_dirs()?;
        out.extend(self.lock().keys().copied());
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn hint_dirs(&self) -> io::Result<Vec<NodeId>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Hint files of a target, oldest first.
    pub fn pending(&self, target: NodeId) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = match fs::read_dir(self.dir(target)) {
            Ok(dir) => dir
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == HINT_EXT))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        files.sort();
        Ok(files)
    }

    /// Targets reads must count as lagging (ADR 0012), with their queued batches: hints
    /// queued, or writes missed without a hint in this episode (shown as at least 1).
    /// From memory: no file is read, so every internal read can report it.
    pub fn pending_batches(&self) -> Vec<(NodeId, u64)> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.queue.lagging())
            .map(|(&target, s)| (target, s.queue.files.max(1)))
            .collect()
    }

    /// Per target with hints queued or a limit exceeded: the backlog, from memory.
    pub fn backlog(&self) -> Vec<Backlog> {
        let now = now_ms();
        self.lock()
            .iter()
            .filter(|(_, s)| s.queue.lagging() || !s.queue.is_empty())
            .map(|(&target, s)| Backlog {
                target,
                batches: s.queue.files,
                bytes: s.queue.bytes,
                oldest_age_seconds: s.oldest_ms.map(|ms| now.saturating_sub(ms) / 1000),
                episode_start_ms: s.queue.episode_start_ms,
                exceeded: s.queue.exceeded,
            })
            .collect()
    }

    /// Sets the `timbala_hints_*` series of every known target and of every `peer` (at 0
    /// for a peer never hinted, so they exist before the first outage). The oldest age
    /// moves with time: the handoff task calls this every round.
    pub fn refresh_gauges(&self, now_ms: u64, peers: &[NodeId]) {
        let targets = self.lock();
        let pending = targets.values().filter(|s| s.queue.files > 0).count();
        self.metrics
            .targets_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics.rounds.inc();
        for (target, state) in targets.iter() {
            let age = state
                .oldest_ms
                .map_or(0, |ms| now_ms.saturating_sub(ms) / 1000);
            self.metrics.show(
                *target,
                &state.queue,
                i64::try_from(age).unwrap_or(i64::MAX),
            );
        }
        for peer in peers.iter().filter(|p| !targets.contains_key(p)) {
            self.metrics.show(*peer, &TargetQueue::default(), 0);
            self.metrics.touch_counters(*peer);
        }
    }
}

/// Deletes the temporary files of hints whose write a crash interrupted: they were
/// never acknowledged, and they would take disk the cap does not count.
fn remove_unfinished(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Now as Unix milliseconds.
pub fn now_ms() -> u64 {
    crate::cluster::identity::unix_millis()
}

/// When a hint file was written (its modification time), Unix ms.
fn written_ms(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    let since = modified.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

/// Reads one hint file and checks its frame and checksum.
pub fn read_hint(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_hint(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn decode_hint(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err("not a hint file".into());
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(format!("length {} but header says {len}", payload.len()));
    }
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &Path, limits: HintLimits) -> HintStore {
        HintStore::open(dir, HandoffMetrics::default(), limits).expect("open")
    }

    #[test]
    fn hints_round_trip_in_order_and_survive_reopen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let target = NodeId(42);
        let store = open(tmp.path(), HintLimits::DEFAULT);
        assert_eq!(
            store.store(target, b"first").expect("store"),
            Hinted::Stored
        );
        store.store(target, b"second").expect("store");
        drop(store);
        let store = open(tmp.path(), HintLimits::DEFAULT);
        store.store(target, b"third").expect("store");
        let files = store.pending(target).expect("pending");
        let bodies: Vec<Vec<u8>> = files.iter().map(|f| read_hint(f).expect("ok")).collect();
        assert_eq!(
            bodies,
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
        assert_eq!(store.targets().expect("targets"), vec![target]);
        let backlog = &store.backlog()[0];
        assert_eq!(backlog.batches, 3);
        assert_eq!(backlog.bytes, (3 * HEADER_LEN + 5 + 6 + 5) as u64);
        assert!(backlog.oldest_age_seconds.is_some());
        assert_eq!(store.pending_batches(), [(target, 3)]);
        store
            .remove(
                target,
                &files[0],
                files.get(1).map(PathBuf::as_path),
                Removal::Delivered,
            )
            .expect("remove");
        assert_eq!(store.pending_batches(), [(target, 2)]);
        assert_eq!(store.backlog()[0].bytes, (2 * HEADER_LEN + 6 + 5) as u64);
    }

    #[test]
    fn the_cap_keeps_the_directory_bounded_and_a_drained_target_recovers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let target = NodeId(7);
        let limits = HintLimits {
            window: Duration::from_secs(3600),
            max_bytes_per_target: 100,
        };
        let store = open(tmp.path(), limits);
        let payload = [0u8; 38]; // 50 bytes a file
        assert_eq!(store.store(target, &payload).expect("1"), Hinted::Stored);
        assert_eq!(store.store(target, &payload).expect("2"), Hinted::Stored);
        for _ in 0..5 {
            assert_eq!(
                store.store(target, &payload).expect("refused"),
                Hinted::Refused(Limit::Cap)
            );
        }
        let on_disk: u64 = store
            .pending(target)
            .expect("pending")
            .iter()
            .map(|f| fs::metadata(f).expect("stat").len())
            .sum();
        assert_eq!(on_disk, 100);
        assert_eq!(store.backlog()[0].exceeded, Some(Limit::Cap));
        // The limit holds across a restart too (found again from the files).
        drop(store);
        let store = open(tmp.path(), limits);
        assert_eq!(
            store.store(target, &payload).expect("refused"),
            Hinted::Refused(Limit::Cap)
        );
        let files = store.pending(target).expect("pending");
        for (i, f) in files.iter().enumerate() {
            store.end_episode_if_drained(target);
            assert_eq!(store.backlog()[0].exceeded, Some(Limit::Cap), "not drained");
            store
                .remove(
                    target,
                    f,
                    files.get(i + 1).map(PathBuf::as_path),
                    Removal::Delivered,
                )
                .expect("remove");
        }
        store.end_episode_if_drained(target);
        assert!(store.backlog().is_empty());
        assert!(store.pending_batches().is_empty());
        assert_eq!(
            store.store(target, &payload).expect("again"),
            Hinted::Stored
        );
    }

    #[test]
    fn a_refused_target_counts_as_lagging_without_a_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let limits = HintLimits {
            window: Duration::ZERO,
            max_bytes_per_target: 1 << 20,
        };
        let store = open(tmp.path(), limits);
        assert_eq!(
            store.store(NodeId(3), b"x").expect("refused"),
            Hinted::Refused(Limit::Window)
        );
        assert!(store.pending(NodeId(3)).expect("pending").is_empty());
        assert_eq!(store.pending_batches(), [(NodeId(3), 1)]);
        assert_eq!(store.targets().expect("targets"), [NodeId(3)]);
        store.forget_if_drained(NodeId(3));
        assert!(store.targets().expect("targets").is_empty());
    }

    #[test]
    fn unfinished_hints_are_removed_at_start() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = open(tmp.path(), HintLimits::DEFAULT);
        store.store(NodeId(5), b"done").expect("store");
        let dir = store.dir(NodeId(5));
        fs::write(dir.join("00000000000000000009.hint.tmp"), b"TBH1half").expect("tmp");
        drop(store);
        let store = open(tmp.path(), HintLimits::DEFAULT);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(store.backlog()[0].bytes, (HEADER_LEN + 4) as u64);
    }

    #[test]
    fn corrupt_hints_are_detected() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = open(tmp.path(), HintLimits::DEFAULT);
        store.store(NodeId(1), b"payload").expect("store");
        let file = store.pending(NodeId(1)).expect("pending").remove(0);
        let mut bytes = fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&file, &bytes).expect("write");
        assert!(read_hint(&file).is_err());
        assert!(decode_hint(b"TBH1").is_err());
    }
}

//! Hinted handoff storage: the durable per-target queue of writes an owner missed.
//!
//! Owns: `<data>/hints/<node-id>/<seq>.hint`, one file per missed batch, and the
//! handoff metrics. A file is `"TBH1" | len u32 LE | crc32c u32 LE | payload` where the
//! payload is exactly the body of an internal write (snappy `prometheus.WriteRequest`),
//! so replay re-sends it unchanged. A hint is written to a temporary name, fsynced,
//! renamed and the directory fsynced before the write that produced it is acknowledged:
//! a hint counts as a durable copy (ADR 0006). Calls only std and crc32c.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::identity::NodeId;

const MAGIC: &[u8; 4] = b"TBH1";
const HEADER_LEN: usize = 12;
const HINT_EXT: &str = "hint";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Target {
    target: String,
}

/// Handoff metrics, labelled by the target node's id.
#[derive(Clone, Default)]
pub struct HandoffMetrics {
    backlog: Family<Target, Gauge>,
    stored: Family<Target, Counter>,
    delivered: Family<Target, Counter>,
    failed: Family<Target, Counter>,
}

impl HandoffMetrics {
    pub fn register(registry: &mut Registry) -> HandoffMetrics {
        let m = HandoffMetrics::default();
        let r = registry.sub_registry_with_prefix("timbala_handoff");
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
        m
    }

    fn gauge(&self, target: NodeId) -> Gauge {
        self.backlog
            .get_or_create(&Target {
                target: target.to_string(),
            })
            .clone()
    }

    fn counter(family: &Family<Target, Counter>, target: NodeId) -> Counter {
        family
            .get_or_create(&Target {
                target: target.to_string(),
            })
            .clone()
    }

    pub fn on_delivered(&self, target: NodeId) {
        Self::counter(&self.delivered, target).inc();
        self.gauge(target).dec();
    }

    /// A delivery attempt failed; the hint stays queued.
    pub fn on_failed_attempt(&self, target: NodeId) {
        Self::counter(&self.failed, target).inc();
    }

    /// A hint was dropped (refused by its owner or corrupt).
    pub fn on_dropped(&self, target: NodeId) {
        Self::counter(&self.failed, target).inc();
        self.gauge(target).dec();
    }
}

/// Waiting hints of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub target: NodeId,
    pub batches: u64,
    pub bytes: u64,
}

/// The hint directory of this node.
pub struct HintStore {
    root: PathBuf,
    next_seq: AtomicU64,
    metrics: HandoffMetrics,
}

impl HintStore {
    /// Opens (creating) `<data>/hints`, continuing the sequence after existing hints.
    pub fn open(data_dir: &Path, metrics: HandoffMetrics) -> io::Result<HintStore> {
        let root = data_dir.join("hints");
        fs::create_dir_all(&root)?;
        let store = HintStore {
            root,
            next_seq: AtomicU64::new(0),
            metrics,
        };
        let mut max_seq = 0;
        for target in store.targets()? {
            let pending = store.pending(target)?;
            store.metrics.gauge(target).set(pending.len() as i64);
            if let Some(seq) = pending.last().and_then(|p| seq_of(p)) {
                max_seq = max_seq.max(seq + 1);
            }
        }
        store.next_seq.store(max_seq, Ordering::Relaxed);
        Ok(store)
    }

    pub fn metrics(&self) -> &HandoffMetrics {
        &self.metrics
    }

    fn dir(&self, target: NodeId) -> PathBuf {
        self.root.join(target.to_string())
    }

    /// Durably queues one internal-write body for `target`. Blocking (fsync).
    pub fn store(&self, target: NodeId, payload: &[u8]) -> io::Result<()> {
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
        fs::File::open(&dir)?.sync_all()?;
        HandoffMetrics::counter(&self.metrics.stored, target).inc();
        self.metrics.gauge(target).inc();
        Ok(())
    }

    /// Targets with a hint directory.
    pub fn targets(&self) -> io::Result<Vec<NodeId>> {
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

    /// Waiting batches per target, from the in-memory backlog gauges (no file is read,
    /// so every internal read can report it); targets with none are left out.
    pub fn pending_batches(&self) -> Vec<(NodeId, u64)> {
        let mut out: Vec<(NodeId, u64)> = self
            .targets()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|target| {
                let batches = u64::try_from(self.metrics.gauge(target).get()).ok()?;
                (batches > 0).then_some((target, batches))
            })
            .collect();
        out.sort();
        out
    }

    /// Waiting hints per target (targets with none are left out).
    pub fn backlog(&self) -> Vec<Backlog> {
        let mut out = Vec::new();
        for target in self.targets().unwrap_or_default() {
            let files = self.pending(target).unwrap_or_default();
            if files.is_empty() {
                continue;
            }
            let bytes = files
                .iter()
                .filter_map(|f| fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            out.push(Backlog {
                target,
                batches: files.len() as u64,
                bytes,
            });
        }
        out.sort_by_key(|b| b.target);
        out
    }
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

    #[test]
    fn hints_round_trip_in_order_and_survive_reopen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let target = NodeId(42);
        let store = HintStore::open(tmp.path(), HandoffMetrics::default()).expect("open");
        store.store(target, b"first").expect("store");
        store.store(target, b"second").expect("store");
        drop(store);
        let store = HintStore::open(tmp.path(), HandoffMetrics::default()).expect("reopen");
        store.store(target, b"third").expect("store");
        let files = store.pending(target).expect("pending");
        let bodies: Vec<Vec<u8>> = files.iter().map(|f| read_hint(f).expect("ok")).collect();
        assert_eq!(
            bodies,
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
        assert_eq!(store.targets().expect("targets"), vec![target]);
        assert_eq!(store.backlog()[0].batches, 3);
        assert_eq!(store.pending_batches(), [(target, 3)]);
        store.metrics().on_delivered(target);
        assert_eq!(store.pending_batches(), [(target, 2)]);
    }

    #[test]
    fn corrupt_hints_are_detected() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = HintStore::open(tmp.path(), HandoffMetrics::default()).expect("open");
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

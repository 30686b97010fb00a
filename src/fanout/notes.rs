//! What a fanned-out read says about its own completeness (ADR 0012).
//!
//! Owns: the `ReadReport` of one fan-out (nodes that did not answer and why, replicas
//! that lag behind hinted writes), the rule that turns it into Prometheus's `warnings`
//! and `infos` or into a refusal, the wording of those texts, and the task-local
//! collector that carries them to the HTTP answer. The `Storage` trait returns data
//! only, so the HTTP handler opens a collector around its storage calls (`collect`) and
//! every fan-out made inside it adds its notes (deduplicated: a query with several
//! selectors fans out several times). Reads outside a collector (remote read,
//! federation: their formats have no warnings) are logged and counted only.
//! Calls `cluster::identity` (node ids) only.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cluster::identity::NodeId;

/// The warnings and infos of one HTTP answer, in first-seen order, each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadNotes {
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    /// The HTTP addresses of the nodes the reads asked (this node included), for the
    /// slow-query log; never shown in an answer.
    pub nodes_asked: Vec<String>,
}

impl ReadNotes {
    fn absorb(&mut self, other: ReadNotes) {
        for (into, from) in [
            (&mut self.warnings, other.warnings),
            (&mut self.infos, other.infos),
            (&mut self.nodes_asked, other.nodes_asked),
        ] {
            for note in from {
                if !into.contains(&note) {
                    into.push(note);
                }
            }
        }
    }
}

tokio::task_local! {
    static COLLECTOR: Arc<Mutex<ReadNotes>>;
}

/// Runs `fut` (an HTTP handler's storage calls) and returns its output with the notes
/// every fan-out inside it left. Fan-outs run on the calling task (the engine loads
/// data before it hands evaluation to a blocking thread), which is what makes a
/// task-local the right carrier.
pub async fn collect<F: std::future::Future>(fut: F) -> (F::Output, ReadNotes) {
    let cell = Arc::new(Mutex::new(ReadNotes::default()));
    let output = COLLECTOR.scope(cell.clone(), fut).await;
    let notes = std::mem::take(&mut *cell.lock().unwrap_or_else(PoisonError::into_inner));
    (output, notes)
}

/// Hands notes to the enclosing collector; false when there is none.
pub(super) fn record(notes: ReadNotes) -> bool {
    COLLECTOR
        .try_with(|cell| {
            cell.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .absorb(notes)
        })
        .is_ok()
}

/// Why a node's answer is not part of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Absence {
    /// Down (or never heard from) in this node's view: not asked.
    Down,
    /// Still silent this long after the answers in hand held every series.
    NoAnswer(Duration),
    /// Gossip declared it down while the read was waiting for it.
    DeclaredDown,
    /// It answered with an error, or could not be reached.
    Failed(String),
    /// The node doing the read: its own store failed (disk, corruption).
    LocalStoreFailed(String),
}

impl std::fmt::Display for Absence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Absence::Down => f.write_str("down in the cluster view"),
            Absence::NoAnswer(after) => write!(
                f,
                "no answer {after:?} after the other replicas had answered"
            ),
            Absence::DeclaredDown => f.write_str("declared down while the read waited for it"),
            Absence::Failed(error) => write!(f, "failed: {error}"),
            Absence::LocalStoreFailed(error) => {
                write!(f, "the answering node's own store failed: {error}")
            }
        }
    }
}

/// A node left out of a read, named by its HTTP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Missing {
    pub id: NodeId,
    pub addr: String,
    pub why: Absence,
}

/// Hinted write batches for `target` that `holder` has not delivered yet: `target`'s
/// own data lacks them until they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lag {
    pub target: NodeId,
    pub target_addr: String,
    pub holder_addr: String,
    pub batches: u64,
}

/// What one fan-out knows about the completeness of its answers.
#[derive(Debug)]
pub(super) struct ReadReport {
    /// Replicas per series (`min(3, ring size)`).
    pub replicas: usize,
    pub missing: Vec<Missing>,
    pub lags: Vec<Lag>,
}

impl ReadReport {
    pub fn new(replicas: usize) -> ReadReport {
        ReadReport {
            replicas: replicas.max(1),
            missing: Vec::new(),
            lags: Vec::new(),
        }
    }

    /// With `replicas` or more nodes missing, some series may have had no owner answer:
    /// the read is refused rather than answered looking complete.
    pub fn refused(&self) -> bool {
        self.missing.len() >= self.replicas
    }

    /// The refusal's text, naming the missing nodes.
    pub fn refusal(&self) -> String {
        format!(
            "{} nodes did not answer ({}); with {} replicas per series some series may have \
             no replica that answered, so no answer is given",
            self.missing.len(),
            self.missing_list(),
            self.replicas
        )
    }

    fn missing_list(&self) -> String {
        let named: Vec<String> = self
            .missing
            .iter()
            .map(|m| format!("{}: {}", m.addr, m.why))
            .collect();
        named.join("; ")
    }

    /// Warnings and infos of an answer given with this report (never called when
    /// refused). Every missing node is a warning: it may hold samples no other replica
    /// has (writes acknowledged with hints on it while others were unreachable, ADR
    /// 0006). A lagging replica is a warning unless the answer is provably complete:
    /// every node answered, so every pending hint is known, and fewer nodes lag than a
    /// series has replicas, so every series was read from an owner with no pending hint.
    /// Then it is an info.
    pub fn notes(&self) -> ReadNotes {
        let mut notes = ReadNotes::default();
        for m in &self.missing {
            notes.warnings.push(format!(
                "answered without node {} ({}); samples only that node holds may be missing",
                m.addr, m.why
            ));
        }
        let missing: BTreeSet<NodeId> = self.missing.iter().map(|m| m.id).collect();
        let lags: Vec<&Lag> = self
            .lags
            .iter()
            .filter(|l| !missing.contains(&l.target))
            .collect();
        let lagging: BTreeSet<NodeId> = lags.iter().map(|l| l.target).collect();
        let provably_complete = missing.is_empty() && lagging.len() < self.replicas;
        for lag in lags {
            if provably_complete {
                notes.infos.push(format!(
                    "node {} is catching up on {} hinted write batches held by node {}; \
                     every series was read from a replica that has all its samples",
                    lag.target_addr, lag.batches, lag.holder_addr
                ));
            } else {
                notes.warnings.push(format!(
                    "node {} lacks {} hinted write batches still held by node {}; \
                     samples in them may be missing",
                    lag.target_addr, lag.batches, lag.holder_addr
                ));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(id: u128, why: Absence) -> Missing {
        Missing {
            id: NodeId(id),
            addr: format!("node-{id}:9080"),
            why,
        }
    }

    fn lag(target: u128, holder: u128, batches: u64) -> Lag {
        Lag {
            target: NodeId(target),
            target_addr: format!("node-{target}:9080"),
            holder_addr: format!("node-{holder}:9080"),
            batches,
        }
    }

    #[test]
    fn a_complete_read_has_no_notes() {
        let report = ReadReport::new(3);
        assert!(!report.refused());
        assert_eq!(report.notes(), ReadNotes::default());
    }

    #[test]
    fn every_missing_node_is_named_in_a_warning() {
        let mut report = ReadReport::new(3);
        report.missing.push(missing(2, Absence::Down));
        report
            .missing
            .push(missing(3, Absence::NoAnswer(Duration::from_secs(2))));
        assert!(!report.refused(), "two of three replicas may be missing");
        let notes = report.notes();
        assert_eq!(
            notes.warnings,
            [
                "answered without node node-2:9080 (down in the cluster view); samples only \
                 that node holds may be missing",
                "answered without node node-3:9080 (no answer 2s after the other replicas \
                 had answered); samples only that node holds may be missing",
            ]
        );
        assert!(notes.infos.is_empty());
    }

    #[test]
    fn as_many_missing_nodes_as_replicas_refuse_the_read() {
        let mut report = ReadReport::new(3);
        report.missing.push(missing(2, Absence::DeclaredDown));
        report.missing.push(missing(3, Absence::Down));
        report
            .missing
            .push(missing(4, Absence::Failed("connection refused".into())));
        assert!(report.refused());
        let text = report.refusal();
        assert!(text.starts_with("3 nodes did not answer (node-2:9080: declared down"));
        assert!(text.contains("node-4:9080: failed: connection refused"));
        // A one-node ring has one replica: it is never refused for a missing peer it
        // does not have, but a two-node ring refuses with both of two missing.
        let mut two = ReadReport::new(2);
        two.missing.push(missing(2, Absence::Down));
        assert!(!two.refused());
        two.missing.push(missing(3, Absence::Down));
        assert!(two.refused());
    }

    #[test]
    fn lagging_replicas_are_infos_only_while_the_answer_is_provably_complete() {
        // Every node answered and two of three replicas lag: each series still had an
        // owner with every sample.
        let mut report = ReadReport::new(3);
        report.lags.push(lag(1, 3, 4));
        report.lags.push(lag(2, 3, 5));
        let notes = report.notes();
        assert!(notes.warnings.is_empty());
        assert_eq!(
            notes.infos[0],
            "node node-1:9080 is catching up on 4 hinted write batches held by node \
             node-3:9080; every series was read from a replica that has all its samples"
        );
        // Three lagging nodes: a series owned by exactly those may miss samples.
        report.lags.push(lag(4, 3, 1));
        assert_eq!(report.notes().warnings.len(), 3);
        // A missing node may hold hints nobody reported: nothing is provable then; its
        // own lag is already covered by its warning.
        let mut report = ReadReport::new(3);
        report.missing.push(missing(2, Absence::Down));
        report.lags.push(lag(2, 1, 7));
        report.lags.push(lag(1, 3, 2));
        let notes = report.notes();
        assert_eq!(notes.warnings.len(), 2);
        assert!(notes.warnings[1].starts_with("node node-1:9080 lacks 2 hinted write"));
        assert!(notes.infos.is_empty());
    }

    #[tokio::test]
    async fn notes_reach_the_enclosing_collector_once_each() {
        let mut report = ReadReport::new(3);
        report.missing.push(missing(2, Absence::Down));
        let ((), notes) = collect(async {
            assert!(record(report.notes()));
            assert!(record(report.notes()));
        })
        .await;
        assert_eq!(notes, report.notes());
        assert!(!record(report.notes()), "no collector outside `collect`");
    }
}

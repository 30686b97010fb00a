//! A node's identity: who this node is across restarts, and how it is named in gossip.
//!
//! Owns: `NodeId` (a random 128-bit id chosen once), `NodeIdentity` (what foca gossips
//! about a node: id, generation, join sequence, gossip and HTTP addresses), the
//! `<data>/node.json` file that keeps it across restarts (written with write, fsync,
//! rename, fsync of the directory), and the crash-safe file writer the ring reuses.
//! Calls only std, serde and foca's `Identity` trait.
//!
//! Why a generation: SWIM remembers a member declared down, and a member cannot come
//! back under an identity the cluster holds as down. Each start (and each `renew` after
//! being declared down) gets a higher generation, so a restarted node is a *new* foca
//! identity for the same `NodeId` and wins the address conflict with its old self at
//! once instead of waiting for the cluster to forget it.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// File in the data directory that holds this node's identity.
pub const IDENTITY_FILE: &str = "node.json";

/// Longest HTTP advertise address accepted from the wire (a DNS name is at most 253).
pub const MAX_HTTP_ADDR_LEN: usize = 300;

/// A node's stable id: random, chosen when its data directory is first used. Written
/// as 32 hex digits in text formats (JSON) and as an integer in binary ones (gossip).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u128);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(d).map(NodeId)
        }
    }
}

impl NodeId {
    /// A fresh random id from the operating system's randomness.
    pub fn random() -> NodeId {
        NodeId(StdRng::from_os_rng().random::<u128>())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(format!("node id must be 32 hex digits, got {s:?}"));
        }
        u128::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|e| format!("node id {s:?}: {e}"))
    }
}

/// What the cluster knows about one node, as carried in every gossip message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "WireIdentity")]
pub struct NodeIdentity {
    pub id: NodeId,
    /// Higher for every start and every rejoin of the same node (see the module doc).
    pub generation: u64,
    /// Position in the join order, chosen once when the node first joins (ADR 0005);
    /// `None` while a new node is still learning the cluster.
    pub join_seq: Option<u64>,
    /// Where this node receives gossip (UDP).
    pub gossip_addr: SocketAddr,
    /// Where other nodes reach this node's HTTP API (`host:port`).
    pub http_addr: String,
}

/// The same fields as decoded from the wire, before validation.
#[derive(Deserialize)]
struct WireIdentity {
    id: NodeId,
    generation: u64,
    join_seq: Option<u64>,
    gossip_addr: SocketAddr,
    http_addr: String,
}

impl TryFrom<WireIdentity> for NodeIdentity {
    type Error = String;
    fn try_from(w: WireIdentity) -> Result<Self, Self::Error> {
        if w.http_addr.len() > MAX_HTTP_ADDR_LEN {
            return Err(format!("http address of {} bytes", w.http_addr.len()));
        }
        Ok(NodeIdentity {
            id: w.id,
            generation: w.generation,
            join_seq: w.join_seq,
            gossip_addr: w.gossip_addr,
            http_addr: w.http_addr,
        })
    }
}

impl NodeIdentity {
    /// The stand-in identity used to announce to a peer known only by its address: foca
    /// accepts an announce addressed to any identity with the receiver's address.
    pub fn placeholder(gossip_addr: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            id: NodeId(0),
            generation: 0,
            join_seq: None,
            gossip_addr,
            http_addr: String::new(),
        }
    }

    /// This identity with a higher generation (for a start or a rejoin).
    pub fn next_generation(&self) -> NodeIdentity {
        NodeIdentity {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        }
    }

    /// The total order used to resolve two identities at one gossip address: the newer
    /// generation wins, then an assigned join sequence, then the larger fields, so every
    /// node keeps the same one.
    fn conflict_rank(&self) -> (u64, Option<u64>, NodeId, &str) {
        (self.generation, self.join_seq, self.id, &self.http_addr)
    }
}

impl foca::Identity for NodeIdentity {
    /// Foca tracks members by gossip address: an announce to a peer known only by its
    /// address must be accepted by it, and foca routes by `addr`.
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(self.next_generation())
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.conflict_rank() > adversary.conflict_rank()
    }
}

/// Loads this node's identity from `data_dir`, or creates one, for a new start (see
/// `for_start`). The result is persisted before it is returned.
pub fn load_for_start(
    data_dir: &Path,
    gossip_addr: SocketAddr,
    http_addr: &str,
) -> io::Result<NodeIdentity> {
    let identity = for_start(
        load(data_dir)?,
        unix_millis(),
        gossip_addr,
        http_addr,
        NodeId::random,
    );
    save(data_dir, &identity)?;
    Ok(identity)
}

/// The identity of a start at wall-clock `now_ms`: the previous one with a generation
/// higher than any earlier start's and today's addresses, or a new one (id from
/// `new_id`) still choosing its place. Pure, so the simulator starts nodes the same way.
pub fn for_start(
    previous: Option<NodeIdentity>,
    now_ms: u64,
    gossip_addr: SocketAddr,
    http_addr: &str,
    new_id: impl FnOnce() -> NodeId,
) -> NodeIdentity {
    match previous {
        Some(previous) => NodeIdentity {
            generation: now_ms.max(previous.generation.saturating_add(1)),
            gossip_addr,
            http_addr: http_addr.to_string(),
            ..previous
        },
        None => NodeIdentity {
            id: new_id(),
            generation: now_ms,
            join_seq: None,
            gossip_addr,
            http_addr: http_addr.to_string(),
        },
    }
}

/// Reads `<data_dir>/node.json`; `None` when the file does not exist. A file that exists
/// but cannot be read is an error, never silently replaced: replacing it would make this
/// node a stranger to its own cluster.
pub fn load(data_dir: &Path) -> io::Result<Option<NodeIdentity>> {
    let path = data_dir.join(IDENTITY_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Writes `<data_dir>/node.json` crash-safely.
pub fn save(data_dir: &Path, identity: &NodeIdentity) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(identity).map_err(io::Error::other)?;
    write_atomically(&data_dir.join(IDENTITY_FILE), &bytes)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file:
/// write a temporary sibling, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): generations, and the
/// stamps of sealed datagrams and signed requests.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_restarted_node_is_the_same_node_with_a_higher_generation() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_for_start(dir.path(), addr(7946), "a:9080").unwrap();
        assert_eq!(first.join_seq, None);
        let placed = NodeIdentity {
            join_seq: Some(4),
            ..first.clone()
        };
        save(dir.path(), &placed).unwrap();

        let second = load_for_start(dir.path(), addr(7947), "b:9080").unwrap();
        assert_eq!(second.id, first.id);
        assert_eq!(second.join_seq, Some(4), "join position survives a restart");
        assert!(second.generation > first.generation);
        assert_eq!(second.gossip_addr, addr(7947), "addresses are today's");
        assert_eq!(second.http_addr, "b:9080");
        assert_eq!(load(dir.path()).unwrap(), Some(second));
        assert!(!dir.path().join("node.json.tmp").exists());
    }

    #[test]
    fn a_new_data_directory_gets_a_new_id() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ia = load_for_start(a.path(), addr(1), "a:1").unwrap();
        let ib = load_for_start(b.path(), addr(1), "a:1").unwrap();
        assert_ne!(ia.id, ib.id);
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_new_node() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"{\"id\": 12").unwrap();
        let err = load_for_start(dir.path(), addr(1), "a:1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::write(
            dir.path().join(IDENTITY_FILE),
            br#"{"id":"xyz","generation":1,"join_seq":null,"gossip_addr":"127.0.0.1:1","http_addr":""}"#,
        )
        .unwrap();
        assert_eq!(
            load(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn node_id_text_round_trips() {
        let id = NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
        assert!("12".parse::<NodeId>().is_err());
        assert!("g123456789abcdef0011223344556677"
            .parse::<NodeId>()
            .is_err());
    }

    #[test]
    fn renewed_identity_wins_the_address_conflict() {
        let old = NodeIdentity {
            id: NodeId(7),
            generation: 10,
            join_seq: Some(1),
            gossip_addr: addr(1),
            http_addr: "h:1".into(),
        };
        let new = old.renew().unwrap();
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        // A node that just took its join sequence beats its own pending self.
        let pending = NodeIdentity {
            join_seq: None,
            ..old.clone()
        };
        assert!(old.win_addr_conflict(&pending));
        assert!(!pending.win_addr_conflict(&old));
    }
}

//! Membership: the SWIM runtime (foca over tokio UDP) that tells which nodes exist and
//! whether they are alive, suspect or down, and keeps the join order (`ring`) in step.
//!
//! Owns: the gossip socket, foca's timers, announcing to `--peers` until one answers,
//! the ring-sync messages that carry the join order (including nodes foca has
//! forgotten), choosing this node's join sequence once the cluster has settled (ADR
//! 0005), graceful leave, the `timbala_cluster_*` metrics, and the published
//! `ClusterView`. Everything runs on one task that owns all state: no locks.
//!
//! Sans-I/O (ADR 0019): all of that logic lives in `MembershipCore`, a state machine fed
//! `(now, event)` (a datagram, a due timer, a ring-sync tick, an announce, a command)
//! that queues datagrams, keeps foca's timers, persists through a `Host` and returns
//! views. `Runtime` drives it with tokio and a UDP socket (and resolves peer names);
//! the simulator in tests/sim drives the very same core over a virtual network and
//! clock.
//!
//! Calls `identity` (load and persist who we are), `ring` (merge and persist the join
//! order) and foca. Nothing here calls the storage or HTTP layers: they read
//! `MembershipHandle`.
//!
//! Datagram framing: `[PROTOCOL_VERSION, kind, payload..]`, kind `KIND_SWIM` (a foca
//! packet) or `KIND_RING` (a postcard-encoded `RingSync`). With cluster keys every
//! datagram travels sealed (`seal`), and one that does not open is dropped and counted
//! before any of it is parsed; ring records are admitted by `RingState::admit` (a node
//! refutes its own removal; ADR 0014).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_foca::SeedableRng as _;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::identity::{self, unix_millis, NodeId, NodeIdentity};
use crate::cluster::keys::ClusterKeys;
use crate::cluster::ring::{Admission, Refusal, Ring, RingEntry, RingNode, RingState};
use crate::cluster::seal::{Rejection, Sealer, NONCE_BYTES, SEALED_MARKER, SEAL_OVERHEAD};

/// First byte of every datagram; a node drops datagrams of another version.
pub const PROTOCOL_VERSION: u8 = 1;
const KIND_SWIM: u8 = 0;
const KIND_RING: u8 = 1;
/// Ring entries per ring-sync datagram: small enough to stay under a LAN MTU with
/// ordinary addresses. The ring is a CRDT, so any subset is a valid message.
const RING_ENTRIES_PER_DATAGRAM: usize = 12;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// First retry delay for announcing to the peers; doubles up to `announce_backoff_max`.
const ANNOUNCE_BACKOFF_START: Duration = Duration::from_millis(100);
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// A new node defers to a new node with a smaller id for at most this many settle
/// periods (that node may be stuck).
const PENDING_PATIENCE: u32 = 10;
/// A member suspect for this many suspicion timeouts is declared down by this node (see
/// `MembershipCore::expire_stale_suspicions`).
const STALE_SUSPICION_FACTOR: u32 = 3;

/// Settings of one node's membership.
#[derive(Clone)]
pub struct MembershipConfig {
    /// Where `node.json` and `ring.json` live.
    pub data_directory: PathBuf,
    /// UDP address the gossip socket binds.
    pub bind_addr: SocketAddr,
    /// Address other nodes send gossip to (`host:port`, resolved once at start). By
    /// default the bind address, or when that is a wildcard, `choose_advertise_ip`'s
    /// pick (the route towards a peer, the host name's, an interface's). Loopback is
    /// refused while a peer is on another host (`check_reachable`).
    pub advertise_addr: Option<String>,
    /// Where other nodes reach this node's HTTP API; carried in gossip. A wildcard IP
    /// is replaced by the gossip advertise IP at start (`http_advertise_for`).
    pub http_advertise_addr: String,
    /// Gossip addresses (`host:port`) to announce to until one answers.
    pub peers: Vec<String>,
    /// SWIM timing (probe period, suspicion timeout, ...).
    pub swim: foca::Config,
    /// A new node takes its join sequence once membership has not changed for this long.
    pub settle: Duration,
    /// How often the ring is pushed to a random member (anti-entropy).
    pub ring_sync_interval: Duration,
    /// Longest wait between announces while no peer has answered.
    pub announce_backoff_max: Duration,
    /// How often a node announces to one ring node it does not see as active.
    pub reconnect_interval: Duration,
    /// Cluster keys: when set, every datagram is sealed and only sealed ones are
    /// accepted. None: an open cluster (any sender is believed).
    pub keys: Option<ClusterKeys>,
    pub metrics: ClusterMetrics,
}

impl MembershipConfig {
    /// Defaults for a LAN cluster of a few nodes.
    pub fn new(
        data_directory: PathBuf,
        bind_addr: SocketAddr,
        http_advertise_addr: String,
    ) -> MembershipConfig {
        // A down node's place is kept by the ring, not by foca, so foca's own defaults
        // for forgetting down identities are fine.
        let swim = foca::Config::new_lan(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN));
        MembershipConfig {
            data_directory,
            bind_addr,
            advertise_addr: None,
            http_advertise_addr,
            peers: Vec::new(),
            swim,
            settle: Duration::from_secs(2),
            ring_sync_interval: Duration::from_secs(1),
            announce_backoff_max: Duration::from_secs(5),
            reconnect_interval: Duration::from_secs(10),
            keys: None,
            metrics: ClusterMetrics::default(),
        }
    }
}

/// What a node looks like from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    Alive,
    /// Alive for all purposes until it refutes the suspicion or is declared down.
    Suspect,
    /// Declared down, or in the ring but not heard from since this node started.
    Down,
}

impl MemberState {
    pub fn label(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }

    fn from_foca(state: foca::State) -> MemberState {
        match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub identity: NodeIdentity,
    pub state: MemberState,
}

/// A consistent snapshot of the cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// This node, as it currently gossips itself.
    pub local: NodeIdentity,
    /// Every node not removed: ring nodes in join order, then nodes still choosing their
    /// place, by id. Includes this node (always alive).
    pub members: Vec<Member>,
    /// The join order placement runs on.
    pub ring: Ring,
}

impl ClusterView {
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.identity.id == id)
    }
}

enum Command {
    Leave(oneshot::Sender<()>),
    Remove(NodeId, oneshot::Sender<bool>),
}

/// The way every other box reads and steers membership. Cheap to clone.
#[derive(Clone)]
pub struct MembershipHandle {
    view: watch::Receiver<Arc<ClusterView>>,
    commands: mpsc::Sender<Command>,
}

impl MembershipHandle {
    /// The current snapshot.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    pub fn members(&self) -> Vec<Member> {
        self.view().members.clone()
    }

    pub fn ring(&self) -> Ring {
        self.view().ring.clone()
    }

    pub fn local(&self) -> NodeIdentity {
        self.view().local.clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Waits until this node has its place in the ring and returns its identity.
    pub async fn wait_placed(&self) -> NodeIdentity {
        let mut rx = self.subscribe();
        let placed = rx
            .wait_for(|v| v.local.join_seq.is_some())
            .await
            .map(|view| view.local.clone());
        // Err: the runtime stopped; report the last identity it published.
        placed.unwrap_or_else(|_| self.local())
    }

    /// Leaves the cluster gracefully (peers learn at once instead of suspecting) and
    /// stops the runtime. Returns when the leave has been sent.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Removes a node from the ring for good (a tombstone gossiped to every node). Its
    /// slot stays in the numbering, so only its own replicas move (ADR 0015). A node that
    /// is still running refutes its removal, and one that comes back with its data
    /// directory takes its place again (ADR 0014): stop a node before removing it. False
    /// when the node is this one, unknown, already removed, or the runtime has stopped.
    pub async fn remove_node(&self, id: NodeId) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Remove(id, tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

#[derive(Debug)]
pub enum MembershipError {
    /// The identity or ring file could not be read or written.
    Storage(io::Error),
    /// The gossip socket could not be bound.
    Bind(SocketAddr, io::Error),
    /// The advertise address does not resolve.
    Advertise(String),
}

impl std::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipError::Storage(e) => write!(f, "cluster state: {e}"),
            MembershipError::Bind(addr, e) => write!(f, "cannot bind gossip socket {addr}: {e}"),
            MembershipError::Advertise(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for MembershipError {}

/// Self-metrics of the membership runtime. The per-kind counters are resolved once, so
/// counting a datagram is an atomic add, never a map lookup or a lock.
#[derive(Clone)]
pub struct ClusterMetrics {
    members: Family<StateLabels, Gauge>,
    ring_nodes: Gauge,
    messages_sent: Family<KindLabels, Counter>,
    messages_received: Family<KindLabels, Counter>,
    /// Indexed by datagram kind (`KIND_SWIM`, `KIND_RING`).
    sent_by_kind: [Counter; 2],
    received_by_kind: [Counter; 2],
    bytes_sent: Counter,
    bytes_received: Counter,
    invalid_messages: Counter,
    out_of_order_joins: Counter,
    /// Indexed like `Rejection::ALL`.
    rejected_by_reason: [Counter; Rejection::ALL.len()],
    rejected: Family<ReasonLabels, Counter>,
    /// Indexed like `Refusal::ALL`.
    refused_by_reason: [Counter; Refusal::ALL.len()],
    ring_refused: Family<ReasonLabels, Counter>,
    own_removals_refuted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

const KIND_NAMES: [&str; 2] = ["swim", "ring"];

impl Default for ClusterMetrics {
    fn default() -> Self {
        let messages_sent = Family::<KindLabels, Counter>::default();
        let messages_received = Family::<KindLabels, Counter>::default();
        let child = |family: &Family<KindLabels, Counter>, kind: &'static str| {
            family.get_or_create(&KindLabels { kind }).clone()
        };
        let rejected = Family::<ReasonLabels, Counter>::default();
        let ring_refused = Family::<ReasonLabels, Counter>::default();
        let by_reason = |family: &Family<ReasonLabels, Counter>, reason: &'static str| {
            family.get_or_create(&ReasonLabels { reason }).clone()
        };
        ClusterMetrics {
            rejected_by_reason: Rejection::ALL.map(|r| by_reason(&rejected, r.label())),
            refused_by_reason: Refusal::ALL.map(|r| by_reason(&ring_refused, r.label())),
            rejected,
            ring_refused,
            own_removals_refuted: Counter::default(),
            members: Family::default(),
            ring_nodes: Gauge::default(),
            sent_by_kind: KIND_NAMES.map(|k| child(&messages_sent, k)),
            received_by_kind: KIND_NAMES.map(|k| child(&messages_received, k)),
            messages_sent,
            messages_received,
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            invalid_messages: Counter::default(),
            out_of_order_joins: Counter::default(),
        }
    }
}

impl ClusterMetrics {
    /// Creates the metrics and registers them as `timbala_cluster_*`.
    pub fn register(registry: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        registry.register(
            "timbala_cluster_members",
            "Cluster members known to this node, by state (this node included)",
            m.members.clone(),
        );
        registry.register(
            "timbala_cluster_ring_nodes",
            "Nodes in the join order placement uses",
            m.ring_nodes.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_messages_sent",
            "Gossip datagrams sent, by kind (swim, ring)",
            m.messages_sent.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_messages_received",
            "Gossip datagrams received, by kind (swim, ring)",
            m.messages_received.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_sent_bytes",
            "Bytes of gossip datagrams sent",
            m.bytes_sent.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_received_bytes",
            "Bytes of gossip datagrams received",
            m.bytes_received.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_invalid_messages",
            "Datagrams dropped because they could not be decoded or were refused",
            m.invalid_messages.clone(),
        );
        registry.register(
            "timbala_cluster_out_of_order_joins",
            "Nodes learned of whose join position sorts before an already known node \
             (concurrent joins or merged clusters: some data changes owner, ADR 0005)",
            m.out_of_order_joins.clone(),
        );
        registry.register(
            "timbala_cluster_gossip_datagrams_rejected",
            "Gossip datagrams dropped unparsed because they failed the cluster-key check, by \
             reason (unsealed, sealed_without_key, truncated, unauthenticated, \
             outside_window, replayed, replay_guard_full)",
            m.rejected.clone(),
        );
        registry.register(
            "timbala_cluster_ring_changes_refused",
            "Ring records another node sent that this node refused, by reason \
             (unverified_order_change, future_tombstone)",
            m.ring_refused.clone(),
        );
        registry.register(
            "timbala_cluster_own_removals_refuted",
            "Removals of this live node that it refuted with a newer generation",
            m.own_removals_refuted.clone(),
        );
        m
    }

    fn rejected(&self, reason: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) {
            self.rejected_by_reason[i].inc();
        }
    }

    fn refused(&self, reason: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == reason) {
            self.refused_by_reason[i].inc();
        }
    }

    fn sent(&self, kind: u8, bytes: usize) {
        self.sent_by_kind[usize::from(kind == KIND_RING)].inc();
        self.bytes_sent.inc_by(bytes as u64);
    }

    fn received(&self, kind: u8, bytes: usize) {
        self.received_by_kind[usize::from(kind == KIND_RING)].inc();
        self.bytes_received.inc_by(bytes as u64);
    }

    fn publish_view(&self, view: &ClusterView) {
        for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
            let count = view.members.iter().filter(|m| m.state == state).count();
            self.members
                .get_or_create(&StateLabels {
                    state: state.label(),
                })
                .set(count as i64);
        }
        self.ring_nodes.set(view.ring.len() as i64);
    }
}

/// A ring-sync datagram: some entries of the sender's ring (all of them across the
/// datagrams of one round), the digest of its whole ring, and whether the receiver
/// should answer with its own ring when the digests differ.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct RingSync {
    pub want_reply: bool,
    pub digest: u64,
    pub entries: Vec<RingEntry>,
}

/// Encodes the ring-sync datagrams that carry the whole of `ring`.
pub fn encode_ring_sync(ring: &RingState, want_reply: bool) -> Vec<Vec<u8>> {
    let entries: Vec<RingEntry> = ring.entries().cloned().collect();
    let digest = ring.digest();
    let chunks: Vec<&[RingEntry]> = if entries.is_empty() {
        vec![&[]]
    } else {
        entries.chunks(RING_ENTRIES_PER_DATAGRAM).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .filter_map(|(i, chunk)| {
            let msg = RingSync {
                // Only the first datagram asks: one answer per round is enough.
                want_reply: want_reply && i == 0,
                digest,
                entries: chunk.to_vec(),
            };
            match postcard::to_extend(&msg, vec![PROTOCOL_VERSION, KIND_RING]) {
                Ok(bytes) if bytes.len() <= MAX_DATAGRAM => Some(bytes),
                Ok(_) | Err(_) => {
                    tracing::error!(
                        entries = chunk.len(),
                        "ring-sync datagram too large, not sent"
                    );
                    None
                }
            }
        })
        .collect()
}

/// A decoded datagram.
#[derive(Debug, PartialEq)]
pub enum Datagram<'a> {
    Swim(&'a [u8]),
    Ring(RingSync),
}

/// Decodes a datagram's frame; garbage gives an error, never a panic.
pub fn decode_datagram(bytes: &[u8]) -> Result<Datagram<'_>, String> {
    match bytes {
        [PROTOCOL_VERSION, KIND_SWIM, rest @ ..] => Ok(Datagram::Swim(rest)),
        [PROTOCOL_VERSION, KIND_RING, rest @ ..] => match postcard::take_from_bytes(rest) {
            Ok((msg, [])) => Ok(Datagram::Ring(msg)),
            Ok((_, trailing)) => Err(format!("{} trailing bytes after ring sync", trailing.len())),
            Err(e) => Err(format!("ring sync: {e}")),
        },
        [PROTOCOL_VERSION, kind, ..] => Err(format!("unknown datagram kind {kind}")),
        [version, ..] => Err(format!(
            "protocol version {version}, expected {PROTOCOL_VERSION}"
        )),
        [] => Err("empty datagram".to_string()),
    }
}

/// The entry point: `Membership::start(config)`.
pub struct Membership;

impl Membership {
    /// Loads (or creates) this node's identity, binds the gossip socket and starts the
    /// runtime task. The task ends after `MembershipHandle::leave`, or when every handle
    /// is dropped (then it also leaves gracefully).
    pub async fn start(
        config: MembershipConfig,
    ) -> Result<(MembershipHandle, JoinHandle<()>), MembershipError> {
        let socket = UdpSocket::bind(config.bind_addr)
            .await
            .map_err(|e| MembershipError::Bind(config.bind_addr, e))?;
        let bound = socket
            .local_addr()
            .map_err(|e| MembershipError::Bind(config.bind_addr, e))?;
        let (gossip_addr, peer_ips) = advertise_addr(&config, bound).await?;
        let mut config = config;
        config.http_advertise_addr =
            http_advertise_for(&config.http_advertise_addr, gossip_addr.ip());
        if let Ok(http) = config.http_advertise_addr.parse::<SocketAddr>() {
            check_reachable("http", http.ip(), &peer_ips).map_err(MembershipError::Advertise)?;
        }
        let identity = identity::load_for_start(
            &config.data_directory,
            gossip_addr,
            &config.http_advertise_addr,
        )
        .map_err(MembershipError::Storage)?;
        let ring = RingState::load(&config.data_directory).map_err(MembershipError::Storage)?;
        if config.keys.is_none() {
            tracing::warn!(
                "no cluster key (--cluster-key-file): the cluster is open; anyone who can \
                 reach the gossip port can join it, and /internal/v1/* is unauthenticated"
            );
        }
        config.peers = peers_other_than(config.peers, &[gossip_addr, bound]).await;
        let host = DiskHost {
            data_directory: config.data_directory.clone(),
        };
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let core = MembershipCore::start(
            config,
            identity,
            ring,
            host,
            rand::rngs::StdRng::from_os_rng(),
            Instant::now(),
        )
        .map_err(MembershipError::Storage)?;
        let view = core.view();
        core.config.metrics.publish_view(&view);
        let (view_tx, view_rx) = watch::channel(Arc::new(view));
        let runtime = Runtime { core, socket };
        let task = tokio::spawn(runtime.run(commands_rx, view_tx));
        Ok((
            MembershipHandle {
                view: view_rx,
                commands: commands_tx,
            },
            task,
        ))
    }
}

/// The address this node gossips as (see `MembershipConfig::advertise_addr`), and the
/// peers' addresses it was checked against.
async fn advertise_addr(
    config: &MembershipConfig,
    bound: SocketAddr,
) -> Result<(SocketAddr, Vec<IpAddr>), MembershipError> {
    let mut peer_addrs = Vec::new();
    for peer in &config.peers {
        peer_addrs.extend(resolve(peer).await);
    }
    let advertised = if let Some(text) = &config.advertise_addr {
        resolve(text).await.first().copied().ok_or_else(|| {
            MembershipError::Advertise(format!(
                "the gossip advertise address {text:?} does not resolve"
            ))
        })?
    } else if !bound.ip().is_unspecified() {
        bound
    } else {
        let mut host_addrs = Vec::new();
        if let Some(host) = own_hostname() {
            host_addrs.extend(resolve(&format!("{host}:0")).await.iter().map(|a| a.ip()));
        }
        let facts = AddressFacts {
            routes_to_peers: peer_addrs.iter().map(|&p| local_ip_towards(p)).collect(),
            host_addrs,
            interface_addrs: interface_addrs(),
        };
        let (ip, source) = choose_advertise_ip(&facts);
        if source == AdvertiseSource::Loopback {
            tracing::warn!(
                %ip,
                "gossip binds a wildcard address and no other address was found: \
                 advertising loopback; set the gossip advertise address for a multi-host cluster"
            );
        }
        SocketAddr::new(ip, bound.port())
    };
    let peer_ips: Vec<IpAddr> = peer_addrs.iter().map(|a| a.ip()).collect();
    check_reachable("gossip", advertised.ip(), &peer_ips).map_err(MembershipError::Advertise)?;
    Ok((advertised, peer_ips))
}

/// The HTTP address carried in gossip: `--http-advertise-addr` as given, else the bind
/// address, where a wildcard bind (`0.0.0.0:9080`) takes the IP this node gossips from,
/// so peers on other hosts reach it (loopback would send them to themselves).
pub fn http_advertise_for(http: &str, gossip_ip: IpAddr) -> String {
    match http.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            SocketAddr::new(gossip_ip, addr.port()).to_string()
        }
        _ => http.to_string(),
    }
}

/// What a node can learn about its own addresses when it binds a wildcard address.
#[derive(Debug, Default)]
pub struct AddressFacts {
    /// For each resolved peer, the local address of the route towards it (None: no route).
    pub routes_to_peers: Vec<Option<IpAddr>>,
    /// The addresses the host name resolves to (in a container: the one peers use).
    pub host_addrs: Vec<IpAddr>,
    /// The addresses of the machine's interfaces, in the kernel's order.
    pub interface_addrs: Vec<IpAddr>,
}

/// Where the advertised address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvertiseSource {
    RouteToPeer,
    HostName,
    Interface,
    Loopback,
}

/// The address to advertise for a wildcard bind: the route towards the first peer that
/// has one, else a non-loopback address of the host name, else the first non-loopback
/// interface address, else loopback (a node alone on a machine).
pub fn choose_advertise_ip(facts: &AddressFacts) -> (IpAddr, AdvertiseSource) {
    if let Some(ip) = facts
        .routes_to_peers
        .iter()
        .flatten()
        .find(|ip| !ip.is_unspecified())
    {
        return (*ip, AdvertiseSource::RouteToPeer);
    }
    let usable = |ip: &&IpAddr| !ip.is_loopback() && !ip.is_unspecified();
    if let Some(ip) = facts.host_addrs.iter().find(usable) {
        return (*ip, AdvertiseSource::HostName);
    }
    if let Some(ip) = facts.interface_addrs.iter().find(usable) {
        return (*ip, AdvertiseSource::Interface);
    }
    (IpAddr::V4(Ipv4Addr::LOCALHOST), AdvertiseSource::Loopback)
}

/// Refuses to advertise loopback to peers that are not on loopback: they would send
/// this node's traffic to themselves, and the cluster would look formed but never be.
pub fn check_reachable(what: &str, advertised: IpAddr, peers: &[IpAddr]) -> Result<(), String> {
    if !advertised.is_loopback() {
        return Ok(());
    }
    match peers.iter().find(|p| !p.is_loopback()) {
        Some(peer) => Err(format!(
            "the {what} advertise address {advertised} is loopback but peer {peer} is on \
             another host: set --{what}-advertise-addr to an address that host reaches"
        )),
        None => Ok(()),
    }
}

/// The machine's interface addresses (getifaddrs), IPv4 and IPv6.
fn interface_addrs() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addrs = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                addrs.push(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addrs
}

/// Drops the peers that name this node itself (one peer list shared by every node of a
/// compose file names each node too), so that a node alone with itself is the first node
/// rather than waiting for itself. A peer that does not resolve yet is kept.
async fn peers_other_than(peers: Vec<String>, own: &[SocketAddr]) -> Vec<String> {
    let mut others = Vec::with_capacity(peers.len());
    for peer in peers {
        let addrs = resolve(&peer).await;
        if addrs.is_empty() || addrs.iter().any(|a| !own.contains(a)) {
            others.push(peer);
        } else {
            tracing::debug!(peer, "peer is this node itself");
        }
    }
    others
}

fn own_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..len]).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The local address the kernel would use to reach `peer` (no packet is sent).
fn local_ip_towards(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

async fn resolve(host_port: &str) -> Vec<SocketAddr> {
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(host_port)).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::debug!(peer = host_port, error = %e, "peer does not resolve yet");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!(peer = host_port, "peer resolution timed out");
            Vec::new()
        }
    }
}

/// A foca timer due at `at`; `seq` keeps timers due at the same instant in order.
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<NodeIdentity>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

type Swim = Foca<NodeIdentity, PostcardCodec, rand_foca::rngs::SmallRng, NoCustomBroadcast>;

/// What the membership core needs from outside besides datagrams and the monotonic
/// clock: the wall clock (generations, seal stamps, the tombstone check) and durable
/// storage for this node's identity and the ring. The tokio runtime uses the data
/// directory (`DiskHost`); the simulator keeps them in memory across simulated crashes.
pub trait Host {
    /// Milliseconds since the Unix epoch.
    fn unix_millis(&self) -> u64;
    /// Persists this node's identity; returns once it is durable.
    fn save_identity(&mut self, identity: &NodeIdentity) -> io::Result<()>;
    /// Persists the ring; returns once it is durable.
    fn save_ring(&mut self, ring: &RingState) -> io::Result<()>;
}

/// The production host: `node.json` and `ring.json` in the data directory.
pub struct DiskHost {
    pub data_directory: PathBuf,
}

impl Host for DiskHost {
    fn unix_millis(&self) -> u64 {
        unix_millis()
    }

    fn save_identity(&mut self, identity: &NodeIdentity) -> io::Result<()> {
        identity::save(&self.data_directory, identity)
    }

    fn save_ring(&mut self, ring: &RingState) -> io::Result<()> {
        ring.save(&self.data_directory)
    }
}

/// A datagram the core wants sent (already framed, and sealed when the cluster has
/// keys). `kind` is `KIND_SWIM` or `KIND_RING`, for the sent-messages metric.
#[derive(Debug)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// All state of one node's membership, free of I/O (ADR 0019): fed events with the
/// current instant (a datagram arrived, a timer is due, a ring-sync tick, a command), it
/// queues datagrams (`take_outbox`), keeps foca's timers (`next_timer`), persists
/// through its `Host` before anything that depends on it is sent, and publishes views
/// (`flush`). The tokio `Runtime` drives it with a UDP socket; the simulator
/// (tests/sim) drives the same code with a virtual network and clock.
pub struct MembershipCore<H: Host> {
    config: MembershipConfig,
    host: H,
    swim: Swim,
    effects: AccumulatingRuntime<NodeIdentity>,
    timers: BinaryHeap<Reverse<Scheduled>>,
    timer_seq: u64,
    ring: RingState,
    rng: rand::rngs::SmallRng,
    /// When membership or the ring last changed: a new node waits for quiet.
    last_change: Instant,
    next_announce: Instant,
    announce_backoff: Duration,
    /// Members seen suspect, by identity and incarnation, since when.
    suspect_since: HashMap<(NodeIdentity, u16), Instant>,
    /// The configured peers as last resolved (by `announce`), for `reconnect_if_due`.
    peer_addrs: Vec<SocketAddr>,
    /// Datagrams to send, in order: foca's packets, then ring syncs.
    outbox: Vec<Outgoing>,
    /// Ring-sync datagrams queued by synchronous handlers, sent after foca's packets.
    outbox_ring: Vec<(SocketAddr, Vec<u8>)>,
    send_buf: Vec<u8>,
    /// Set when something the view shows may have changed.
    dirty: bool,
    /// When this runtime started (bounds how long a new node defers to others).
    started: Instant,
    /// `swim_fingerprint()` as of the last published view.
    swim_fingerprint: u64,
    next_reconnect: Instant,
    /// Set once `leave` started: the runtime is about to stop.
    leaving: bool,
    /// Seals and opens datagrams when the cluster has keys.
    sealer: Option<Sealer>,
    /// Draws seal nonces (a CSPRNG: nonces must not repeat).
    nonce_rng: rand::rngs::StdRng,
    /// Sealing buffer, reused.
    seal_buf: Vec<u8>,
    /// Rejection reasons already logged at warn level (later ones log at debug).
    warned: std::collections::HashSet<Rejection>,
}

impl<H: Host> MembershipCore<H> {
    /// A node starting with `identity` (as `identity::for_start` made it) and the ring it
    /// persisted. `seed` feeds foca's randomness, the ring-sync target choice and the
    /// seal nonces (the operating system's randomness in production, a seed in the
    /// simulator). Records this node in its ring (persisted), and a new node with no one
    /// to ask takes the first place at once.
    pub fn start(
        mut config: MembershipConfig,
        identity: NodeIdentity,
        mut ring: RingState,
        mut host: H,
        mut seed: rand::rngs::StdRng,
        now: Instant,
    ) -> io::Result<MembershipCore<H>> {
        let was_removed = ring.get(identity.id).is_some_and(|e| e.removed);
        if ring.observe(&identity) {
            host.save_ring(&ring)?;
        }
        if was_removed && identity.join_seq.is_some() {
            // Its start generation is newer than the tombstone: it is back (ADR 0014).
            tracing::warn!(
                node = %identity.id,
                "this node had been removed from the cluster and takes its old place again; \
                 wipe its data directory to join as a new node instead"
            );
        }
        tracing::info!(
            node = %identity.id,
            generation = identity.generation,
            join_seq = ?identity.join_seq,
            gossip = %identity.gossip_addr,
            http = %identity.http_addr,
            ring_nodes = ring.len(),
            "cluster membership starting"
        );
        if config.keys.is_some() {
            // The seal must fit in the same datagram size as an unsealed packet.
            let limit = config
                .swim
                .max_packet_size
                .get()
                .saturating_sub(SEAL_OVERHEAD);
            config.swim.max_packet_size =
                std::num::NonZeroUsize::new(limit).unwrap_or(config.swim.max_packet_size);
        }
        let swim_rng = rand_foca::rngs::SmallRng::seed_from_u64(rand::Rng::random(&mut seed));
        let swim = Foca::new(identity, config.swim.clone(), swim_rng, PostcardCodec);
        let sealer = config.keys.as_ref().map(Sealer::new);
        let mut core = MembershipCore {
            sealer,
            nonce_rng: rand::rngs::StdRng::from_rng(&mut seed),
            seal_buf: Vec::new(),
            warned: std::collections::HashSet::new(),
            config,
            host,
            swim,
            effects: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            ring,
            rng: rand::rngs::SmallRng::from_rng(&mut seed),
            last_change: now,
            next_announce: now,
            announce_backoff: ANNOUNCE_BACKOFF_START,
            suspect_since: HashMap::new(),
            peer_addrs: Vec::new(),
            outbox: Vec::new(),
            outbox_ring: Vec::new(),
            send_buf: Vec::new(),
            dirty: true,
            started: now,
            swim_fingerprint: 0,
            next_reconnect: now,
            leaving: false,
        };
        core.place_alone_if_no_one_to_ask(now);
        Ok(core)
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    pub fn identity(&self) -> &NodeIdentity {
        self.swim.identity()
    }

    /// The ring as this node knows it.
    pub fn ring_state(&self) -> &RingState {
        &self.ring
    }

    /// When the earliest of foca's timers is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(s)| s.at)
    }

    /// When the next announce is due, while one is needed.
    pub fn next_announce(&self) -> Option<Instant> {
        self.needs_announce().then_some(self.next_announce)
    }

    /// The datagrams queued since the last call, in sending order.
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// True while no other node is active: keep announcing to the peers we know of.
    fn needs_announce(&self) -> bool {
        self.swim.num_members() == 0 && !self.announce_targets().is_empty()
    }

    /// Peers from the configuration plus every ring node's last gossip address, to be
    /// resolved by the driver and passed to `announce`.
    pub fn announce_targets(&self) -> Vec<String> {
        let own = self.identity().id;
        let mut targets = self.config.peers.clone();
        targets.extend(
            self.ring
                .entries()
                .filter(|e| e.id != own && !e.removed)
                .map(|e| e.gossip_addr.to_string()),
        );
        targets
    }

    /// Announces to the resolved `announce_targets` and backs off until the next try.
    pub fn announce(&mut self, resolved: &[SocketAddr], now: Instant) {
        let own = self.identity().gossip_addr;
        self.peer_addrs = resolved.iter().copied().filter(|&a| a != own).collect();
        self.peer_addrs.sort_unstable();
        self.peer_addrs.dedup();
        let mut announced = 0usize;
        for &addr in resolved {
            if addr == own {
                continue;
            }
            announced += 1;
            if let Err(e) = self
                .swim
                .announce(NodeIdentity::placeholder(addr), &mut self.effects)
            {
                tracing::warn!(peer = %addr, error = %e, "announce failed");
            }
        }
        if self.announce_backoff >= self.config.announce_backoff_max {
            tracing::warn!(announced, peers = ?self.peer_addrs, "no peer has answered yet; still announcing");
        } else {
            tracing::debug!(announced, backoff = ?self.announce_backoff, "announced to peers");
        }
        self.next_announce = now + self.announce_backoff;
        self.announce_backoff = (self.announce_backoff * 2).min(self.config.announce_backoff_max);
    }

    /// A datagram arrived from `from`.
    pub fn on_datagram(&mut self, received: &[u8], from: SocketAddr, now: Instant) {
        let opened = match &mut self.sealer {
            Some(sealer) => sealer
                .open(received, from, self.host.unix_millis())
                .map(Some),
            None if received.first() == Some(&SEALED_MARKER) => Err(Rejection::SealedWithoutKey),
            None => Ok(None),
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(reason) => {
                self.on_rejected(reason, from, received.len());
                return;
            }
        };
        let authenticated = opened.is_some();
        let bytes = opened.as_deref().unwrap_or(received);
        let result = decode_datagram(bytes).and_then(|datagram| match datagram {
            Datagram::Swim(packet) => {
                self.config.metrics.received(KIND_SWIM, bytes.len());
                self.swim
                    .handle_data(packet, &mut self.effects)
                    .map_err(|e| e.to_string())
            }
            Datagram::Ring(sync) => {
                self.config.metrics.received(KIND_RING, bytes.len());
                self.on_ring_sync(sync, from, authenticated, now);
                Ok(())
            }
        });
        if let Err(why) = result {
            self.config.metrics.invalid_messages.inc();
            tracing::debug!(%from, len = bytes.len(), error = %why, "gossip datagram dropped");
        }
    }

    /// Counts a datagram dropped by the cluster-key check; the first of each reason is
    /// logged as a warning (a misconfigured node or an attacker), the rest at debug.
    fn on_rejected(&mut self, reason: Rejection, from: SocketAddr, len: usize) {
        self.config.metrics.rejected(reason);
        if self.warned.insert(reason) {
            tracing::warn!(%from, len, reason = reason.label(),
                "gossip datagram rejected by the cluster-key check (further ones are logged at debug level)");
        } else {
            tracing::debug!(%from, len, reason = reason.label(), "gossip datagram rejected");
        }
    }

    fn on_ring_sync(
        &mut self,
        sync: RingSync,
        from: SocketAddr,
        authenticated: bool,
        now: Instant,
    ) {
        self.learn(sync.entries, Source::RingSync { authenticated }, now);
        if sync.want_reply && sync.digest != self.ring.digest() {
            self.send_ring(from, false);
        }
    }

    /// Merges ring records (from ring sync or from identities seen in gossip) that
    /// `RingState::admit` lets in, refutes this node's own removal, flags joins that did
    /// not append, and persists the ring when it changed.
    fn learn(
        &mut self,
        entries: impl IntoIterator<Item = RingEntry>,
        source: Source,
        now: Instant,
    ) {
        let placed = self.identity().join_seq.is_some();
        let own = (self.identity().id, self.identity().generation);
        let now_ms = self.host.unix_millis();
        let live: Vec<NodeId> = self.swim.iter_members().map(|m| m.id().id).collect();
        let mut changed = false;
        for entry in entries {
            let authenticated = match source {
                Source::RingSync { authenticated } => authenticated,
                // SWIM saw this identity itself (and under keys, in a sealed datagram).
                Source::Swim => true,
            };
            match self.ring.admit(
                &entry,
                own,
                placed,
                authenticated,
                |id| live.contains(&id),
                now_ms,
            ) {
                Admission::Merge => {}
                Admission::Ignore => continue,
                Admission::RefuteOwnRemoval => {
                    self.refute_own_removal(entry.generation, now);
                    continue;
                }
                Admission::Refuse(reason) => {
                    self.config.metrics.refused(reason);
                    tracing::warn!(
                        node = %entry.id,
                        join_seq = entry.join_seq,
                        removed = entry.removed,
                        reason = reason.label(),
                        "ring record refused"
                    );
                    continue;
                }
            }
            // Only a placed node knew every node placed before it, so only its view can
            // tell an out-of-order join from plain catching up.
            if placed && self.ring.sorts_before_known(&entry) {
                self.config.metrics.out_of_order_joins.inc();
                tracing::warn!(
                    node = %entry.id,
                    join_seq = entry.join_seq,
                    "a node took a place before nodes already in the ring \
                     (concurrent join or merged clusters); some series change owners"
                );
            }
            changed |= self.ring.merge_entry(entry);
        }
        if changed {
            self.on_ring_changed(now);
        }
    }

    /// Records a placed identity seen in gossip.
    fn learn_identity(&mut self, identity: &NodeIdentity, now: Instant) {
        self.learn(RingEntry::from_identity(identity), Source::Swim, now);
    }

    /// Another node removed this live node as of `tombstone_generation`: take a newer
    /// generation, whose live record wins over the tombstone on every node (ADR 0014),
    /// and tell the cluster at once.
    fn refute_own_removal(&mut self, tombstone_generation: u64, now: Instant) {
        let current = self.identity().clone();
        let generation = current
            .generation
            .saturating_add(1)
            .max(tombstone_generation.saturating_add(1));
        let renewed = NodeIdentity {
            generation,
            ..current
        };
        self.config.metrics.own_removals_refuted.inc();
        tracing::warn!(
            node = %renewed.id,
            tombstone_generation,
            generation,
            "another node removed this live node; refuting with a newer generation \
             (stop a node before removing it)"
        );
        self.persist_identity(&renewed);
        if let Err(e) = self
            .swim
            .change_identity(renewed.clone(), &mut self.effects)
        {
            tracing::warn!(error = %e, "cannot change identity");
        }
        self.learn_identity(&renewed, now);
        self.dirty = true;
        for to in self.active_addrs() {
            self.send_ring(to, false);
        }
    }

    fn on_ring_changed(&mut self, now: Instant) {
        self.last_change = now;
        self.dirty = true;
        if let Err(e) = self.host.save_ring(&self.ring) {
            tracing::error!(error = %e, "cannot persist the ring");
        }
    }

    /// Hands foca every timer due by `now`.
    pub fn fire_due_timers(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|Reverse(s)| s.at <= now) {
            let Some(Reverse(due)) = self.timers.pop() else {
                break;
            };
            if let Err(e) = self.swim.handle_timer(due.timer, &mut self.effects) {
                tracing::warn!(error = %e, "swim timer failed");
            }
        }
    }

    /// The periodic ring-sync round: pushes the ring to a random member, takes this
    /// node's place once the cluster settled, and reconnects to missing ring nodes.
    pub fn ring_tick(&mut self, now: Instant) {
        self.push_ring_to_random_member(true);
        self.place_if_settled(now);
        self.reconnect_if_due(now);
        self.expire_stale_suspicions(now);
    }

    /// Declares down a member that stayed suspect for `STALE_SUSPICION_FACTOR` times the
    /// suspicion timeout. Foca only times out suspicions this node raised itself, and
    /// forgets even those when it was cut off from every member meanwhile; a suspicion
    /// learned by gossip whose few retransmissions never reached the suspect (so it never
    /// refuted) would otherwise stay forever, and a suspect member gets no hints
    /// replayed. Down is what the prober's timer would have decided: the member hears
    /// it, rejoins with a new generation and is alive again (found by the simulation,
    /// ADR 0019).
    fn expire_stale_suspicions(&mut self, now: Instant) {
        let limit = self.config.swim.suspect_to_down_after * STALE_SUSPICION_FACTOR;
        let suspects: Vec<(NodeIdentity, u16)> = self
            .swim
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.suspect_since
            .retain(|key, _| suspects.iter().any(|s| s == key));
        let mut stale = Vec::new();
        for suspect in suspects {
            let since = *self.suspect_since.entry(suspect.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= limit {
                stale.push(suspect);
            }
        }
        for (id, incarnation) in stale {
            tracing::info!(node = %id.id, gossip = %id.gossip_addr, http = %id.http_addr, "suspicion outlived its timeout; declaring the member down");
            self.suspect_since.remove(&(id.clone(), incarnation));
            let down = foca::Member::new(id, incarnation, foca::State::Down);
            if let Err(e) = self
                .swim
                .apply_many(std::iter::once(down), true, &mut self.effects)
            {
                tracing::warn!(error = %e, "cannot declare a stale suspect down");
            }
        }
    }

    /// Ends the handling of one event: queues what foca produced and reacts to its
    /// notifications, then returns the new view when something it shows may have changed
    /// (the caller publishes it).
    pub fn flush(&mut self, now: Instant) -> Option<ClusterView> {
        self.apply_effects(now);
        // Foca does not notify suspicion or refutation: compare a fingerprint.
        let fingerprint = self.swim_fingerprint();
        if fingerprint != self.swim_fingerprint {
            self.swim_fingerprint = fingerprint;
            self.dirty = true;
        }
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.view())
    }

    /// Queues what foca produced, schedules its timers and reacts to its notifications.
    fn apply_effects(&mut self, now: Instant) {
        // One framing buffer for all of foca's packets.
        let mut framed = std::mem::take(&mut self.send_buf);
        while let Some((to, data)) = self.effects.to_send() {
            framed.clear();
            framed.extend_from_slice(&[PROTOCOL_VERSION, KIND_SWIM]);
            framed.extend_from_slice(&data);
            self.queue(KIND_SWIM, &framed, to.gossip_addr);
        }
        self.send_buf = framed;
        while let Some((after, timer)) = self.effects.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse(Scheduled {
                at: now + after,
                seq: self.timer_seq,
                timer,
            }));
        }
        while let Some(notification) = self.effects.to_notify() {
            self.on_notification(notification, now);
        }
        // Notifications may have queued ring datagrams.
        let outbox = std::mem::take(&mut self.outbox_ring);
        for (to, datagram) in outbox {
            self.queue(KIND_RING, &datagram, to);
        }
    }

    /// Queues one datagram, sealed when the cluster has keys.
    fn queue(&mut self, kind: u8, datagram: &[u8], to: SocketAddr) {
        let bytes = match &self.sealer {
            Some(sealer) => {
                let mut nonce = [0u8; NONCE_BYTES];
                rand::RngCore::fill_bytes(&mut self.nonce_rng, &mut nonce);
                self.seal_buf.clear();
                sealer.seal(
                    datagram,
                    to,
                    self.host.unix_millis(),
                    nonce,
                    &mut self.seal_buf,
                );
                self.seal_buf.clone()
            }
            None => datagram.to_vec(),
        };
        self.outbox.push(Outgoing { to, kind, bytes });
    }

    fn on_notification(&mut self, notification: OwnedNotification<NodeIdentity>, now: Instant) {
        self.dirty = true;
        self.last_change = now;
        match notification {
            OwnedNotification::MemberUp(member) => {
                tracing::info!(node = %member.id, gossip = %member.gossip_addr, join_seq = ?member.join_seq, "member up");
                self.learn_identity(&member, now);
                // A member we just learned of may know nodes we do not (or the reverse).
                self.send_ring(member.gossip_addr, true);
            }
            OwnedNotification::MemberDown(member) => {
                tracing::warn!(node = %member.id, gossip = %member.gossip_addr, "member down");
            }
            OwnedNotification::Rename(old, new) => {
                tracing::info!(node = %new.id, old_generation = old.generation, generation = new.generation, join_seq = ?new.join_seq, "member renamed");
                self.learn_identity(&new, now);
            }
            OwnedNotification::Rejoin(renewed) => {
                tracing::warn!(
                    generation = renewed.generation,
                    "declared down by the cluster; rejoined with a new generation"
                );
                self.persist_identity(&renewed);
                self.learn_identity(&renewed, now);
            }
            OwnedNotification::Active => tracing::info!("cluster membership active"),
            OwnedNotification::Idle => {
                tracing::warn!("no other active member; announcing to peers again");
                self.announce_backoff = ANNOUNCE_BACKOFF_START;
                self.next_announce = now;
            }
            // Foca goes defunct after our own leave; otherwise `renew` rejoins first.
            OwnedNotification::Defunct if self.leaving => {}
            OwnedNotification::Defunct => {
                tracing::error!("declared down and cannot rejoin");
            }
        }
    }

    fn persist_identity(&mut self, identity: &NodeIdentity) {
        if let Err(e) = self.host.save_identity(identity) {
            tracing::error!(error = %e, "cannot persist this node's identity");
        }
    }

    /// Queues the whole ring for `to`.
    fn send_ring(&mut self, to: SocketAddr, want_reply: bool) {
        for datagram in encode_ring_sync(&self.ring, want_reply) {
            self.outbox_ring.push((to, datagram));
        }
    }

    /// Anti-entropy: the ring goes to one random active member each round.
    fn push_ring_to_random_member(&mut self, want_reply: bool) {
        if let Some(&to) = self.active_addrs().choose(&mut self.rng) {
            self.send_ring(to, want_reply);
        }
    }

    /// Every `reconnect_interval`, announce to one ring node or configured peer foca
    /// does not count as active: heals partitions that outlasted foca's memory of down
    /// members, finds nodes that came back at an address nobody is probing, and merges
    /// two clusters that formed apart (new nodes cut off from the founders during a
    /// partition place themselves after `PENDING_PATIENCE`; found by the simulation,
    /// ADR 0019).
    fn reconnect_if_due(&mut self, now: Instant) {
        if now < self.next_reconnect || self.swim.num_members() == 0 {
            return;
        }
        self.next_reconnect = now + self.config.reconnect_interval;
        let own = self.identity().id;
        let own_addr = self.identity().gossip_addr;
        let active = self.active_addrs();
        let mut missing: Vec<SocketAddr> = self
            .ring
            .entries()
            .filter(|e| e.id != own && !e.removed)
            .map(|e| e.gossip_addr)
            .chain(self.peer_addrs.iter().copied())
            .filter(|a| *a != own_addr && !active.contains(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if let Some(&to) = missing.choose(&mut self.rng) {
            tracing::debug!(peer = %to, "announcing to a ring node that is not active");
            if let Err(e) = self
                .swim
                .announce(NodeIdentity::placeholder(to), &mut self.effects)
            {
                tracing::debug!(peer = %to, error = %e, "announce failed");
            }
        }
    }

    /// An order-independent digest of foca's member states (identity, state,
    /// incarnation), to notice changes foca does not notify.
    fn swim_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        self.swim
            .iter_membership_state()
            .map(|m| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                m.id().hash(&mut h);
                MemberState::from_foca(m.state()).hash(&mut h);
                m.incarnation().hash(&mut h);
                h.finish()
            })
            .fold(0u64, u64::wrapping_add)
    }

    /// A new node with no one to ask is the first node of its cluster.
    fn place_alone_if_no_one_to_ask(&mut self, now: Instant) {
        if self.identity().join_seq.is_none() && self.announce_targets().is_empty() {
            self.take_join_seq(now);
        }
    }

    /// A new node takes its place once it has met the cluster and the cluster has been
    /// quiet for `settle`; among new nodes that see each other, the smallest id goes
    /// first, so concurrent joiners take distinct sequences instead of tying (ADR 0005).
    /// A node that waited `PENDING_PATIENCE` settle periods goes anyway.
    fn place_if_settled(&mut self, now: Instant) {
        if self.identity().join_seq.is_some() || self.swim.num_members() == 0 {
            return;
        }
        if now.saturating_duration_since(self.last_change) < self.config.settle {
            return;
        }
        let own = self.identity().id;
        let smaller_pending = self
            .swim
            .iter_members()
            .find(|m| m.id().join_seq.is_none() && m.id().id < own)
            .map(|m| m.id().id);
        let patience = self.config.settle * PENDING_PATIENCE;
        match smaller_pending {
            Some(first) if now.saturating_duration_since(self.started) < patience => {
                tracing::debug!(waiting_for = %first, "another new node takes its place first");
            }
            _ => self.take_join_seq(now),
        }
    }

    fn take_join_seq(&mut self, now: Instant) {
        let join_seq = self.ring.next_join_seq();
        let placed = NodeIdentity {
            join_seq: Some(join_seq),
            ..self.identity().next_generation()
        };
        // Persist first: a crash after gossiping a place but before saving it would let
        // the restarted node pick a second one.
        self.persist_identity(&placed);
        tracing::info!(node = %placed.id, join_seq, members = self.swim.num_members(), "took a place in the join order");
        // Foca tells the cluster: the placed identity wins over the pending one.
        if let Err(e) = self.swim.change_identity(placed.clone(), &mut self.effects) {
            tracing::warn!(error = %e, "cannot change identity");
        }
        self.learn_identity(&placed, now);
        self.dirty = true;
        for to in self.active_addrs() {
            self.send_ring(to, false);
        }
    }

    fn active_addrs(&self) -> Vec<SocketAddr> {
        self.swim
            .iter_members()
            .map(|m| m.id().gossip_addr)
            .collect()
    }

    /// Removes a node from the ring for good (see `MembershipHandle::remove_node`).
    pub fn remove(&mut self, id: NodeId, now: Instant) -> bool {
        // A running node does not remove itself: it would refute it on every other node's
        // behalf anyway (ADR 0014). Stop it, then remove it from another node.
        let now_ms = self.host.unix_millis();
        let http = self.ring.get(id).map(|e| e.http_addr.clone());
        if id == self.identity().id || !self.ring.remove_as_of(id, now_ms) {
            return false;
        }
        tracing::warn!(node = %id, http = ?http, "node removed from the ring");
        self.on_ring_changed(now);
        for to in self.active_addrs() {
            self.send_ring(to, false);
        }
        true
    }

    /// Leaves the cluster gracefully; the leave datagrams are in the outbox.
    pub fn leave(&mut self, now: Instant) {
        tracing::info!(node = %self.identity().id, "leaving the cluster");
        self.leaving = true;
        if let Err(e) = self.swim.leave_cluster(&mut self.effects) {
            tracing::warn!(error = %e, "leave failed");
        }
        self.apply_effects(now);
    }

    /// The snapshot published to handles.
    pub fn view(&self) -> ClusterView {
        let local = self.identity().clone();
        // Foca may know several identities of one node (old gossip addresses, old
        // generations): the newest generation speaks for it.
        let mut seen: HashMap<NodeId, Member> = HashMap::new();
        for m in self.swim.iter_membership_state() {
            let id = m.id();
            if id.id == local.id {
                continue;
            }
            let candidate = Member {
                identity: id.clone(),
                state: MemberState::from_foca(m.state()),
            };
            match seen.get(&id.id) {
                Some(known) if known.identity.generation >= id.generation => {}
                _ => {
                    seen.insert(id.id, candidate);
                }
            }
        }
        seen.insert(
            local.id,
            Member {
                identity: local.clone(),
                state: MemberState::Alive,
            },
        );
        let ring = self.ring.ring();
        let mut members = Vec::with_capacity(ring.len() + seen.len());
        for node in ring.nodes_in_join_order() {
            let member = seen.remove(&node.id).unwrap_or_else(|| Member {
                identity: self.ring_identity(node),
                state: MemberState::Down,
            });
            members.push(member);
        }
        let mut pending: Vec<Member> = seen
            .into_values()
            .filter(|m| !self.ring.get(m.identity.id).is_some_and(|e| e.removed))
            .collect();
        pending.sort_by_key(|m| m.identity.id);
        members.extend(pending);
        ClusterView {
            local,
            members,
            ring,
        }
    }

    /// A ring node's identity as last recorded, for nodes foca does not know (yet).
    fn ring_identity(&self, node: &RingNode) -> NodeIdentity {
        NodeIdentity {
            id: node.id,
            generation: self.ring.get(node.id).map_or(0, |e| e.generation),
            join_seq: Some(node.join_seq),
            gossip_addr: node.gossip_addr,
            http_addr: node.http_addr.clone(),
        }
    }
}

/// The tokio driver of a `MembershipCore`: one task owning the core and the UDP socket.
struct Runtime {
    core: MembershipCore<DiskHost>,
    socket: UdpSocket,
}

impl Runtime {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        view_tx: watch::Sender<Arc<ClusterView>>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut ring_tick = tokio::time::interval(self.core.config.ring_sync_interval);
        ring_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.core.next_timer();
            let next_announce = self.core.next_announce();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Leave(done)) => {
                        self.core.leave(Instant::now());
                        self.send_outbox().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(Command::Remove(id, done)) => {
                        let _ = done.send(self.core.remove(id, Instant::now()));
                    }
                    None => {
                        self.core.leave(Instant::now());
                        self.send_outbox().await;
                        break;
                    }
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.core.on_datagram(&buf[..len], from, Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "gossip socket receive failed"),
                },
                _ = sleep_until_some(next_timer) => self.core.fire_due_timers(Instant::now()),
                _ = sleep_until_some(next_announce) => {
                    let mut resolved = Vec::new();
                    for target in self.core.announce_targets() {
                        resolved.extend(resolve(&target).await);
                    }
                    self.core.announce(&resolved, Instant::now());
                }
                _ = ring_tick.tick() => self.core.ring_tick(Instant::now()),
            }
            let view = self.core.flush(Instant::now());
            self.send_outbox().await;
            if let Some(view) = view {
                self.core.config.metrics.publish_view(&view);
                view_tx.send_if_modified(|current| {
                    let changed = **current != view;
                    if changed {
                        *current = Arc::new(view);
                    }
                    changed
                });
            }
        }
        let _ = self.core.flush(Instant::now());
        self.send_outbox().await;
        let _ = view_tx;
    }

    /// Sends what the core queued.
    async fn send_outbox(&mut self) {
        for out in self.core.take_outbox() {
            match self.socket.send_to(&out.bytes, out.to).await {
                Ok(_) => self.core.config.metrics.sent(out.kind, out.bytes.len()),
                Err(e) => tracing::debug!(to = %out.to, error = %e, "gossip send failed"),
            }
        }
    }
}

/// Where ring records came from, for `RingState::admit`.
#[derive(Clone, Copy)]
enum Source {
    /// A ring-sync datagram; authenticated when it was sealed with a cluster key.
    RingSync { authenticated: bool },
    /// An identity foca reported (member up, renamed, our own).
    Swim,
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod advertise_tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_wildcard_bind_advertises_the_route_to_a_peer_first() {
        let facts = AddressFacts {
            routes_to_peers: vec![None, Some(ip("10.0.0.5"))],
            host_addrs: vec![ip("172.17.0.2")],
            interface_addrs: vec![ip("127.0.0.1"), ip("192.168.1.9")],
        };
        assert_eq!(
            choose_advertise_ip(&facts),
            (ip("10.0.0.5"), AdvertiseSource::RouteToPeer)
        );
    }

    #[test]
    fn without_peers_the_host_name_then_an_interface_then_loopback() {
        let mut facts = AddressFacts {
            routes_to_peers: vec![],
            host_addrs: vec![ip("127.0.1.1"), ip("172.17.0.2")],
            interface_addrs: vec![ip("127.0.0.1"), ip("192.168.1.9")],
        };
        assert_eq!(
            choose_advertise_ip(&facts),
            (ip("172.17.0.2"), AdvertiseSource::HostName)
        );
        facts.host_addrs = vec![ip("127.0.1.1")];
        assert_eq!(
            choose_advertise_ip(&facts),
            (ip("192.168.1.9"), AdvertiseSource::Interface)
        );
        facts.interface_addrs = vec![ip("127.0.0.1"), ip("::1")];
        assert_eq!(
            choose_advertise_ip(&facts),
            (ip("127.0.0.1"), AdvertiseSource::Loopback)
        );
    }

    #[test]
    fn loopback_is_refused_only_when_a_peer_is_on_another_host() {
        assert!(check_reachable("gossip", ip("127.0.0.1"), &[ip("127.0.0.1")]).is_ok());
        assert!(check_reachable("gossip", ip("127.0.0.1"), &[]).is_ok());
        assert!(check_reachable("gossip", ip("10.0.0.5"), &[ip("10.0.0.6")]).is_ok());
        let refused = check_reachable("http", ip("127.0.0.1"), &[ip("127.0.0.1"), ip("10.0.0.6")])
            .unwrap_err();
        assert!(refused.contains("--http-advertise-addr"), "{refused}");
        assert!(refused.contains("10.0.0.6"), "{refused}");
    }

    #[test]
    fn a_wildcard_http_bind_takes_the_gossip_ip() {
        assert_eq!(
            http_advertise_for("0.0.0.0:9080", ip("10.0.0.5")),
            "10.0.0.5:9080"
        );
        assert_eq!(
            http_advertise_for("[::]:9080", ip("10.0.0.5")),
            "10.0.0.5:9080"
        );
        assert_eq!(
            http_advertise_for("10.1.1.1:9080", ip("10.0.0.5")),
            "10.1.1.1:9080"
        );
        assert_eq!(
            http_advertise_for("node-a:9080", ip("10.0.0.5")),
            "node-a:9080"
        );
    }

    #[test]
    fn the_interface_list_holds_loopback() {
        assert!(interface_addrs().iter().any(|a| a.is_loopback()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;

    fn entry(id: u128, seq: u64) -> RingEntry {
        RingEntry {
            id: NodeId(id),
            join_seq: seq,
            generation: 3,
            gossip_addr: SocketAddr::from(([10, 1, 2, 3], 7946)),
            http_addr: format!("node-{id}.example:9080"),
            removed: id % 5 == 0,
        }
    }

    fn identity(id: u128, seq: Option<u64>) -> NodeIdentity {
        NodeIdentity {
            id: NodeId(id),
            generation: 1_700_000_000_000 + id as u64,
            join_seq: seq,
            gossip_addr: SocketAddr::from(([192, 168, 0, id as u8], 7946)),
            http_addr: format!("node-{id}:9080"),
        }
    }

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn ring_sync_round_trips_in_mtu_sized_datagrams() {
        let mut ring = RingState::default();
        ring.merge((1..=30).map(|i| entry(i, i as u64)));
        let datagrams = encode_ring_sync(&ring, true);
        assert_eq!(datagrams.len(), 3);
        let mut rebuilt = RingState::default();
        for (i, d) in datagrams.iter().enumerate() {
            assert!(d.len() <= 1400, "datagram of {} bytes", d.len());
            match decode_datagram(d).unwrap() {
                Datagram::Ring(sync) => {
                    assert_eq!(sync.want_reply, i == 0);
                    assert_eq!(sync.digest, ring.digest());
                    rebuilt.merge(sync.entries);
                }
                other => panic!("decoded {other:?}"),
            }
        }
        assert_eq!(rebuilt, ring);
        // An empty ring still sends one datagram, so a reply can be asked for.
        let empty = encode_ring_sync(&RingState::default(), true);
        assert_eq!(empty.len(), 1);
        assert!(
            matches!(decode_datagram(&empty[0]), Ok(Datagram::Ring(s)) if s.entries.is_empty())
        );
    }

    #[test]
    fn swim_packets_round_trip_through_the_codec() {
        let mut codec = PostcardCodec;
        let header = foca::Header {
            src: identity(1, Some(0)),
            src_incarnation: 7,
            dst: identity(2, None),
            message: foca::Message::Ping(42),
        };
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).unwrap();
        assert_eq!(codec.decode_header(&buf[..]).unwrap(), header);
        let member = foca::Member::new(identity(3, Some(9)), 2, foca::State::Suspect);
        let mut buf = Vec::new();
        codec.encode_member(&member, &mut buf).unwrap();
        assert_eq!(codec.decode_member(&buf[..]).unwrap(), member);
    }

    fn decode_swim(bytes: &[u8]) {
        let mut codec = PostcardCodec;
        let _: Result<foca::Header<NodeIdentity>, _> = codec.decode_header(bytes);
        let _: Result<foca::Member<NodeIdentity>, _> = codec.decode_member(bytes);
    }

    #[test]
    fn garbage_gives_errors_never_panics() {
        let mut codec = PostcardCodec;
        let mut valid = Vec::new();
        codec
            .encode_header(
                &foca::Header {
                    src: identity(1, Some(0)),
                    src_incarnation: 1,
                    dst: identity(2, Some(1)),
                    message: foca::Message::Announce,
                },
                &mut valid,
            )
            .unwrap();
        let ring_valid = encode_ring_sync(
            &RingState::from((1..=5).map(|i| entry(i, i as u64)).collect::<Vec<_>>()),
            true,
        )
        .remove(0);
        for seed in 0..3000u64 {
            let len = (seed % 200) as usize;
            let mut bytes = noise(seed, len);
            // Garbage in the right frame reaches the payload decoders.
            if len >= 2 && seed % 2 == 0 {
                bytes[0] = PROTOCOL_VERSION;
                bytes[1] = (seed / 2 % 2) as u8;
            }
            let _ = decode_datagram(&bytes);
            decode_swim(&bytes);
            // Valid messages, truncated or with a flipped byte.
            for base in [&valid, &ring_valid] {
                let cut = &base[..len.min(base.len())];
                let _ = decode_datagram(cut);
                decode_swim(cut);
                let mut flipped = base.to_vec();
                let at = seed as usize % flipped.len();
                flipped[at] ^= bytes.first().copied().unwrap_or(0xff) | 1;
                let _ = decode_datagram(&flipped);
                decode_swim(&flipped);
            }
        }
        assert!(decode_datagram(&[]).is_err());
        assert!(decode_datagram(&[9, 0]).is_err(), "other protocol version");
        assert!(
            decode_datagram(&[PROTOCOL_VERSION, 7]).is_err(),
            "unknown kind"
        );
        let mut trailing = ring_valid.clone();
        trailing.push(0);
        assert!(decode_datagram(&trailing).is_err());
    }

    #[test]
    fn an_oversized_http_address_is_refused_on_decode() {
        let mut codec = PostcardCodec;
        let mut big = identity(1, Some(0));
        big.http_addr = "x".repeat(identity::MAX_HTTP_ADDR_LEN + 1);
        let mut buf = Vec::new();
        codec
            .encode_member(&foca::Member::alive(big), &mut buf)
            .unwrap();
        assert!(
            <PostcardCodec as Codec<NodeIdentity>>::decode_member(&mut codec, &buf[..]).is_err()
        );
    }

    #[test]
    fn timers_fire_in_deadline_then_submission_order() {
        let now = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(1u64, 30u64), (2, 10), (3, 10), (4, 20)] {
            heap.push(Reverse(Scheduled {
                at: now + Duration::from_millis(ms),
                seq,
                timer: Timer::PeriodicGossip(seq as u8),
            }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(s)| s.seq)).collect();
        assert_eq!(order, vec![2, 3, 4, 1]);
    }
}

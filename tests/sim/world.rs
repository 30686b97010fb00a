//! One simulated cluster run: N nodes whose membership is the production
//! `MembershipCore` (foca, the ring CRDT, join-sequence choice, ring sync, tombstones,
//! sealed datagrams when the seed says so), over a virtual network and clock, with a data
//! path that routes writes by the real placement over each node's own ring view,
//! repairs by the real `rereplicate::targets_for` and compares and pulls replicas by the
//! real anti-entropy planning (`antientropy`, ADR 0016, 0019).
//!
//! Everything random comes from one seed: join times, faults, message loss and delay,
//! the nodes' own randomness. No wall clock, no threads, no sockets: a seed replays
//! exactly.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use timbala::cluster::identity::{self, NodeId, NodeIdentity};
use timbala::cluster::keys::ClusterKeys;
use timbala::cluster::membership::{
    ClusterView, Host, MemberState, MembershipConfig, MembershipCore, Outgoing,
};
use timbala::cluster::placement;
use timbala::cluster::ring::{Ring, RingState};
use timbala::model::{Labels, Sample, Series};
use timbala::replication::handoff::{replay_plan, reroute_plan};
use timbala::replication::rereplicate::targets_for;

mod antientropy;
use antientropy::{CleanPass, AE_FIRST_DELAY, AE_INTERVAL};

/// Wall clock of the simulation's start (generations are wall-clock milliseconds).
const EPOCH_MS: u64 = 1_764_547_200_000;
/// Distinct series the clients write to.
const SERIES: usize = 24;
/// Faults are generated until this time; then the network heals and every crashed node
/// (not killed for good) restarts.
const FAULTS_UNTIL: Duration = Duration::from_secs(40);
/// Longest wait after the heal for the cluster to converge (membership, hints,
/// re-replication, then a complete anti-entropy pass of every node whose settled bound,
/// 60 s behind, is past the last write at 45 s) before the run fails.
const CONVERGE_WITHIN: Duration = Duration::from_secs(150);
/// Hint replay and re-replication passes run this often on each node (as in production).
const SERVICE_INTERVAL: Duration = Duration::from_secs(1);
/// Re-replication waits this long after a ring change (production's LAN default).
const REPAIR_GRACE: Duration = Duration::from_secs(10);

/// Counts of what a run generated and did, summed over seeds in the report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub nodes: u64,
    pub sealed_runs: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub kills_for_good: u64,
    pub removals: u64,
    pub partitions: u64,
    pub loss_periods: u64,
    pub delay_spikes: u64,
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    pub datagrams_cut_by_partition: u64,
    pub datagrams_to_down_nodes: u64,
    pub requests_failed: u64,
    pub writes_acked: u64,
    pub writes_refused: u64,
    pub hints_stored: u64,
    pub hints_replayed: u64,
    pub hints_rerouted: u64,
    pub repair_copies: u64,
    pub ae_passes: u64,
    /// Comparisons of one node with one peer, and those where a request failed.
    pub ae_exchanges: u64,
    pub ae_failed_exchanges: u64,
    /// Digest requests refused because the requester was not in the peer's ring.
    pub ae_requests_refused: u64,
    pub ae_buckets_compared: u64,
    pub ae_buckets_differing: u64,
    /// Samples a node lacked, pulled from a peer and stored.
    pub ae_samples_pulled: u64,
    pub samples_lost_with_dead_nodes: u64,
    pub virtual_seconds: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            nodes,
            sealed_runs,
            crashes,
            restarts,
            kills_for_good,
            removals,
            partitions,
            loss_periods,
            delay_spikes,
            datagrams_sent,
            datagrams_lost,
            datagrams_cut_by_partition,
            datagrams_to_down_nodes,
            requests_failed,
            writes_acked,
            writes_refused,
            hints_stored,
            hints_replayed,
            hints_rerouted,
            repair_copies,
            ae_passes,
            ae_exchanges,
            ae_failed_exchanges,
            ae_requests_refused,
            ae_buckets_compared,
            ae_buckets_differing,
            ae_samples_pulled,
            samples_lost_with_dead_nodes,
            virtual_seconds
        );
    }
}

/// What a node keeps on disk, so it survives a simulated crash: what production keeps in
/// node.json, ring.json, repair.json, the TSDB and the hint queue.
#[derive(Default)]
struct Disk {
    identity: Option<NodeIdentity>,
    ring: RingState,
    repair_base: Option<Ring>,
    /// Series index to sample timestamps (a sample's value is implied by them).
    samples: BTreeMap<usize, BTreeSet<i64>>,
    /// Hinted samples per owner that was unreachable.
    hints: BTreeMap<NodeId, Vec<(usize, i64)>>,
}

struct SimHost {
    disk: Rc<RefCell<Disk>>,
    clock_ms: Rc<Cell<u64>>,
}

impl Host for SimHost {
    fn unix_millis(&self) -> u64 {
        self.clock_ms.get()
    }
    fn save_identity(&mut self, identity: &NodeIdentity) -> std::io::Result<()> {
        self.disk.borrow_mut().identity = Some(identity.clone());
        Ok(())
    }
    fn save_ring(&mut self, ring: &RingState) -> std::io::Result<()> {
        self.disk.borrow_mut().ring = ring.clone();
        Ok(())
    }
}

/// A running node's memory (lost on a crash).
struct Up {
    core: MembershipCore<SimHost>,
    view: ClusterView,
    next_ring_tick: Duration,
    next_service: Duration,
    /// The latest wake-up queued for this node; older ones are stale.
    wake_at: Option<Duration>,
    /// Re-replication: when the grace after a ring change ends.
    repair_wait_until: Option<Duration>,
    /// Re-replication: the ring of the pass in progress.
    repair_target: Option<Ring>,
    /// Anti-entropy: the next pass, set once the node is placed.
    next_ae: Option<Duration>,
    ae_clean_pass: Option<CleanPass>,
}

struct Node {
    addr: SocketAddr,
    http: String,
    peers: Vec<String>,
    disk: Rc<RefCell<Disk>>,
    up: Option<Up>,
    killed_for_good: bool,
    started_once: bool,
    id: Option<NodeId>,
}

enum Event {
    Deliver {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Wake(usize),
    Start(usize),
    Crash(usize),
    KillForGood(usize),
    Remove(usize),
    Partition(Vec<u8>),
    PartitionEnd,
    Loss(f64),
    LossEnd,
    DelaySpike(Duration),
    DelayEnd,
    Write,
    Heal,
}

struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An acknowledged sample and the nodes that held a copy or a hint of it at the ack.
struct Acked {
    series: usize,
    ts: i64,
    holders: BTreeSet<usize>,
    /// The owners by the coordinator's ring at the write.
    intended: BTreeSet<usize>,
    /// Every copy and hint was on a node when it was lost for good.
    lost: bool,
}

pub struct World {
    rng: StdRng,
    base: Instant,
    now: Duration,
    clock_ms: Rc<Cell<u64>>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    nodes: Vec<Node>,
    labels: Vec<Labels>,
    keys: Option<ClusterKeys>,
    /// Partition side per node while a partition lasts.
    sides: Option<Vec<u8>>,
    loss: f64,
    extra_delay: Duration,
    healed: bool,
    next_ts: i64,
    acked: Vec<Acked>,
    pub trace: Vec<String>,
    pub stats: Stats,
}

/// Why a run failed.
pub type Failure = String;

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(3..=7usize);
        let nodes = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946));
                Node {
                    addr,
                    http: format!("10.0.0.{}:9080", i + 1),
                    peers: Vec::new(),
                    disk: Rc::default(),
                    up: None,
                    killed_for_good: false,
                    started_once: false,
                    id: None,
                }
            })
            .collect::<Vec<_>>();
        let labels = (0..SERIES)
            .map(|s| Labels::from_pairs([("__name__", "sim_metric"), ("series", &s.to_string())]))
            .collect();
        // A third of the runs seal every datagram with a cluster key.
        let keys = rng.random_bool(1.0 / 3.0).then(|| {
            let key: [u8; 32] = rng.random();
            let line = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
            ClusterKeys::parse(&line).expect("a valid key")
        });
        let mut world = World {
            rng,
            base: Instant::now(),
            now: Duration::ZERO,
            clock_ms: Rc::new(Cell::new(EPOCH_MS)),
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            labels,
            keys,
            sides: None,
            loss: 0.0,
            extra_delay: Duration::ZERO,
            healed: false,
            next_ts: 0,
            acked: Vec::new(),
            trace: Vec::new(),
            stats: Stats::default(),
        };
        world.stats.nodes = n as u64;
        world.stats.sealed_runs = u64::from(world.keys.is_some());
        world.plan();
        world
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    fn at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>9.3}s {what}", self.now.as_secs_f64());
        self.trace.push(line);
    }

    /// Draws the whole scenario: who joins when and knows whom, the faults, the writes.
    fn plan(&mut self) {
        let n = self.nodes.len();
        // Node 0 founds the cluster; every other node is told a few earlier nodes as
        // peers (as a compose file or an operator would).
        for i in 1..n {
            self.nodes[i].peers = (0..i).map(|p| self.nodes[p].addr.to_string()).collect();
        }
        self.at(Duration::ZERO, Event::Start(0));
        for i in 1..n {
            let t = self.ms(0, 25_000);
            self.at(t, Event::Start(i));
        }
        // Faults, one after another with overlaps, until FAULTS_UNTIL.
        let mut t = self.ms(3_000, 6_000);
        let mut killed = false;
        while t < FAULTS_UNTIL {
            let kind = self.rng.random_range(0..100u32);
            let node = self.rng.random_range(0..n);
            // The founder is never lost for good: it is the one peer every node knows.
            let victim = self.rng.random_range(1..n);
            match kind {
                0..=34 => {
                    let down = self.ms(500, 20_000);
                    self.at(t, Event::Crash(node));
                    self.at(t + down, Event::Start(node));
                }
                35..=59 => {
                    let sides: Vec<u8> = (0..n).map(|_| self.rng.random_range(0..2)).collect();
                    let len = self.ms(1_000, 15_000);
                    self.at(t, Event::Partition(sides));
                    self.at(t + len, Event::PartitionEnd);
                }
                60..=79 => {
                    let p = self.rng.random_range(0.05..0.6);
                    let len = self.ms(1_000, 10_000);
                    self.at(t, Event::Loss(p));
                    self.at(t + len, Event::LossEnd);
                }
                80..=89 => {
                    let spike = self.ms(50, 2_000);
                    let len = self.ms(1_000, 8_000);
                    self.at(t, Event::DelaySpike(spike));
                    self.at(t + len, Event::DelayEnd);
                }
                _ if !killed && n >= 3 => {
                    killed = true;
                    let after = self.ms(2_000, 15_000);
                    self.at(t, Event::KillForGood(victim));
                    self.at(t + after, Event::Remove(victim));
                }
                _ => {}
            }
            t += self.ms(1_000, 6_000);
        }
        self.at(FAULTS_UNTIL, Event::Heal);
        // Writes through random nodes during the faults and a little after the heal.
        let mut t = self.ms(500, 1_500);
        while t < FAULTS_UNTIL + Duration::from_secs(5) {
            self.at(t, Event::Write);
            t += self.ms(50, 400);
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Runs the scenario, waits for the cluster to converge after the heal and checks
    /// the invariants.
    pub fn run(&mut self) -> Result<(), Failure> {
        let deadline = FAULTS_UNTIL + CONVERGE_WITHIN;
        let mut next_check = FAULTS_UNTIL + Duration::from_secs(10);
        // Since when membership, hints and re-replication have been settled: from then
        // on only anti-entropy moves samples, and each node's next complete pass with a
        // bound past the last write leaves every owner with the union.
        let mut settled: Option<Duration> = None;
        loop {
            let Some(Reverse(q)) = self.queue.pop() else {
                return Err("event queue ran dry".into());
            };
            if self.healed && q.at >= next_check {
                self.now = next_check;
                let done = self.converged().and_then(|()| {
                    let since = *settled.get_or_insert(next_check);
                    self.running()
                        .into_iter()
                        .try_for_each(|i| self.anti_entropy_done(i, since))
                });
                match done {
                    Ok(()) => break,
                    Err(_) if self.converged().is_err() => settled = None,
                    Err(_) => {}
                }
                next_check += Duration::from_secs(1);
                if next_check > deadline {
                    let why = done.err().unwrap_or_default();
                    self.stats.virtual_seconds = self.now.as_secs();
                    return Err(format!(
                        "did not converge within {CONVERGE_WITHIN:?} of the heal: {why}"
                    ));
                }
            }
            self.now = q.at.max(self.now);
            self.clock_ms
                .set(EPOCH_MS + u64::try_from(self.now.as_millis()).unwrap_or(u64::MAX));
            self.handle(q.event);
        }
        self.stats.virtual_seconds = self.now.as_secs();
        self.check()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, bytes } => {
                let now = self.instant();
                match &mut self.nodes[to].up {
                    Some(up) => up.core.on_datagram(&bytes, from, now),
                    None => {
                        self.stats.datagrams_to_down_nodes += 1;
                        return;
                    }
                }
                self.after_event(to);
            }
            Event::Wake(i) => self.wake(i),
            Event::Start(i) => self.start(i),
            Event::Crash(i) => {
                if self.nodes[i].up.take().is_some() {
                    self.stats.crashes += 1;
                    self.note(format!("crash node {i}"));
                }
            }
            Event::KillForGood(i) => {
                self.mark_lost_with(i);
                self.nodes[i].killed_for_good = true;
                self.nodes[i].up = None;
                self.stats.kills_for_good += 1;
                self.note(format!("kill node {i} for good"));
            }
            Event::Remove(victim) => self.remove(victim),
            Event::Partition(sides) => {
                self.stats.partitions += 1;
                self.note(format!("partition {sides:?}"));
                self.sides = Some(sides);
            }
            Event::PartitionEnd => {
                if self.sides.take().is_some() {
                    self.note("partition ends".into());
                }
            }
            Event::Loss(p) => {
                self.stats.loss_periods += 1;
                self.note(format!("message loss {:.0}%", p * 100.0));
                self.loss = p;
            }
            Event::LossEnd => self.loss = 0.0,
            Event::DelaySpike(d) => {
                self.stats.delay_spikes += 1;
                self.note(format!("delays up to {d:?}"));
                self.extra_delay = d;
            }
            Event::DelayEnd => self.extra_delay = Duration::ZERO,
            Event::Write => self.write(),
            Event::Heal => {
                self.note("heal: network whole, crashed nodes restart".into());
                self.healed = true;
                self.sides = None;
                self.loss = 0.0;
                self.extra_delay = Duration::ZERO;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].up.is_none() && !self.nodes[i].killed_for_good {
                        self.start(i);
                    }
                }
            }
        }
    }

    /// Marks the acknowledged samples whose every copy and hint is on node `i`, about
    /// to be lost for good with its disk.
    fn mark_lost_with(&mut self, i: usize) {
        let elsewhere = |nodes: &[Node], series: usize, ts: i64| {
            nodes.iter().enumerate().any(|(j, n)| {
                let disk = n.disk.borrow();
                j != i
                    && !n.killed_for_good
                    && (disk.samples.get(&series).is_some_and(|s| s.contains(&ts))
                        || disk.hints.values().any(|h| h.contains(&(series, ts))))
            })
        };
        for a in &mut self.acked {
            if !a.lost && !elsewhere(&self.nodes, a.series, a.ts) {
                a.lost = true;
            }
        }
    }

    fn start(&mut self, i: usize) {
        let node = &self.nodes[i];
        if node.up.is_some() || node.killed_for_good {
            return;
        }
        let previous = node.disk.borrow().identity.clone();
        let fresh_id = NodeId(self.rng.random::<u128>());
        let identity =
            identity::for_start(previous, self.clock_ms.get(), node.addr, &node.http, || {
                fresh_id
            });
        node.disk.borrow_mut().identity = Some(identity.clone());
        let ring = node.disk.borrow().ring.clone();
        let mut config = MembershipConfig::new(PathBuf::new(), node.addr, node.http.clone());
        config.peers = node.peers.clone();
        config.keys = self.keys.clone();
        let host = SimHost {
            disk: node.disk.clone(),
            clock_ms: self.clock_ms.clone(),
        };
        let seed = StdRng::seed_from_u64(self.rng.random());
        let core =
            match MembershipCore::start(config, identity.clone(), ring, host, seed, self.instant())
            {
                Ok(core) => core,
                Err(e) => panic!("the simulated host never fails: {e}"),
            };
        let restart = node.started_once;
        let view = core.view();
        let ring_interval = core.config().ring_sync_interval;
        let node = &mut self.nodes[i];
        node.started_once = true;
        node.id = Some(identity.id);
        node.up = Some(Up {
            core,
            view,
            next_ring_tick: self.now + ring_interval,
            next_service: self.now + SERVICE_INTERVAL,
            wake_at: None,
            repair_wait_until: None,
            repair_target: None,
            next_ae: None,
            ae_clean_pass: None,
        });
        if restart {
            self.stats.restarts += 1;
            self.note(format!("restart node {i}"));
        } else {
            self.note(format!("start node {i} as {}", identity.id));
        }
        self.after_event(i);
    }

    /// Ends one event on node `i` like the tokio runtime does: flush, send, then sleep
    /// until the next thing is due.
    fn after_event(&mut self, i: usize) {
        let now = self.instant();
        let Some(up) = &mut self.nodes[i].up else {
            return;
        };
        if let Some(view) = up.core.flush(now) {
            up.view = view;
        }
        let outbox = up.core.take_outbox();
        for out in outbox {
            self.send(i, out);
        }
        self.schedule_wake(i);
    }

    fn schedule_wake(&mut self, i: usize) {
        let base = self.base;
        let now = self.now;
        let Some(up) = &mut self.nodes[i].up else {
            return;
        };
        let since = |t: Instant| t.saturating_duration_since(base);
        let mut next = up.next_ring_tick.min(up.next_service);
        if let Some(t) = up.next_ae {
            next = next.min(t);
        }
        if let Some(t) = up.core.next_timer() {
            next = next.min(since(t));
        }
        if let Some(t) = up.core.next_announce() {
            next = next.min(since(t));
        }
        let next = next.max(now);
        if up.wake_at != Some(next) {
            up.wake_at = Some(next);
            self.at(next, Event::Wake(i));
        }
    }

    fn wake(&mut self, i: usize) {
        let now = self.now;
        let instant = self.instant();
        {
            let Some(up) = &mut self.nodes[i].up else {
                return;
            };
            if up.wake_at != Some(now) {
                return;
            }
            up.wake_at = None;
        }
        // One thing per step, flushed in between, as the runtime's select loop does.
        if self.up(i).core.next_timer().is_some_and(|t| t <= instant) {
            self.up(i).core.fire_due_timers(instant);
            self.after_event(i);
        }
        if self.nodes[i].up.is_none() {
            return;
        }
        if self
            .up(i)
            .core
            .next_announce()
            .is_some_and(|t| t <= instant)
        {
            let resolved: Vec<SocketAddr> = self
                .up(i)
                .core
                .announce_targets()
                .iter()
                .filter_map(|t| t.parse().ok())
                .collect();
            self.up(i).core.announce(&resolved, instant);
            self.after_event(i);
        }
        if self.up(i).next_ring_tick <= now {
            let interval = self.up(i).core.config().ring_sync_interval;
            self.up(i).next_ring_tick = now + interval;
            self.up(i).core.ring_tick(instant);
            self.after_event(i);
        }
        if self.up(i).next_service <= now {
            self.up(i).next_service = now + SERVICE_INTERVAL;
            self.replay_hints(i);
            self.rereplicate(i);
        }
        // Anti-entropy starts once the node is placed (`wait_placed`), then runs every
        // interval.
        let placed = self.up(i).view.local.join_seq.is_some();
        match self.up(i).next_ae {
            None if placed => self.up(i).next_ae = Some(now + AE_FIRST_DELAY),
            Some(t) if t <= now => {
                self.up(i).next_ae = Some(now + AE_INTERVAL);
                self.anti_entropy(i);
            }
            _ => {}
        }
        self.schedule_wake(i);
    }

    fn up(&mut self, i: usize) -> &mut Up {
        self.nodes[i].up.as_mut().expect("node is up")
    }

    fn side(&self, i: usize) -> u8 {
        self.sides.as_ref().map_or(0, |s| s[i])
    }

    fn send(&mut self, from: usize, out: Outgoing) {
        self.stats.datagrams_sent += 1;
        let Some(to) = self.nodes.iter().position(|n| n.addr == out.to) else {
            return;
        };
        if self.side(from) != self.side(to) {
            self.stats.datagrams_cut_by_partition += 1;
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.stats.datagrams_lost += 1;
            return;
        }
        let mut delay = self.ms(1, 20);
        if self.rng.random_bool(0.05) {
            delay += self.ms(20, 300);
        }
        if self.extra_delay > Duration::ZERO {
            delay += Duration::from_millis(
                self.rng
                    .random_range(0..=u64::try_from(self.extra_delay.as_millis()).unwrap_or(0)),
            );
        }
        let at = self.now + delay;
        let from_addr = self.nodes[from].addr;
        self.at(
            at,
            Event::Deliver {
                to,
                from: from_addr,
                bytes: out.bytes,
            },
        );
    }

    /// Whether an internal HTTP request from `a` to `b` succeeds now (both up, same side
    /// of any partition, not lost).
    fn request(&mut self, a: usize, b: usize) -> bool {
        let ok = self.nodes[a].up.is_some()
            && self.nodes[b].up.is_some()
            && self.side(a) == self.side(b)
            && !(self.loss > 0.0 && self.rng.random_bool(self.loss));
        if !ok {
            self.stats.requests_failed += 1;
        }
        ok
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == Some(id))
    }

    fn store(&mut self, node: usize, series: usize, samples: impl IntoIterator<Item = i64>) {
        self.nodes[node]
            .disk
            .borrow_mut()
            .samples
            .entry(series)
            .or_default()
            .extend(samples);
    }

    /// A client writes one sample through a random running node; acknowledged per ADR
    /// 0006 once each owner (by that node's ring) has a copy or a durable hint.
    fn write(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.is_some())
            .collect();
        if running.is_empty() {
            return;
        }
        let coordinator = running[self.rng.random_range(0..running.len())];
        let series = self.rng.random_range(0..SERIES);
        // A sample's timestamp is the coordinator's clock (the settled bound of
        // anti-entropy compares with it); writes are at least 50 ms apart.
        let clock = i64::try_from(self.clock_ms.get()).unwrap_or(i64::MAX);
        self.next_ts = clock.max(self.next_ts + 1);
        let ts = self.next_ts;
        let view = self.up(coordinator).view.clone();
        let local = view.local.id;
        let ring = &view.ring;
        // Exactly as replication::split_by_owner: with no more nodes than replicas every
        // node owns every series.
        if ring.is_empty() {
            // Refused with 503 (`ReplicatingStorage::replicate`): not acknowledged.
            self.stats.writes_refused += 1;
            return;
        }
        let owners: Vec<NodeId> = if placement::every_node_owns_every_series(ring.len()) {
            ring.nodes_in_join_order().iter().map(|n| n.id).collect()
        } else {
            ring.owners(placement::partition_key(&self.labels[series]))
        };
        let mut holders = BTreeSet::new();
        let intended: BTreeSet<usize> = owners.iter().filter_map(|o| self.index_of(*o)).collect();
        for owner in owners {
            if owner == local {
                self.store(coordinator, series, [ts]);
                holders.insert(coordinator);
                continue;
            }
            let state = view.member(owner).map_or(MemberState::Down, |m| m.state);
            let target = self.index_of(owner);
            if let Some(t) = target {
                if state != MemberState::Down && self.request(coordinator, t) {
                    self.store(t, series, [ts]);
                    holders.insert(t);
                    continue;
                }
            }
            self.nodes[coordinator]
                .disk
                .borrow_mut()
                .hints
                .entry(owner)
                .or_default()
                .push((series, ts));
            self.stats.hints_stored += 1;
            holders.insert(coordinator);
        }
        if std::env::var_os("SIM_TRACE_WRITES").is_some() {
            self.note(format!(
                "write ts {ts} series {series} via node {coordinator}: on {holders:?}"
            ));
        }
        self.stats.writes_acked += 1;
        self.acked.push(Acked {
            series,
            ts,
            holders,
            intended,
            lost: false,
        });
    }

    /// Hinted handoff as `replication::handoff`: each owner alive in this node's view and
    /// in its ring gets its hints for the series it still owns, the others go to their
    /// current owners (`handoff::replay_plan`); the hints of an owner the ring shows
    /// removed go to the owners its series gained (`handoff::reroute_plan`); a failed
    /// delivery waits for the next round.
    fn replay_hints(&mut self, i: usize) {
        let view = self.up(i).view.clone();
        let targets: Vec<NodeId> = self.nodes[i].disk.borrow().hints.keys().copied().collect();
        for target in targets {
            if view.ring.removed().contains(&target) {
                self.reroute_hints(i, &view, target);
                continue;
            }
            let alive = view
                .member(target)
                .is_some_and(|m| m.state == MemberState::Alive);
            if !alive || view.ring.node(target).is_none() || self.index_of(target).is_none() {
                continue;
            }
            // A series the target no longer owns by this node's ring goes to its current
            // owners (`handoff::replay_plan`).
            let ring = view.ring.clone();
            let replayed = self.deliver_hints(i, target, |hint| replay_plan(hint, &ring, target));
            self.stats.hints_replayed += replayed;
        }
    }

    fn reroute_hints(&mut self, i: usize, view: &ClusterView, removed: NodeId) {
        let ring = view.ring.clone();
        let rerouted = self.deliver_hints(i, removed, |hint| reroute_plan(hint, &ring, removed));
        self.stats.hints_rerouted += rerouted;
    }

    /// Delivers node `i`'s hints for `target` oldest first, each to the owners `plan`
    /// names for its series (stored here when this node is one); stops at the first
    /// failed request, keeping the rest for the next round. Returns how many it delivered.
    fn deliver_hints(
        &mut self,
        i: usize,
        target: NodeId,
        plan: impl Fn(Vec<Series>) -> BTreeMap<NodeId, Vec<Series>>,
    ) -> u64 {
        let hinted = self.nodes[i]
            .disk
            .borrow()
            .hints
            .get(&target)
            .cloned()
            .unwrap_or_default();
        let mut delivered = 0;
        'hints: for &(series, ts) in &hinted {
            let hint = Series {
                labels: self.labels[series].clone(),
                samples: vec![Sample::new(ts, ts as f64)],
            };
            for owner in plan(vec![hint]).into_keys() {
                let Some(o) = self.index_of(owner) else {
                    continue;
                };
                if o != i && !self.request(i, o) {
                    break 'hints;
                }
                self.store(o, series, [ts]);
            }
            delivered += 1;
        }
        let mut disk = self.nodes[i].disk.borrow_mut();
        if delivered == hinted.len() {
            disk.hints.remove(&target);
        } else if let Some(left) = disk.hints.get_mut(&target) {
            left.drain(..delivered);
        }
        delivered as u64
    }

    /// Re-replication as `replication::rereplicate::Repairer`: once placed, compare the
    /// ring last repaired for with the current one; after the grace, send each local
    /// series whose owners changed to the owners it gained when this node is its sender
    /// (`targets_for`), retrying until every copy is stored, then move the base forward.
    fn rereplicate(&mut self, i: usize) {
        let now = self.now;
        let view = self.up(i).view.clone();
        if view.local.join_seq.is_none() {
            return;
        }
        let current = view.ring.clone();
        let base = {
            let mut disk = self.nodes[i].disk.borrow_mut();
            disk.repair_base
                .get_or_insert_with(|| current.clone())
                .clone()
        };
        let up = self.up(i);
        if base.same_placement(&current) {
            up.repair_wait_until = None;
            up.repair_target = None;
            return;
        }
        let target = match &up.repair_target {
            Some(t) if t.same_placement(&current) => t.clone(),
            // A new ring (or a pass interrupted by one): wait the grace, then take the
            // ring as it is then.
            _ => match up.repair_wait_until {
                None => {
                    up.repair_wait_until = Some(now + REPAIR_GRACE);
                    up.repair_target = None;
                    return;
                }
                Some(until) if now < until => return,
                Some(_) => {
                    up.repair_wait_until = None;
                    up.repair_target = Some(current.clone());
                    current.clone()
                }
            },
        };
        let local = view.local.id;
        let held: Vec<(usize, BTreeSet<i64>)> = self.nodes[i]
            .disk
            .borrow()
            .samples
            .iter()
            .map(|(s, ts)| (*s, ts.clone()))
            .collect();
        let mut complete = true;
        for (series, samples) in held {
            let key = placement::partition_key(&self.labels[series]);
            for gained in targets_for(key, &base, &target, &view, local) {
                let Some(t) = self.index_of(gained) else {
                    continue;
                };
                if self.request(i, t) {
                    self.store(t, series, samples.iter().copied());
                    self.stats.repair_copies += 1;
                } else {
                    complete = false;
                }
            }
        }
        if complete {
            let nodes = |r: &Ring| -> Vec<Option<usize>> {
                r.slots()
                    .iter()
                    .map(|s| (!s.removed).then(|| self.index_of(s.node.id)).flatten())
                    .collect()
            };
            let line = format!(
                "node {i} re-replicated for ring {:?} (from {:?})",
                nodes(&target),
                nodes(&base)
            );
            self.note(line);
            self.nodes[i].disk.borrow_mut().repair_base = Some(target);
            self.up(i).repair_target = None;
        }
    }

    /// The operator removes a node killed for good, through any running node that knows
    /// it; retried every second until one does (the tombstone then spreads by gossip).
    fn remove(&mut self, victim: usize) {
        let Some(victim_id) = self.nodes[victim].id else {
            return;
        };
        let instant = self.instant();
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].up.as_ref().is_some_and(|u| {
                    u.core
                        .ring_state()
                        .get(victim_id)
                        .is_some_and(|e| !e.removed)
                })
            })
            .collect();
        if candidates.is_empty() {
            // Nobody knows it placed (yet): try again later.
            if !self.healed || self.now < FAULTS_UNTIL + Duration::from_secs(30) {
                let t = self.now + Duration::from_secs(1);
                self.at(t, Event::Remove(victim));
            }
            return;
        }
        let by = candidates[self.rng.random_range(0..candidates.len())];
        if self.up(by).core.remove(victim_id, instant) {
            self.stats.removals += 1;
            self.note(format!("node {by} removes node {victim}"));
            self.after_event(by);
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.is_some())
            .collect()
    }

    /// Every running node agrees and nothing is left to do but anti-entropy; `Err` says
    /// what is not yet.
    fn converged(&self) -> Result<(), String> {
        let running = self.running();
        let first = &self.nodes[running[0]].up.as_ref().ok_or("no node")?.core;
        let digest = first.ring_state().digest();
        let ring = first.ring_state().ring();
        for &i in &running {
            let up = self.nodes[i].up.as_ref().ok_or("down")?;
            if up.view.local.join_seq.is_none() {
                return Err(format!("node {i} has no place yet"));
            }
            if up.core.ring_state().digest() != digest {
                return Err(format!(
                    "node {i}'s ring differs from node {}'s:\n{:?}\n{:?}",
                    running[0],
                    up.core.ring_state(),
                    first.ring_state()
                ));
            }
            for node in ring.nodes_in_join_order() {
                let state = up.view.member(node.id).map(|m| m.state);
                if node.id != up.view.local.id && state != Some(MemberState::Alive) {
                    let theirs = self
                        .index_of(node.id)
                        .and_then(|n| self.nodes[n].up.as_ref())
                        .map(|u| u.view.local.clone());
                    return Err(format!(
                        "node {i} sees ring node {} as {state:?}: {:?}; it is {theirs:?}",
                        node.id,
                        up.view.member(node.id).map(|m| &m.identity)
                    ));
                }
            }
            let disk = self.nodes[i].disk.borrow();
            if let Some((t, _)) = disk.hints.iter().find(|(_, h)| !h.is_empty()) {
                return Err(format!("node {i} still holds hints for {t}"));
            }
            if !disk
                .repair_base
                .as_ref()
                .is_some_and(|b| b.same_placement(&ring))
            {
                return Err(format!("node {i} has not finished re-replication"));
            }
        }
        for node in ring.nodes_in_join_order() {
            match self.index_of(node.id) {
                Some(i) if self.nodes[i].up.is_some() => {}
                _ => {
                    return Err(format!(
                        "ring node {} is not running and not removed",
                        node.id
                    ))
                }
            }
        }
        Ok(())
    }

    /// The invariants, once the cluster converged.
    fn check(&mut self) -> Result<(), Failure> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.is_some())
            .collect();
        let ring = self.up(running[0]).view.ring.clone();
        // Join order identical on all nodes.
        let order = |r: &Ring| -> Vec<(NodeId, bool)> {
            r.slots().iter().map(|s| (s.node.id, s.removed)).collect()
        };
        for &i in &running {
            let theirs = self.up(i).view.ring.clone();
            if order(&theirs) != order(&ring) {
                return Err(format!(
                    "join order differs: node {i} {:?}, node {} {:?}",
                    order(&theirs),
                    running[0],
                    order(&ring)
                ));
            }
        }
        let live = ring.len();
        let wanted = placement::REPLICATION_FACTOR.min(live);
        let lost: BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].killed_for_good)
            .collect();
        let mut required: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
        let mut gaps: Vec<String> = Vec::new();
        for a in &self.acked {
            if a.lost || a.holders.iter().all(|h| lost.contains(h)) {
                // Every copy and hint was on the node lost for good (its disk with it):
                // gone, as ADR 0006 allows (an acknowledgement by hint, or by a ring
                // that knew fewer nodes).
                self.stats.samples_lost_with_dead_nodes += 1;
                continue;
            }
            required.entry(a.series).or_default().insert(a.ts);
        }
        for (&series, samples) in &required {
            let key = placement::partition_key(&self.labels[series]);
            let owners = ring.owners(key);
            let distinct: BTreeSet<NodeId> = owners.iter().copied().collect();
            if owners.len() != wanted || distinct.len() != wanted {
                return Err(format!(
                    "series {series} has owners {owners:?}, wanted {wanted} distinct"
                ));
            }
            // Readable from every node: fan-out asks every alive node (ADR 0007), and
            // after the heal every running node is alive in every view.
            let readable: BTreeSet<i64> = running
                .iter()
                .flat_map(|&n| {
                    self.nodes[n]
                        .disk
                        .borrow()
                        .samples
                        .get(&series)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            if let Some(ts) = samples.difference(&readable).next() {
                let holders = self
                    .acked
                    .iter()
                    .find(|a| a.ts == *ts)
                    .map(|a| a.holders.clone())
                    .unwrap_or_default();
                return Err(format!(
                    "series {series}: acknowledged sample {ts} (copies or hints on nodes \
                     {holders:?} at the acknowledgement) is on no running node"
                ));
            }
            // Replicas: every owner holds every acknowledged sample, and the owners'
            // copies are identical. Anti-entropy closes what re-replication and handoff
            // leave short (a write routed by a stale ring after the re-replication pass,
            // a pass whose sender died, a hint lost with its node).
            let mut copies: Vec<(usize, BTreeSet<i64>)> = Vec::new();
            for owner in &owners {
                let i = self
                    .index_of(*owner)
                    .ok_or_else(|| format!("owner {owner} unknown"))?;
                let held = self.nodes[i]
                    .disk
                    .borrow()
                    .samples
                    .get(&series)
                    .cloned()
                    .unwrap_or_default();
                let missing: Vec<i64> = samples.difference(&held).copied().collect();
                if let Some(first) = missing.first() {
                    let routed_elsewhere = missing
                        .iter()
                        .filter(|&&ts| {
                            self.acked
                                .iter()
                                .find(|a| a.ts == ts)
                                .is_some_and(|a| !a.intended.contains(&i))
                        })
                        .count();
                    let on: Vec<usize> = running
                        .iter()
                        .copied()
                        .filter(|&n| {
                            self.nodes[n]
                                .disk
                                .borrow()
                                .samples
                                .get(&series)
                                .is_some_and(|t| t.contains(first))
                        })
                        .collect();
                    gaps.push(format!(
                        "series {series}: owner node {i} lacks {} acknowledged samples (first \
                         {first}, held by nodes {on:?}; {routed_elsewhere} written by a ring \
                         without it)",
                        missing.len()
                    ));
                }
                copies.push((i, held));
            }
            if copies.windows(2).any(|w| w[0].1 != w[1].1) {
                gaps.push(format!("series {series}: its owners' copies differ"));
            }
        }
        if !gaps.is_empty() {
            return Err(gaps.join("; "));
        }
        Ok(())
    }
}

//! The faults the suite injects into one node while Prometheus keeps writing: kill and
//! restart, pause and resume, network partition, degraded network (10% packet loss
//! plus 100 ms delay on every packet the node sends), and replacement (the node
//! destroyed with its volume, removed from the cluster through the admin API, and a
//! fresh node with an empty volume, so a new identity, started in its place).
//!
//! Owns: how each fault is applied and healed. Network faults are iptables rules in
//! the container's network namespace, entered from the host. Degraded network uses
//! `tc netem` when the kernel has sch_netem; otherwise it is emulated: iptables'
//! `statistic` match drops 10% of egress packets and every other egress packet goes to
//! an NFQUEUE that integration/netem_delay.py holds for 100 ms before accepting.
//! Calls `stack`, and `api` for a node's identity and the removal endpoint.

use std::process::Child;
use std::time::Duration;

use crate::api;
use crate::stack::Stack;

/// Netfilter queue number used by the delay emulation.
const DELAY_QUEUE: &str = "7";
const DELAY_MS: &str = "100";
const LOSS_PROBABILITY: &str = "0.1";

#[derive(Clone, Copy, Debug)]
pub enum FaultKind {
    KillRestart,
    PauseResume,
    Partition,
    Netem,
    Replace,
}

impl FaultKind {
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "killed (SIGKILL) and restarted",
            FaultKind::PauseResume => "paused (SIGSTOP) and resumed (SIGCONT)",
            FaultKind::Partition => "cut off from the network and reconnected",
            FaultKind::Netem => "10% egress packet loss and 100 ms egress delay",
            FaultKind::Replace => {
                "destroyed (container and volume removed), removed from the cluster, \
                 replaced by a fresh node"
            }
        }
    }

    /// Whether the node cannot answer at all while the fault holds (a slow network
    /// still lets it answer).
    pub fn reach(self) -> Reach {
        match self {
            FaultKind::KillRestart
            | FaultKind::PauseResume
            | FaultKind::Partition
            | FaultKind::Replace => Reach::Unreachable,
            FaultKind::Netem => Reach::Reachable,
        }
    }
}

/// Whether a faulted node can still answer (see `FaultKind::reach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The node cannot answer anything.
    Unreachable,
    /// Slow or lossy, but it answers.
    Reachable,
}

/// A fault in force on one service; `heal` undoes it.
pub enum Applied {
    Killed,
    Paused,
    Partitioned,
    TcNetem,
    EmulatedNetem {
        delayer: Child,
    },
    /// Destroyed; `old_id` is the identity that died with its volume.
    Destroyed {
        old_id: String,
    },
}

const PARTITION_RULES: [[&str; 4]; 2] = [
    ["INPUT", "-i", "eth0", "DROP"],
    ["OUTPUT", "-o", "eth0", "DROP"],
];

pub fn apply(stack: &Stack, service: &str, kind: FaultKind) -> Result<Applied, String> {
    match kind {
        FaultKind::KillRestart => stack.kill(service).map(|()| Applied::Killed),
        FaultKind::PauseResume => stack.pause(service).map(|()| Applied::Paused),
        FaultKind::Partition => {
            for [chain, dir, dev, target] in PARTITION_RULES {
                stack.in_netns(service, &["iptables", "-I", chain, dir, dev, "-j", target])?;
            }
            Ok(Applied::Partitioned)
        }
        FaultKind::Netem => degrade(stack, service),
        FaultKind::Replace => {
            let old_id = api::node_id(api::node_url(service)?)?;
            stack.destroy(service)?;
            println!("  destroyed {service} (node {old_id}): container and volume removed");
            Ok(Applied::Destroyed { old_id })
        }
    }
}

pub fn heal(stack: &Stack, service: &str, applied: Applied) -> Result<(), String> {
    match applied {
        Applied::Killed => stack.start(service),
        Applied::Paused => stack.unpause(service),
        Applied::Partitioned => {
            for [chain, dir, dev, target] in PARTITION_RULES {
                stack.in_netns(service, &["iptables", "-D", chain, dir, dev, "-j", target])?;
            }
            Ok(())
        }
        Applied::TcNetem => stack
            .in_netns(service, &["tc", "qdisc", "del", "dev", "eth0", "root"])
            .map(drop),
        Applied::EmulatedNetem { delayer } => restore_network(stack, service, delayer),
        Applied::Destroyed { old_id } => {
            remove_from_cluster(service, &old_id)?;
            stack.recreate(service)
        }
    }
}

/// How long removal is retried while the other nodes still see the dead node as
/// suspect (the endpoint refuses a node not down in the answering node's view).
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST /api/v1/admin/cluster/remove` on another node until it answers 200.
fn remove_from_cluster(service: &str, old_id: &str) -> Result<(), String> {
    let (asked, base) = api::NODES
        .iter()
        .find(|(name, _)| *name != service)
        .ok_or("no other node to ask")?;
    let url = format!("{base}/api/v1/admin/cluster/remove");
    let deadline = std::time::Instant::now() + REMOVAL_TIMEOUT;
    loop {
        let (status, body) = api::post_form(&url, &[("node", old_id)])?;
        if status == 200 {
            println!("  removed node {old_id} through {asked}: {body}");
            return Ok(());
        }
        if status != 409 || std::time::Instant::now() >= deadline {
            return Err(format!(
                "removing {old_id} through {asked}: {status} {body}"
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// True when the kernel offers sch_netem (probed by adding and removing a qdisc).
fn tc_netem_available(stack: &Stack, service: &str) -> bool {
    let probe = [
        "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
    ];
    if stack.in_netns(service, &probe).is_err() {
        return false;
    }
    let _ = stack.in_netns(service, &["tc", "qdisc", "del", "dev", "lo", "root"]);
    true
}

fn degrade(stack: &Stack, service: &str) -> Result<Applied, String> {
    if tc_netem_available(stack, service) {
        println!("  network: tc netem (kernel has sch_netem)");
        let netem = ["tc", "qdisc", "add", "dev", "eth0", "root", "netem"];
        let params = ["delay", "100ms", "loss", "10%"];
        stack.in_netns(service, &[&netem[..], &params[..]].concat())?;
        return Ok(Applied::TcNetem);
    }
    println!(
        "  network: kernel lacks sch_netem; emulating netem with iptables statistic \
         (10% egress drop) + NFQUEUE delayer (100 ms on every egress packet)"
    );
    let delayer = stack.spawn_in_netns(
        service,
        &[
            "python3",
            "integration/netem_delay.py",
            DELAY_QUEUE,
            DELAY_MS,
        ],
    )?;
    // The queue must be bound before packets are sent to it.
    std::thread::sleep(Duration::from_millis(800));
    for rule in emulation_rules() {
        let mut args = vec!["iptables", "-A"];
        args.extend_from_slice(&rule);
        if let Err(e) = stack.in_netns(service, &args) {
            let _ = restore_network(stack, service, delayer);
            return Err(e);
        }
    }
    Ok(Applied::EmulatedNetem { delayer })
}

/// Drop first (10% of egress), then queue everything that survives for the delay.
/// `--queue-bypass` lets packets pass undelayed if the delayer is not running.
fn emulation_rules() -> [Vec<&'static str>; 2] {
    [
        vec![
            "OUTPUT",
            "-o",
            "eth0",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            LOSS_PROBABILITY,
            "-j",
            "DROP",
        ],
        vec![
            "OUTPUT",
            "-o",
            "eth0",
            "-j",
            "NFQUEUE",
            "--queue-num",
            DELAY_QUEUE,
            "--queue-bypass",
        ],
    ]
}

/// Removes the rules, lets the delayer release what it holds, then stops it.
fn restore_network(stack: &Stack, service: &str, mut delayer: Child) -> Result<(), String> {
    match measured_loss(stack, service) {
        Ok((dropped, total)) => println!(
            "  emulated loss: dropped {dropped} of {total} egress packets as netfilter counts them ({:.1}%)",
            100.0 * dropped as f64 / total.max(1) as f64
        ),
        Err(e) => println!("  emulated loss: counters unreadable: {e}"),
    }
    let mut result = Ok(());
    for rule in emulation_rules() {
        let mut args = vec!["iptables", "-D"];
        args.extend_from_slice(&rule);
        if let Err(e) = stack.in_netns(service, &args) {
            result = Err(e);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(pid) = i32::try_from(delayer.id()) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = delayer.wait();
    result
}

/// Packets dropped by the loss rule and all egress packets that reached the rules,
/// from the rules' packet counters.
fn measured_loss(stack: &Stack, service: &str) -> Result<(u64, u64), String> {
    let listing = stack.in_netns(service, &["iptables", "-L", "OUTPUT", "-v", "-x", "-n"])?;
    let (mut dropped, mut delayed) = (0, 0);
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(packets), Some(target)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Ok(packets) = packets.parse::<u64>() else {
            continue;
        };
        match *target {
            "DROP" if line.contains("statistic") => dropped += packets,
            "NFQUEUE" => delayed += packets,
            _ => {}
        }
    }
    Ok((dropped, dropped + delayed))
}

/// Median TCP connect time (ms) to `addr` over `tries` attempts; run inside a node's
/// network namespace by the driver's `connect-rtt` subcommand to show the delay.
pub fn connect_rtt_ms(addr: &str, tries: usize) -> Result<f64, String> {
    let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut times = Vec::with_capacity(tries);
    for _ in 0..tries {
        let start = std::time::Instant::now();
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
        .get(tries / 2)
        .copied()
        .ok_or_else(|| "no attempts".to_string())
}

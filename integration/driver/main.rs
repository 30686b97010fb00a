//! Integration driver (`make integration`): starts the docker-compose stack (a real
//! Prometheus writing into a three-node Timbala cluster through nginx), checks PromQL
//! answers with promtool against Prometheus's local storage and every node, then runs
//! each fault scenario with writes flowing and accounts for every sample (after the
//! last one, a node replaced by a fresh one, over the whole run). Exits non-zero
//! when any check fails; the stack is always torn down.
//!
//! Owns: the order of the suite, the scenario timeline and the printed report.
//! Calls `stack` (compose lifecycle), `faults` (inject and heal), `bad_client` (hostile
//! requests), `checks` (waits and comparisons) and `api` (endpoints).
//!
//! Subcommand `connect-rtt ADDR`: prints the median TCP connect time to ADDR; the
//! driver runs it inside a node's network namespace to show the injected delay.

mod api;
mod bad_client;
mod checks;
mod faults;
#[path = "../../tests/support/histogram_workload.rs"]
mod histogram_workload;
#[path = "../../tests/support/http_client.rs"]
mod http_client;
mod stack;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use checks::{now_s, wait_for, WindowAccount, WriteCounters};
use faults::{FaultKind, Reach};
use stack::Stack;

/// Writes flowing before a fault, the fault's duration, and writes after healing.
const BEFORE_FAULT: Duration = Duration::from_secs(5);
const FAULT_HOLD: Duration = Duration::from_secs(20);
const AFTER_HEAL: Duration = Duration::from_secs(5);
/// Margin between the first scrapes and the earliest data a compared query reads.
const WARM_UP_MARGIN_S: f64 = 15.0;
/// Queries are compared this long before now, so their data has surely been sent.
const ANSWER_LAG_S: f64 = 10.0;
/// Bound on every wait for recovery or convergence.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long before the stack came up the remote-read probe's samples lie: before
/// Prometheus's first sample, and well inside Timbala's 1 h out-of-order window.
const REMOTE_READ_PROBE_AGE_S: f64 = 600.0;
/// How long before the accounted history the native-histogram workload starts: its ten
/// minutes end before the history does.
const HISTOGRAM_AGE_MS: i64 = 11 * 60_000;
/// A node's gossip+HTTP address seen from another node, for the RTT probe.
const RTT_PROBE_TARGET: &str = "10.213.7.11:9080";

const SCENARIOS: [(FaultKind, &str); 5] = [
    (FaultKind::KillRestart, "timbala-2"),
    (FaultKind::PauseResume, "timbala-3"),
    (FaultKind::Partition, "timbala-2"),
    (FaultKind::Netem, "timbala-3"),
    (FaultKind::Replace, "timbala-2"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, cmd, addr] = args.as_slice() {
        if cmd == "connect-rtt" {
            return match faults::connect_rtt_ms(addr, 11) {
                Ok(ms) => {
                    println!("{ms:.2}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let started = Instant::now();
    let failures = match run_suite() {
        Ok(failures) => failures,
        Err(e) => vec![format!("suite aborted: {e}")],
    };
    println!(
        "\nintegration suite took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("integration suite PASSED");
        ExitCode::SUCCESS
    } else {
        println!("integration suite FAILED:");
        for f in &failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}

/// Runs everything against one stack; returns the failed checks.
fn run_suite() -> Result<Vec<String>, String> {
    let mut stack = Stack::up()?;
    let started = Instant::now();
    let result = run_checks(&stack, started);
    let failed = !matches!(&result, Ok(f) if f.is_empty());
    if failed {
        stack.dump_logs_on_teardown();
    }
    drop(stack);
    result
}

fn run_checks(stack: &Stack, started: Instant) -> Result<Vec<String>, String> {
    let suite_started_s = now_s() - started.elapsed().as_secs_f64();
    wait_for(
        "the cluster to converge",
        CONVERGENCE_TIMEOUT,
        checks::cluster_converged,
    )?;
    println!("stack up: 3 nodes alive, 4 targets scraped");
    // Every sample from here on is on all three nodes at the end (checked after the
    // replacement scenario, whose new node must hold the whole history).
    let history_start_s = now_s();
    // No compared query may reach back to the first scrapes (see checks::INSTANT_QUERIES).
    let warm_up = Duration::from_secs_f64(checks::QUERY_REACH_S + WARM_UP_MARGIN_S + ANSWER_LAG_S);
    std::thread::sleep(warm_up.saturating_sub(started.elapsed()));

    let mut failures = compare_answers("after warm-up")?;
    failures.extend(checks::remote_read_through_prometheus(
        suite_started_s - REMOTE_READ_PROBE_AGE_S,
    )?);
    // Native histograms, written to Prometheus and the cluster after the remote-read
    // check (they move Prometheus's oldest local sample back) and wholly before the
    // accounted history, whose raw-sample comparison is about floats.
    let histogram_base_ms = (history_start_s * 1000.0) as i64 / 1000 * 1000 - HISTOGRAM_AGE_MS;
    checks::write_native_histograms(histogram_base_ms)?;
    failures.extend(compare_histograms("after warm-up", histogram_base_ms));
    // Mid-run, before the faults: everything after it is the proof it hurt nothing.
    failures.extend(bad_client::run()?);
    let mut last_heal = Instant::now();
    for (kind, service) in SCENARIOS {
        let (found, healed) = run_scenario(stack, kind, service, history_start_s)?;
        failures.extend(found);
        last_heal = healed;
    }
    // As at warm-up: no compared window may reach back to the first samples a node's
    // counters had after its outage (the last scenario's node was down a minute and
    // came back with counters from zero; Prometheus 2.42 extrapolates such windows
    // differently, see checks::INSTANT_QUERIES).
    let settle = Duration::from_secs_f64(checks::QUERY_REACH_S + WARM_UP_MARGIN_S + ANSWER_LAG_S);
    std::thread::sleep(settle.saturating_sub(last_heal.elapsed()));
    failures.extend(compare_answers("after all faults")?);
    failures.extend(compare_histograms("after all faults", histogram_base_ms));
    Ok(failures)
}

/// The query comparison at a time whose samples have all reached Timbala.
fn compare_answers(when: &str) -> Result<Vec<String>, String> {
    let at = now_s() - ANSWER_LAG_S;
    wait_for("remote write to catch up", CONVERGENCE_TIMEOUT, || {
        checks::remote_write_past(at + 5.0)
    })?;
    let (compared, failures) = checks::compare_queries(at);
    println!(
        "\n== PromQL answers {when}: {} queries x {} nodes, {} of {compared} identical to Prometheus's",
        checks::query_count(),
        api::NODES.len(),
        compared - failures.len(),
    );
    for f in &failures {
        println!("  DIFFERS {f}");
    }
    Ok(failures
        .into_iter()
        .map(|f| format!("query answer {when}: {}", f.lines().next().unwrap_or("")))
        .collect())
}

/// The native-histogram comparison (`checks::compare_native_histograms`), reported.
fn compare_histograms(when: &str, base_ms: i64) -> Vec<String> {
    let (compared, failures) = checks::compare_native_histograms(base_ms);
    println!(
        "\n== native histogram answers {when}: {} of {compared} identical to Prometheus's",
        compared - failures.len().min(compared),
    );
    for f in &failures {
        println!("  DIFFERS {f}");
    }
    failures
        .into_iter()
        .map(|f| {
            format!(
                "native histograms {when}: {}",
                f.lines().next().unwrap_or("")
            )
        })
        .collect()
}

fn run_scenario(
    stack: &Stack,
    kind: FaultKind,
    service: &str,
    history_start_s: f64,
) -> Result<(Vec<String>, Instant), String> {
    println!("\n== scenario: {service} {}", kind.describe());
    let name = format!("{service} {kind:?}");
    let before = checks::write_counters()?;
    let handoff_before = checks::handoff_counters()?;
    let window_start = now_s();
    std::thread::sleep(BEFORE_FAULT);

    let rtt_before = matches!(kind, FaultKind::Netem).then(|| probe_rtt(stack, service));
    let applied = faults::apply(stack, service, kind)?;
    println!("  fault applied; holding {FAULT_HOLD:?} with writes flowing");
    if let Some(before) = rtt_before {
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "  TCP connect RTT {service} -> timbala-1: {before} before, {} under the fault",
            probe_rtt(stack, service)
        );
    }
    let mut failures = Vec::new();
    if kind.reach() == Reach::Reachable {
        std::thread::sleep(FAULT_HOLD);
    } else {
        // Gossip has declared the node down by mid-hold; queries must not hide that.
        std::thread::sleep(FAULT_HOLD / 2);
        let warned = checks::answers_name_unreachable_node(service);
        failures.extend(warned.into_iter().map(|f| format!("{name}: {f}")));
        std::thread::sleep(FAULT_HOLD - FAULT_HOLD / 2);
    }
    let replaced = match &applied {
        faults::Applied::Destroyed { old_id } => Some(old_id.clone()),
        _ => None,
    };
    faults::heal(stack, service, applied)?;
    let healed = Instant::now();
    wait_for(
        "the cluster to converge",
        CONVERGENCE_TIMEOUT,
        checks::cluster_converged,
    )?;
    println!(
        "  healed; cluster converged {:.1} s later",
        healed.elapsed().as_secs_f64()
    );
    std::thread::sleep(AFTER_HEAL);

    let window_end = now_s();
    wait_for("remote write to catch up", CONVERGENCE_TIMEOUT, || {
        checks::remote_write_past(window_end + 5.0)
    })?;
    wait_for(
        "hinted handoff to drain",
        CONVERGENCE_TIMEOUT,
        checks::cluster_converged,
    )?;
    if let Some(old_id) = &replaced {
        failures.extend(check_replacement(service, old_id, healed)?);
    }
    let range_s = (window_end - window_start).ceil() as u64;
    let account = settled_account(window_end, range_s)?;
    let after = checks::write_counters()?;
    print_account(&account, range_s, &before, &after);
    let (stored, delivered) = checks::handoff_counters()?.since(&handoff_before);
    println!("  hinted handoff during scenario: {stored} batches stored, {delivered} delivered");

    if !account.clean() {
        failures.push(format!("{name}: samples missing or replicas differ"));
    }
    if replaced.is_some() {
        // The new node holds the whole history, not only the scenario's window.
        let range_s = (window_end - history_start_s).ceil() as u64;
        let history = settled_account(window_end, range_s)?;
        println!("  whole history since the stack converged:");
        print_account(&history, range_s, &before, &after);
        if !history.clean() {
            failures.push(format!(
                "{name}: history samples missing or replicas differ"
            ));
        }
    }
    if after.failed > before.failed || after.dropped > before.dropped {
        failures.push(format!(
            "{name}: Prometheus remote write failed {} and dropped {} samples",
            after.failed - before.failed,
            after.dropped - before.dropped
        ));
    }
    Ok((failures, healed))
}

/// After a node was replaced: the new node has a new identity, every node lists the
/// old one as removed, and re-replication has finished everywhere. Prints what the
/// re-replication sent and the hints left for the removed node; returns failed checks.
fn check_replacement(service: &str, old_id: &str, healed: Instant) -> Result<Vec<String>, String> {
    let mut failures = Vec::new();
    let new_id = api::node_id(api::node_url(service)?)?;
    println!("  {service} rejoined as node {new_id} (was {old_id})");
    if new_id == old_id {
        failures.push(format!(
            "{service} replaced: the fresh node kept the old identity {old_id}"
        ));
    }
    wait_for(
        "re-replication to finish",
        CONVERGENCE_TIMEOUT,
        checks::repair_idle,
    )?;
    println!(
        "  re-replication idle on every node {:.1} s after the replacement started",
        healed.elapsed().as_secs_f64()
    );
    for node in checks::replacement_report(old_id)? {
        println!(
            "  {}: {} series copies re-replicated; {} hinted batches left for removed nodes",
            node.name, node.copies_sent, node.hints_for_removed
        );
        if !node.lists_old_as_removed {
            failures.push(format!(
                "{service} replaced: {} does not list {old_id} as removed",
                node.name
            ));
        }
    }
    Ok(failures)
}

/// The window's accounting once it stops changing: retried batches may still be in
/// flight when the queue's highest sent timestamp has passed the window, so a window
/// with gaps is accounted again (bounded) before the gaps count as losses.
fn settled_account(end_s: f64, range_s: u64) -> Result<WindowAccount, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let account = checks::account_window(end_s, range_s)?;
        if account.clean() || Instant::now() >= deadline {
            return Ok(account);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Median TCP connect time from `service`'s network namespace, run by this binary.
fn probe_rtt(stack: &Stack, service: &str) -> String {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe.to_string_lossy().into_owned(),
        Err(e) => return format!("unknown ({e})"),
    };
    match stack.in_netns(service, &[&exe, "connect-rtt", RTT_PROBE_TARGET]) {
        Ok(ms) => format!("{} ms", ms.trim()),
        Err(e) => format!("unknown ({e})"),
    }
}

fn print_account(a: &WindowAccount, range_s: u64, before: &WriteCounters, after: &WriteCounters) {
    println!(
        "  window {range_s} s: {} series, {} samples written (Prometheus local storage)",
        a.series, a.written
    );
    println!(
        "  {:<10} {:>14} {:>14} {:>8} {:>17}",
        "node", "found (query)", "found (local)", "missing", "differing series"
    );
    for n in &a.nodes {
        println!(
            "  {:<10} {:>14} {:>14} {:>8} {:>17}",
            n.name, n.found_query, n.found_local, n.missing, n.differing_series
        );
    }
    println!("  replica mismatches: {}", a.replica_mismatches);
    println!(
        "  remote write during scenario: {} sent, {} retried, {} failed, {} dropped",
        after.sent - before.sent,
        after.retried - before.retried,
        after.failed - before.failed,
        after.dropped - before.dropped
    );
}

//! Acceptance tests of bounded hinted handoff (issue 12, bar 5; ADRs 0017 and 0016) with
//! real processes on 127.0.0.1.
//!
//! - A node of three SIGKILLed while writes go on through another: its hints stop at a
//!   short `--hint-window` (first case) or a small `--hint-max-bytes-per-target` (second
//!   case), the coordinator logs exactly one warning, the hint directory stops growing
//!   (and never passes the cap), writes keep being acknowledged while two real copies
//!   are made, a write with only one real copy is refused (503), and when the node comes
//!   back its queued hints are replayed and one recovery line is logged; anti-entropy
//!   then completes its copy (every node's local samples identical).
//! - A node of four SIGKILLed, written around, then removed through the admin endpoint:
//!   its hints are re-routed to the series' new owners, the hint directory empties and
//!   the new owners hold the samples (local-only reads).
//!
//! The tests take a lock so their clusters do not run at the same time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use timbala::model::Labels;
use timbala::proto;

const WINDOW_WARNING: &str = "hint window exceeded: no new hints";
const CAP_WARNING: &str = "hint disk cap exceeded: no new hints";
const RECOVERED: &str = "hinted handoff recovered";

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn write_request(metric: &str, series: usize, t: i64) -> proto::WriteRequest {
    proto::WriteRequest {
        timeseries: (0..series)
            .map(|i| {
                ts(
                    &[("__name__", metric), ("i", &i.to_string())],
                    &[(t, i as f64)],
                )
            })
            .collect(),
        metadata: vec![],
    }
}

/// (files, bytes) under `<data>/hints/<target>`, every file counted (temporary ones too).
fn hint_dir_usage(data_dir: &Path, target: &str) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(data_dir.join("hints").join(target)) else {
        return (0, 0);
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// The `handoffBacklog` entry of `target` on `node`.
fn backlog_of(node: &Node, target: &str) -> Option<serde_json::Value> {
    status(node)?["handoffBacklog"]
        .as_array()?
        .iter()
        .find(|b| b["target"] == target)
        .cloned()
}

/// Value of the sample of metric `name` whose labels include every one of `labels`.
fn labelled_metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, exposition) = get(&node.url("/metrics"));
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn lines_with(log: &str, words: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(String::from)
        .collect()
}

/// One case of bar 5: `args` set the limit, `limit` is `window` or `cap`.
fn hints_stop_at_the_limit(args: &[&str], limit: &str, warning: &str, cap: Option<u64>) {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut cluster = start_cluster_logged(3, &[], |_| MemberSetup {
        args: args.clone(),
        ..MemberSetup::default()
    });
    {
        let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
        wait_converged(&nodes, 3, Duration::from_secs(60));
        wait_until("repair idle", Duration::from_secs(120), || {
            repair_idle(&nodes)
        });
    }
    let victim_id = local_id(&cluster[2].node);
    let helper_id = local_id(&cluster[1].node);
    let coordinator_dir = cluster[0].node.data_dir.clone();
    // Every peer's hint series exist, at 0, before any outage.
    let idle = [("target", victim_id.as_str())];
    wait_until("hint series of the peers", Duration::from_secs(30), || {
        labelled_metric(&cluster[0].node, "timbala_hints_bytes", &idle) == Some(0.0)
    });
    for name in [
        "timbala_hints_files",
        "timbala_hints_oldest_age_seconds",
        "timbala_hints_exceeded",
        "timbala_hints_refused_total",
        "timbala_hints_rerouted_files_total",
        "timbala_hints_rerouted_series_total",
    ] {
        assert_eq!(
            labelled_metric(&cluster[0].node, name, &idle),
            Some(0.0),
            "{name}"
        );
    }
    cluster[2].node.kill();
    let killed = Instant::now();
    wait_until("victim down", Duration::from_secs(30), || {
        member_state(&cluster[0].node, &victim_id).as_deref() == Some("down")
    });

    // Write through node 0 until its status shows the limit, then 20 writes more.
    let mut usage: Vec<(f64, u64, u64)> = Vec::new();
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut exceeded_at: Option<usize> = None;
    let mut writes = 0;
    let mut t = now_ms();
    while exceeded_at.is_none_or(|at| usage.len() < at + 20) {
        assert!(writes < 2000, "the {limit} was never exceeded");
        t = t.max(now_ms());
        let (code, body) = remote_write(&cluster[0].node, &write_request("hw", 100, t));
        assert!(
            (200..300).contains(&code),
            "a write with two real copies must be acknowledged: {code} {body}"
        );
        *codes.entry(code).or_default() += 1;
        writes += 1;
        t += 1;
        if exceeded_at.is_none() {
            let flag = format!("{limit}Exceeded");
            if backlog_of(&cluster[0].node, &victim_id).is_some_and(|b| b[&flag] == true) {
                exceeded_at = Some(usage.len());
            }
        }
        let (files, bytes) = hint_dir_usage(&coordinator_dir, &victim_id);
        usage.push((killed.elapsed().as_secs_f64(), files, bytes));
        if let Some(cap) = cap {
            assert!(bytes <= cap, "hint directory at {bytes} bytes, cap {cap}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = exceeded_at.expect("exceeded");
    let (_, files_at_limit, bytes_at_limit) = usage[at];
    assert!(bytes_at_limit > 0, "hints were written before the {limit}");
    for (secs, files, bytes) in &usage[at..] {
        assert_eq!(
            (*files, *bytes),
            (files_at_limit, bytes_at_limit),
            "hint directory changed after the {limit} was exceeded ({secs:.1} s after the kill)"
        );
    }
    eprintln!(
        "{limit}: {writes} writes ({codes:?}); hint directory of the stopped node \
         (s after kill, files, bytes):"
    );
    for (secs, files, bytes) in usage.iter().step_by(5) {
        eprintln!("  {secs:6.1} {files:5} {bytes:9}");
    }
    eprintln!("  limit seen after write {at}: {files_at_limit} files, {bytes_at_limit} bytes; flat for the {} writes after", usage.len() - at);

    // Visible on the status page and /metrics.
    let backlog = backlog_of(&cluster[0].node, &victim_id).expect("backlog entry");
    assert_eq!(backlog["batches"], files_at_limit);
    assert_eq!(backlog["bytes"], bytes_at_limit);
    assert!(backlog["oldestHintAgeSeconds"].is_u64(), "{backlog}");
    assert!(backlog["missingForSeconds"].is_u64(), "{backlog}");
    let target = [("target", victim_id.as_str())];
    let node0 = &cluster[0].node;
    assert_eq!(
        labelled_metric(node0, "timbala_hints_bytes", &target),
        Some(bytes_at_limit as f64)
    );
    assert_eq!(
        labelled_metric(node0, "timbala_hints_files", &target),
        Some(files_at_limit as f64)
    );
    let with_limit = [("target", victim_id.as_str()), ("limit", limit)];
    assert_eq!(
        labelled_metric(node0, "timbala_hints_exceeded", &with_limit),
        Some(1.0)
    );
    let refused = labelled_metric(node0, "timbala_hints_refused_total", &with_limit)
        .expect("refused counter");
    assert!(refused >= 20.0, "refused {refused}");

    // Exactly one warning for the episode, on the node that stopped writing hints.
    let warnings = lines_with(&cluster[0].log(), &[warning, &victim_id]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    eprintln!("warning: {}", warnings[0]);
    for other in &cluster[1..2] {
        assert!(lines_with(&other.log(), &[warning]).is_empty());
    }

    // The coordinator restarts: the window still runs from its oldest hint on disk, so
    // hints stay stopped (the warning is logged once more, by the new process).
    cluster[0].node.terminate();
    cluster[0].spawn();
    cluster[0].node.wait_ready(Duration::from_secs(60));
    wait_until("coordinator back", Duration::from_secs(60), || {
        member_state(&cluster[0].node, &helper_id).as_deref() == Some("alive")
    });
    for _ in 0..5 {
        let (code, body) = remote_write(&cluster[0].node, &write_request("hw", 100, now_ms()));
        assert!((200..300).contains(&code), "after restart: {code} {body}");
    }
    assert_eq!(
        hint_dir_usage(&coordinator_dir, &victim_id),
        (files_at_limit, bytes_at_limit),
        "no hint after the restart"
    );
    let flag = format!("{limit}Exceeded");
    assert_eq!(
        backlog_of(&cluster[0].node, &victim_id).expect("backlog")[&flag],
        true
    );
    let warnings = lines_with(&cluster[0].log(), &[warning, &victim_id]);
    assert_eq!(warnings.len(), 2, "one per process: {warnings:#?}");
    eprintln!("after a restart of the coordinator: 5 writes 2xx, hint directory unchanged, warning logged once by the new process");

    // With the second owner down too, a write would have one real copy: refused.
    cluster[1].node.kill();
    let (code, body) = remote_write(&cluster[0].node, &write_request("hw", 100, now_ms()));
    assert_eq!(code, 503, "one real copy must not be acknowledged: {body}");
    assert!(body.contains("majority"), "{body}");
    eprintln!("second owner down: write answered {code}: {body}");
    cluster[1].spawn();
    cluster[1].node.wait_ready(Duration::from_secs(60));

    // The node comes back: its queued hints are replayed, the episode ends once.
    cluster[2].spawn();
    cluster[2].node.wait_ready(Duration::from_secs(60));
    let replayed = wait_until("hints replayed", Duration::from_secs(120), || {
        hint_dir_usage(&coordinator_dir, &victim_id).0 == 0
            && backlog_of(&cluster[0].node, &victim_id).is_none()
            && backlog_of(&cluster[0].node, &helper_id).is_none()
    });
    let node0 = &cluster[0].node;
    let recovered = lines_with(&cluster[0].log(), &[RECOVERED, &victim_id]);
    let warnings = lines_with(&cluster[0].log(), &[warning, &victim_id]);
    assert_eq!(warnings.len(), 2, "{warnings:#?}\n{}", cluster[0].log());
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    let delivered = labelled_metric(node0, "timbala_handoff_delivered_total", &target);
    assert_eq!(delivered, Some(files_at_limit as f64));
    assert_eq!(
        labelled_metric(node0, "timbala_hints_exceeded", &with_limit),
        Some(0.0)
    );
    // What the returned node holds now: the hinted writes, not those after the limit.
    let local_samples = |node: &Node| {
        read_samples_at(
            node,
            LOCAL_READ,
            vec![eq("__name__", "hw")],
            0,
            i64::MAX / 2,
        )
        .expect("local read")
        .into_iter()
        .map(|(labels, samples)| (format!("{labels:?}"), samples))
        .collect::<BTreeMap<String, Vec<(i64, f64)>>>()
    };
    let count = |m: &BTreeMap<String, Vec<(i64, f64)>>| m.values().map(Vec::len).sum::<usize>();
    let held = count(&local_samples(&cluster[2].node));
    let all = count(&local_samples(&cluster[0].node));
    eprintln!(
        "returned node: hints replayed {:.1} s after restart ({files_at_limit} files, delivered); \
         recovery: {}; it holds {held} of the {all} samples its peer holds",
        replayed.as_secs_f64(),
        recovered[0]
    );
    // Anti-entropy completes the copy the hints gave up on (bar 5): with 3 nodes every
    // node owns every series, so the returned node ends sample-identical to its peers
    // once the last write is older than anti-entropy's settle time (60 s).
    let healed = wait_until(
        "anti-entropy completes the copy",
        Duration::from_secs(300),
        || {
            let theirs = local_samples(&cluster[0].node);
            let mine = local_samples(&cluster[2].node);
            mine == theirs && local_samples(&cluster[1].node) == theirs
        },
    );
    let pulled = common::metric_value(
        &get(&cluster[2].node.url("/metrics")).1,
        "timbala_antientropy_samples_repaired_total",
    )
    .unwrap_or(0.0);
    eprintln!(
        "anti-entropy: the returned node holds all {} samples, identical on the 3 nodes, {:.1} s \
         after the hints were replayed; it pulled {pulled} samples",
        count(&local_samples(&cluster[2].node)),
        healed.as_secs_f64()
    );
    assert!(pulled > 0.0, "the copy came from anti-entropy");
}

#[test]
fn hints_stop_at_the_window_with_one_warning() {
    hints_stop_at_the_limit(
        &["--hint-window", "5s", "--anti-entropy-interval", "5s"],
        "window",
        WINDOW_WARNING,
        None,
    );
}

#[test]
fn hints_stop_at_the_disk_cap_with_one_warning() {
    const CAP: u64 = 64 << 10;
    hints_stop_at_the_limit(
        &[
            "--hint-window",
            "1h",
            "--hint-max-bytes-per-target",
            "64KiB",
            "--anti-entropy-interval",
            "5s",
        ],
        "cap",
        CAP_WARNING,
        Some(CAP),
    );
}

#[test]
fn hints_of_a_removed_node_are_rerouted_to_the_new_owners() {
    const SERIES: usize = 2000;
    const METRIC: &str = "rr";
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut cluster = start_cluster_with(4, &[], |_| MemberSetup {
        args: vec!["--web-enable-admin-api".into()],
        ..MemberSetup::default()
    });
    {
        let nodes: Vec<&Node> = cluster.iter().map(|m| &m.node).collect();
        wait_converged(&nodes, 4, Duration::from_secs(60));
        wait_until("repair idle", Duration::from_secs(120), || {
            repair_idle(&nodes)
        });
    }
    let victim_id = local_id(&cluster[3].node);
    let coordinator_dir = cluster[0].node.data_dir.clone();
    let slots_before = slots_of(&cluster[0].node);
    cluster[3].node.kill();
    wait_until("victim down", Duration::from_secs(30), || {
        member_state(&cluster[0].node, &victim_id).as_deref() == Some("down")
    });
    let t = now_ms();
    for chunk in 0..SERIES / 200 {
        let request = proto::WriteRequest {
            timeseries: (chunk * 200..(chunk + 1) * 200)
                .map(|i| {
                    ts(
                        &[("__name__", METRIC), ("i", &i.to_string())],
                        &[(t, i as f64)],
                    )
                })
                .collect(),
            metadata: vec![],
        };
        let (code, body) = remote_write(&cluster[0].node, &request);
        assert!((200..300).contains(&code), "{code} {body}");
    }
    let labels_of =
        |i: usize| Labels::from_pairs([("__name__", METRIC.to_string()), ("i", i.to_string())]);
    let hinted: Vec<usize> = (0..SERIES)
        .filter(|&i| owners_by_slots(&slots_before, &labels_of(i)).contains(&victim_id))
        .collect();
    let (files, bytes) = hint_dir_usage(&coordinator_dir, &victim_id);
    assert!(files > 0 && !hinted.is_empty());
    eprintln!(
        "{} of {SERIES} series owned by the killed node: {files} hint files, {bytes} bytes on the coordinator",
        hinted.len()
    );

    let (code, body) = post_form(
        &cluster[0].node.url("/api/v1/admin/cluster/remove"),
        &[("node", &victim_id)],
    );
    assert_eq!(code, 200, "{body}");
    let removed = Instant::now();
    let took = wait_until("hints re-routed", Duration::from_secs(120), || {
        !coordinator_dir.join("hints").join(&victim_id).exists()
            && backlog_of(&cluster[0].node, &victim_id).is_none()
    });
    let survivors: Vec<&Node> = cluster[..3].iter().map(|m| &m.node).collect();
    let repair_sent: f64 = survivors
        .iter()
        .map(|n| {
            metric_value(
                &get(&n.url("/metrics")).1,
                "timbala_repair_copies_sent_total",
            )
            .unwrap_or(0.0)
        })
        .sum();
    let target = [("target", victim_id.as_str())];
    let node0 = &cluster[0].node;
    assert_eq!(
        labelled_metric(node0, "timbala_hints_rerouted_files_total", &target),
        Some(files as f64)
    );
    assert_eq!(
        labelled_metric(node0, "timbala_hints_rerouted_series_total", &target),
        Some(hinted.len() as f64)
    );

    // Every hinted series is on the owner that took the removed node's replica.
    let slots_after = slots_of(node0);
    let mut held: BTreeMap<String, BTreeMap<String, Vec<(i64, f64)>>> = BTreeMap::new();
    for node in &survivors {
        let copies = read_samples_at(
            node,
            LOCAL_READ,
            vec![eq("__name__", METRIC)],
            0,
            i64::MAX / 2,
        )
        .expect("local read");
        let by_i = copies
            .into_iter()
            .map(|(labels, samples)| {
                let i = labels
                    .iter()
                    .find(|(n, _)| n == "i")
                    .map(|(_, v)| v.clone())
                    .expect("i label");
                (i, samples)
            })
            .collect();
        held.insert(local_id(node), by_i);
    }
    let mut checked = 0;
    for &i in &hinted {
        let old = owners_by_slots(&slots_before, &labels_of(i));
        let new = owners_by_slots(&slots_after, &labels_of(i));
        assert!(!new.contains(&victim_id));
        let gained: Vec<&String> = new.difference(&old).collect();
        assert_eq!(gained.len(), 1, "series {i}: {old:?} -> {new:?}");
        let samples = held[gained[0]].get(&i.to_string());
        assert_eq!(
            samples,
            Some(&vec![(t, i as f64)]),
            "series {i} on {}",
            gained[0]
        );
        checked += 1;
    }
    eprintln!(
        "removed {:.1} s ago; hint directory gone {:.1} s after the removal; {files} files and \
         {} series re-routed; {checked} series checked on their new owner; re-replication had \
         sent {repair_sent} copies by then",
        removed.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        hinted.len()
    );
}

/// The limits are visible on a node before any hint exists, and a limit that does not
/// parse keeps the node from starting.
#[test]
fn hint_limits_are_visible_and_bad_ones_refused() {
    let node = Node::start(&[
        "--hint-window",
        "90m",
        "--hint-max-bytes-per-target",
        "2MiB",
    ]);
    let s = status(&node).expect("status");
    assert_eq!(s["hintLimits"]["windowSeconds"], 5400);
    assert_eq!(s["hintLimits"]["maxBytesPerTarget"], 2 << 20);
    assert_eq!(s["handoffBacklog"], serde_json::json!([]));
    let (_, flags) = get(&node.url("/api/v1/status/flags"));
    assert!(flags.contains("\"hint-window\":\"1h30m\""), "{flags}");

    for bad in [
        ["--hint-window", "soon"],
        ["--hint-max-bytes-per-target", "lots"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_timbala"))
            .args(bad)
            .output()
            .expect("run timbala");
        assert!(!out.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
    }
}

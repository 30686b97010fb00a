//! Acceptance tests of node removal and re-replication (issue 12, bars 1 and 2; ADR
//! 0015) with real processes on 127.0.0.1: 10,000 series written with 3 replicas, one
//! node SIGKILLed for good and removed through `POST /api/v1/admin/cluster/remove` while
//! a writer keeps writing, then every series again on exactly 3 distinct live nodes
//! (local-only reads), all copies sample-identical, no survivor losing anything, and the
//! copies that moved at most 1.1x the removed node's share. The endpoint's refusals
//! (unknown node, a live node, the answering node) are checked on the way.
//!
//! The two tests take a lock so their clusters do not run at the same time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use timbala::proto;

const SERIES: usize = 10_000;
const METRIC: &str = "heal";
/// Series the writer keeps writing to during the removal (a subset of the 10,000).
const STREAMED: usize = 200;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn write_request(range: std::ops::Range<usize>, times: &[i64]) -> proto::WriteRequest {
    proto::WriteRequest {
        timeseries: range
            .map(|i| {
                let samples: Vec<(i64, f64)> =
                    times.iter().map(|&t| (t, (i as f64) + t as f64)).collect();
                ts(&[("__name__", METRIC), ("i", &i.to_string())], &samples)
            })
            .collect(),
        metadata: vec![],
    }
}

fn write(node: &Node, range: std::ops::Range<usize>, times: &[i64]) -> Result<u16, String> {
    try_remote_write(node, &write_request(range, times)).map(|(code, _)| code)
}

fn remove(node: &Node, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (code, body) = post_form(&node.url("/api/v1/admin/cluster/remove"), form);
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (code, json)
}

fn metric_sum(nodes: &[&Node], name: &str) -> f64 {
    nodes
        .iter()
        .map(|n| metric_value(&get(&n.url("/metrics")).1, name).unwrap_or(0.0))
        .sum()
}

/// Starts `n` nodes, writes 10,000 series, SIGKILLs the node at `victim_slot` of the
/// join order, removes it while a writer writes, and checks the healed cluster.
fn remove_and_heal(n: usize, victim_slot: usize) {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    // Removal is an admin endpoint.
    let mut cluster = start_cluster_with(n, &[], |_| MemberSetup {
        args: vec!["--web-enable-admin-api".into()],
        ..MemberSetup::default()
    });
    let order = {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, n, Duration::from_secs(20))
    };
    let ids: Vec<String> = cluster
        .iter()
        .map(|c| seen(&c.node).expect("status").0)
        .collect();
    // Settled: every node finished the passes of the joins (nothing to send, no data
    // yet), so all repair from the same base ring (ADR 0015, consequences).
    let all: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_until("join passes idle", Duration::from_secs(60), || {
        repair_idle(&all)
    });
    let victim_id = order[victim_slot].clone();
    let victim = ids.iter().position(|id| *id == victim_id).expect("victim");
    let survivors: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
    println!(
        "{n} nodes converged after {:?}; removing slot {victim_slot}",
        started.elapsed()
    );

    // 10,000 series with 3 samples each, 3 replicas.
    let t0 = now_ms() - 60_000;
    let times = [t0, t0 + 15_000, t0 + 30_000];
    let entry = &cluster[survivors[0]].node;
    for chunk in 0..5 {
        let code = write(entry, chunk * 2000..(chunk + 1) * 2000, &times).expect("write");
        assert!((200..300).contains(&code), "initial write: {code}");
    }
    let before: Vec<Copies> = cluster
        .iter()
        .map(|c| local_copies_of(&c.node, None, METRIC))
        .collect();
    let total: usize = before.iter().map(BTreeMap::len).sum();
    assert_eq!(total, 3 * SERIES, "3 replicas before the removal");
    let share = before[victim].len();

    // A writer keeps writing to 200 of the series through a survivor.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, failures, writes) = (stop.clone(), failures.clone(), writes.clone());
        let node = Node::handle(&cluster[survivors[1]].node.http_addr);
        std::thread::spawn(move || {
            let mut t = t0 + 31_000;
            while !stop.load(Ordering::Relaxed) {
                // Real time: never ahead of the clock (future samples may be refused).
                t = (t + 1).max(now_ms());
                match write(&node, 0..STREAMED, &[t]) {
                    Ok(code) if (200..300).contains(&code) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("write failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    cluster[victim].node.kill();
    let killed = Instant::now();
    let asked = &cluster[survivors[0]].node;
    wait_until("the victim seen down", Duration::from_secs(30), || {
        survivors
            .iter()
            .all(|&i| member_state(&cluster[i].node, &victim_id).as_deref() == Some("down"))
    });

    // Refusals: clear 4xx in Prometheus's error format.
    let (code, body) = remove(asked, &[]);
    assert_eq!(
        (code, body["status"].as_str()),
        (400, Some("error")),
        "{body}"
    );
    let (code, body) = remove(asked, &[("node", "127.0.0.1:1")]);
    assert_eq!(code, 404, "unknown node: {body}");
    assert_eq!(body["errorType"], "not_found");
    let alive = &ids[survivors[1]];
    let (code, body) = remove(asked, &[("node", alive)]);
    assert_eq!(code, 409, "a live node: {body}");
    assert!(body["error"].as_str().unwrap_or("").contains("force=true"));
    let (code, body) = remove(asked, &[("node", &ids[survivors[0]]), ("force", "true")]);
    assert_eq!(code, 409, "the answering node itself: {body}");
    let (code, body) = remove(asked, &[("node", &victim_id), ("force", "maybe")]);
    assert_eq!(code, 400, "bad force: {body}");

    // The removal, by gossip address.
    let victim_gossip = cluster[victim].gossip_addr.clone();
    let (code, body) = remove(asked, &[("node", &victim_gossip)]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["node"], victim_id.as_str());
    assert_eq!(body["data"]["removedNow"], true);
    let (code, body) = remove(asked, &[("node", &victim_id)]);
    assert_eq!(
        (code, &body["data"]["removedNow"]),
        (200, &serde_json::json!(false))
    );

    // Heal: every series on exactly 3 distinct live nodes.
    let live: Vec<&Node> = survivors.iter().map(|&i| &cluster[i].node).collect();
    let mut polls = 0;
    let heal_time = wait_until("re-replication", Duration::from_secs(300), || {
        polls += 1;
        let copies: Vec<Copies> = live
            .iter()
            .map(|n| local_copies_of(n, None, METRIC))
            .collect();
        let total = copies.iter().map(BTreeMap::len).sum::<usize>();
        if total != 3 * SERIES && polls % 10 == 0 {
            let progress: Vec<_> = live
                .iter()
                .map(|n| status(n).map(|s| s["repair"].clone()))
                .collect();
            let slots: Vec<_> = live.iter().map(|n| slots_of(n)).collect();
            println!("{total} copies; repair {progress:?}; slots {slots:?}");
        }
        total == 3 * SERIES
    });
    println!(
        "healed {:?} after the removal ({:?} after the kill); progress: {}",
        heal_time,
        killed.elapsed(),
        status(live[0]).expect("status")["repair"]
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    // Every pass finished everywhere (the last batches may still be on the wire).
    wait_until("repair idle", Duration::from_secs(60), || {
        repair_idle(&live)
    });

    let after: Vec<Copies> = live
        .iter()
        .map(|n| local_copies_of(n, None, METRIC))
        .collect();
    let slots = slots_of(live[0]);
    assert_eq!(slots.len(), n, "the removed node keeps its slot");
    assert!(slots
        .iter()
        .any(|(id, removed)| *id == victim_id && *removed));
    let mut holders: BTreeMap<&Vec<(String, String)>, Vec<usize>> = BTreeMap::new();
    for (k, copies) in after.iter().enumerate() {
        for labels in copies.keys() {
            holders.entry(labels).or_default().push(k);
        }
    }
    assert_eq!(holders.len(), SERIES);
    for (labels, on) in &holders {
        assert_eq!(on.len(), 3, "{labels:?} on {on:?}");
        let want = owners_by_slots(&slots, &labels_from_pairs(labels));
        let got: BTreeSet<String> = on.iter().map(|&k| ids[survivors[k]].clone()).collect();
        assert_eq!(got, want, "{labels:?}: held where placement says");
        let first = &after[on[0]][*labels];
        for &k in &on[1..] {
            assert_eq!(&after[k][*labels], first, "{labels:?}: copies differ");
        }
    }
    let mut moved = 0;
    for (k, &i) in survivors.iter().enumerate() {
        for (labels, samples) in &before[i] {
            let now = after[k].get(labels);
            assert!(now.is_some(), "survivor {i} lost {labels:?}");
            let now = now.expect("held");
            assert!(
                samples.iter().all(|s| now.contains(s)),
                "survivor {i} lost samples"
            );
        }
        moved += after[k]
            .keys()
            .filter(|l| !before[i].contains_key(*l))
            .count();
    }
    let sent = metric_sum(&live, "timbala_repair_copies_sent_total");
    print_repair_metrics(&live);
    let (failed, share, moved, sent) = (failures.load(Ordering::Relaxed), share, moved, sent);
    println!(
        "{n} nodes, slot {victim_slot} removed: moved {moved} series copies, removed node's \
         share {share} ({:.3}x); copies sent by repair {sent}; healed {:?} after removal; \
         writes {} ok, {failed} failed; total {:?}",
        moved as f64 / share as f64,
        heal_time,
        writes.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(
        moved as f64 <= 1.1 * share as f64,
        "moved {moved}, share {share}"
    );
    assert!(
        sent as usize >= moved,
        "the repair counters count the copies"
    );
    assert_eq!(failed, 0, "writes failed during the removal");
}

fn print_repair_metrics(nodes: &[&Node]) {
    for node in nodes {
        let m = get(&node.url("/metrics")).1;
        let v = |name| metric_value(&m, name).unwrap_or(0.0);
        println!(
            "  {}: passes {}, series planned {}, copies sent {}, bytes sent {}",
            node.http_addr,
            v("timbala_repair_passes_total"),
            v("timbala_repair_series_planned_total"),
            v("timbala_repair_copies_sent_total"),
            v("timbala_repair_sent_bytes_total"),
        );
    }
}

#[test]
fn four_nodes_one_removed_heal_to_three_copies() {
    remove_and_heal(4, 1);
}

#[test]
fn five_nodes_the_middle_of_the_join_order_removed_heal_to_three_copies() {
    remove_and_heal(5, 2);
}

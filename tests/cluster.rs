//! Acceptance tests of a 3-node cluster of real processes on 127.0.0.1: membership
//! convergence, replicated writes placed on exactly the owners placement names, the same
//! query answer on every node, a node SIGKILLed during a write stream (no failed write,
//! complete queries, hinted handoff after restart), and a fourth node joining.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use timbala::cluster::placement;
use timbala::model::Labels;
use timbala::proto;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn labels_of(name: &str, i: usize) -> Vec<(String, String)> {
    vec![
        ("__name__".to_string(), name.to_string()),
        ("i".to_string(), i.to_string()),
    ]
}

fn write_request(name: &str, range: std::ops::Range<usize>, t: i64) -> proto::WriteRequest {
    let timeseries = range
        .map(|i| {
            ts(
                &[("__name__", name), ("i", &i.to_string())],
                &[(t, i as f64)],
            )
        })
        .collect();
    proto::WriteRequest {
        timeseries,
        metadata: vec![],
    }
}

fn write_series(node: &Node, name: &str, range: std::ops::Range<usize>, t: i64) -> (u16, String) {
    remote_write(node, &write_request(name, range, t))
}

/// Like `write_series`, with transport errors returned instead of panicking.
fn try_write_series(
    node: &Node,
    name: &str,
    range: std::ops::Range<usize>,
    t: i64,
) -> Result<(u16, String), String> {
    try_remote_write(node, &write_request(name, range, t))
}

/// Owner ids of a series, by placement over the join order.
fn owners(order: &[String], labels: &[(String, String)]) -> BTreeSet<String> {
    let labels = Labels::from_pairs(labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    placement::owners(placement::partition_key(&labels), order.len(), 3)
        .into_iter()
        .map(|i| order[i].clone())
        .collect()
}

/// Series (labels -> timestamps) a node holds itself for a metric name.
fn local_series(node: &Node, name: &str) -> BTreeMap<Vec<(String, String)>, Vec<i64>> {
    read_samples_at(
        node,
        LOCAL_READ,
        vec![eq("__name__", name)],
        0,
        i64::MAX / 2,
    )
    .expect("local read")
    .into_iter()
    .map(|(labels, samples)| (labels, samples.into_iter().map(|(t, _)| t).collect()))
    .collect()
}

fn query_value(node: &Node, q: &str, t_ms: i64) -> Option<f64> {
    let url = node.url(&format!(
        "/api/v1/query?query={}&time={}",
        q.replace(' ', "%20").replace('+', "%2B"),
        t_ms as f64 / 1000.0
    ));
    let (code, body) = get(&url);
    assert_eq!(code, 200, "{q} on {}: {body}", node.http_addr);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn id_of(node: &Node) -> String {
    seen(node).expect("status").0
}

#[test]
fn three_nodes_replicate_query_survive_a_kill_and_take_a_fourth() {
    let started = Instant::now();
    let mut cluster = start_cluster(3, &[]);

    // Bar 2: convergence on members and join order.
    let order = {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, 3, Duration::from_secs(10))
    };
    println!("converged after {:?}: {order:?}", started.elapsed());

    // Bar 3: 10,000 series through one node land on exactly their 3 owners.
    let t = now_ms();
    for chunk in 0..5 {
        let (code, body) = write_series(
            &cluster[0].node,
            "repl",
            chunk * 2000..(chunk + 1) * 2000,
            t,
        );
        assert!((200..300).contains(&code), "write: {code} {body}");
    }
    for member in &cluster {
        let id = id_of(&member.node);
        let held = local_series(&member.node, "repl");
        let expected: BTreeSet<Vec<(String, String)>> = (0..10_000)
            .map(|i| labels_of("repl", i))
            .filter(|l| owners(&order, l).contains(&id))
            .collect();
        let got: BTreeSet<_> = held.keys().cloned().collect();
        assert_eq!(got.len(), expected.len(), "node {id}");
        assert!(
            got == expected,
            "node {id} holds other series than placement names"
        );
    }
    let want_sum: f64 = (0..10_000).map(|i| i as f64).sum();
    for member in &cluster {
        assert_eq!(query_value(&member.node, "sum(repl)", t), Some(want_sum));
        assert_eq!(query_value(&member.node, "count(repl)", t), Some(10_000.0));
    }
    println!("replicated 10k series after {:?}", started.elapsed());
    let trace = get_response_header(
        &cluster[1].node.url("/api/v1/query?query=count(repl)"),
        ("X-Timbala-Trace-Id", "feedc0de"),
        "x-timbala-trace-id",
    );
    assert_eq!(
        trace.as_deref(),
        Some("feedc0de"),
        "the caller's trace id is kept"
    );
    let made = get_response_header(
        &cluster[1].node.url("/-/healthy"),
        ("Accept", "*/*"),
        "x-timbala-trace-id",
    );
    assert!(
        made.is_some_and(|t| t.len() == 16),
        "the edge makes a trace id"
    );

    // Bar 4: SIGKILL one node during a steady write stream.
    let stop = Arc::new(AtomicBool::new(false));
    let writer_node = clone_handle(&cluster[0].node);
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut t = now_ms();
            while !stop.load(Ordering::Relaxed) {
                t += 1000;
                let mut attempts = 0;
                loop {
                    match try_write_series(&writer_node, "stream", 0..100, t) {
                        Ok((code, _)) if (200..300).contains(&code) => break,
                        other => {
                            attempts += 1;
                            assert!(attempts < 20, "write kept failing: {other:?}");
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                written.push(t);
                std::thread::sleep(Duration::from_millis(50));
            }
            written
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let victim_id = id_of(&cluster[2].node);
    cluster[2].node.kill();
    let killed_at = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    // Queries on the survivors stay complete.
    let last = now_ms() + 1000;
    for member in &cluster[..2] {
        assert_eq!(query_value(&member.node, "count(repl)", t), Some(10_000.0));
        let c = query_value(&member.node, "count(stream)", last + 5000);
        assert_eq!(c, Some(100.0), "stream series on {}", member.node.http_addr);
    }
    let (_, metrics) = get(&cluster[0].node.url("/metrics"));
    assert!(
        counter(
            &metrics,
            "timbala_fanout_requests_total{outcome=\"degraded\"}"
        ) > 0.0,
        "degraded fan-outs are counted"
    );
    stop.store(true, Ordering::Relaxed);
    let written = stream.join().expect("writer thread");
    let while_down: Vec<i64> = written.iter().copied().filter(|&t| t > killed_at).collect();
    assert!(!while_down.is_empty());

    // Restart: within 60 s it holds the samples written while it was down.
    cluster[2].spawn();
    cluster[2].node.wait_ready(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mine: Vec<Vec<(String, String)>> = (0..100)
        .map(|i| labels_of("stream", i))
        .filter(|l| owners(&order, l).contains(&victim_id))
        .collect();
    assert!(!mine.is_empty());
    loop {
        let held = local_series(&cluster[2].node, "stream");
        let complete = mine.iter().all(|l| {
            held.get(l)
                .is_some_and(|ts| while_down.iter().all(|t| ts.contains(t)))
        });
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hinted samples not delivered within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("handoff complete after {:?}", started.elapsed());
    // The delivery is counted once the hint file is gone, a moment after the samples
    // reached the node (the directory fsync in between): poll, don't race it.
    let delivered = format!("timbala_handoff_delivered_total{{target=\"{victim_id}\"}}");
    let counted_by = Instant::now() + Duration::from_secs(30);
    while counter(&get(&cluster[0].node.url("/metrics")).1, &delivered) == 0.0 {
        assert!(Instant::now() < counted_by, "hint deliveries are counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shares: f64 = status(&cluster[0].node).expect("status")["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["keyShare"].as_f64())
        .sum();
    assert!(
        (shares - 3.0).abs() < 1e-9,
        "each key has 3 owners: {shares}"
    );

    // Bar 5: a fourth node joins during a write stream.
    let peers: Vec<String> = cluster.iter().map(|c| c.gossip_addr.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer_node = clone_handle(&cluster[1].node);
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut t = now_ms() + 120_000;
            while !stop.load(Ordering::Relaxed) {
                t += 1000;
                let (code, body) = write_series(&writer_node, "join", 0..100, t);
                assert!(
                    (200..300).contains(&code),
                    "write during join: {code} {body}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let fourth = start_cluster(1, &peers).remove(0);
    let mut all: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    all.push(&fourth.node);
    let order4 = wait_converged(&all, 4, Duration::from_secs(15));
    assert_eq!(
        &order4[..3],
        &order[..],
        "a joining node goes to the end of the list"
    );
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("no write failed during the join");

    // New writes are placed by the 4-node list.
    let t4 = now_ms() + 600_000;
    let (code, body) = write_series(&cluster[0].node, "after", 0..500, t4);
    assert!((200..300).contains(&code), "{code} {body}");
    for node in &all {
        let id = id_of(node);
        let held: BTreeSet<_> = local_series(node, "after").keys().cloned().collect();
        let expected: BTreeSet<_> = (0..500)
            .map(|i| labels_of("after", i))
            .filter(|l| owners(&order4, l).contains(&id))
            .collect();
        assert!(held == expected, "node {id}: 4-node placement");
    }
    println!("all bars passed after {:?}", started.elapsed());
}

/// The value of one exact series line in a text exposition (0 when absent).
fn counter(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A second handle on a running node's address (for writer threads); it owns no process.
fn clone_handle(node: &Node) -> Node {
    Node::handle(&node.http_addr)
}

/// Bar 5 of issue 10 (ADR 0011): two clients write different values for the same 100
/// series and timestamps at the same time, each through its own node. Whatever order
/// each replica saw them in, every replica ends up bit-identical, holding the conflict
/// rule's winners, and a sum over them has one answer on every node.
#[test]
fn concurrent_conflicting_writes_converge_on_every_replica() {
    const SERIES: usize = 100;
    const STEPS: i64 = 10;
    let cluster = start_cluster(3, &[]);
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(30));
    let t0 = now_ms() / 1000 * 1000 - 60_000;
    let times: Vec<i64> = (0..STEPS).map(|s| t0 + s * 1000).collect();
    // Writer 1's value is one above or below writer 0's, so each wins half the samples.
    let value = |writer: usize, i: usize, step: usize| -> f64 {
        let base = (i * 100 + step) as f64 + 0.25;
        match (writer, (i + step) % 2) {
            (0, _) => base,
            (_, 0) => base + 1.0,
            _ => base - 1.0,
        }
    };
    let start = Arc::new(std::sync::Barrier::new(2));
    let writers: Vec<_> = [0, 1]
        .into_iter()
        .map(|writer| {
            let node = clone_handle(&cluster[writer].node);
            let start = start.clone();
            let times = times.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut conflicts = 0;
                for (step, &t) in times.iter().enumerate() {
                    let timeseries = (0..SERIES)
                        .map(|i| {
                            ts(
                                &[("__name__", "conflict"), ("i", &i.to_string())],
                                &[(t, value(writer, i, step))],
                            )
                        })
                        .collect();
                    let req = proto::WriteRequest {
                        timeseries,
                        metadata: vec![],
                    };
                    let (code, body) = remote_write(&node, &req);
                    // 400 is the Prometheus answer to the samples that met another value.
                    match code {
                        204 => {}
                        400 if body.contains("duplicate_timestamp") => conflicts += 1,
                        _ => panic!("writer {writer}: {code} {body}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    println!("requests answered with a conflict, per writer: {conflicts:?}");
    assert!(
        conflicts.iter().sum::<usize>() >= STEPS as usize,
        "every timestamp was written twice, so at least one write of each met the other"
    );

    let expected: BTreeMap<String, Vec<(i64, u64)>> = (0..SERIES)
        .map(|i| {
            let samples = times
                .iter()
                .enumerate()
                .map(|(step, &t)| {
                    let kept =
                        timbala::model::conflict_winner(value(0, i, step), value(1, i, step));
                    (t, kept.to_bits())
                })
                .collect();
            (i.to_string(), samples)
        })
        .collect();
    let local_copy = |node: &Node| -> BTreeMap<String, Vec<(i64, u64)>> {
        read_samples_at(
            node,
            LOCAL_READ,
            vec![eq("__name__", "conflict")],
            t0,
            t0 + STEPS * 1000,
        )
        .expect("local read")
        .into_iter()
        .map(|(labels, samples)| {
            let i = labels.into_iter().find(|(n, _)| n == "i").map(|(_, v)| v);
            let bits = samples.into_iter().map(|(t, v)| (t, v.to_bits())).collect();
            (i.unwrap_or_default(), bits)
        })
        .collect()
    };
    // Acknowledged writes are on every owner already, unless a forward fell back to a
    // hint: then its replay is waited for.
    let deadline = Instant::now() + Duration::from_secs(30);
    for member in &cluster {
        loop {
            let copy = local_copy(&member.node);
            let differing = expected
                .iter()
                .filter(|(i, s)| copy.get(*i) != Some(s))
                .count();
            if differing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} differs from the rule's winners in {differing} of {SERIES} series",
                member.node.http_addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // One answer per query, every time, on every node: the sum of the winners.
    let query = "sum(sum_over_time(conflict[30s]))";
    let at = format!("{}", (t0 + (STEPS - 1) * 1000) as f64 / 1000.0);
    let want: f64 = expected
        .values()
        .flatten()
        .map(|&(_, v)| f64::from_bits(v))
        .sum();
    let mut answers = BTreeSet::new();
    for member in &cluster {
        for _ in 0..30 {
            let (code, body) = post_form(
                &member.node.url("/api/v1/query"),
                &[("query", query), ("time", &at)],
            );
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            answers.insert(
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .expect("a sum")
                    .to_string(),
            );
        }
    }
    assert_eq!(answers.len(), 1, "different sums: {answers:?}");
    let got: f64 = answers
        .first()
        .and_then(|a| a.parse().ok())
        .expect("a number");
    assert!(
        (got - want).abs() < 1e-6 * want.abs(),
        "sum {got}, winners sum to {want}"
    );
}

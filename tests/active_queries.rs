//! Acceptance test of `GET /api/v1/status/active_queries` on real processes: a range
//! query held up by a SIGSTOPped peer is listed, with what it asked for, while it waits;
//! once answered it is gone; the list is a success answer in Prometheus's envelope.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn active(node: &Node) -> Vec<serde_json::Value> {
    let (status, body) = get(&node.url("/api/v1/status/active_queries"));
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(json["status"], "success", "{json}");
    json["data"].as_array().expect("a list").clone()
}

#[test]
fn a_waiting_query_is_listed_until_it_is_answered() {
    // LAN gossip keeps a stopped node alive, then suspect, for seconds, and the long peer
    // timeout makes the coordinator wait for it that long: the query stays in flight.
    let cluster = start_cluster_with(3, &[], |_| MemberSetup {
        args: ["--gossip-profile", "lan", "--query-peer-timeout", "20s"]
            .map(String::from)
            .to_vec(),
        gid: None,
    });
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    wait_converged(&nodes, 3, Duration::from_secs(90));
    let coordinator = nodes[0];
    assert!(active(coordinator).is_empty(), "nothing runs yet");

    let end_s = now_ms() / 1000;
    let start_s = end_s - 600;
    let query = "sum by (job) (rate(up[5m]))";
    let stopped = nodes[2];
    send_signal(stopped, libc::SIGSTOP);
    let resume = Resume(stopped);

    let url = coordinator.url(&format!(
        "/api/v1/query_range?query={}&start={start_s}&end={end_s}&step=15",
        "sum%20by%20(job)%20(rate(up%5B5m%5D))"
    ));
    let asker = std::thread::spawn(move || get(&url));

    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let entries = active(coordinator);
        if let Some(entry) = entries.into_iter().find(|e| e["query"] == query) {
            break entry;
        }
        assert!(
            !asker.is_finished(),
            "the query was answered before it was seen in flight"
        );
        assert!(Instant::now() < deadline, "the query never showed up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(listed["endpoint"], "query_range", "{listed}");
    assert_eq!(listed["start"], start_s * 1000, "{listed}");
    assert_eq!(listed["end"], end_s * 1000, "{listed}");
    assert_eq!(listed["step"], 15_000, "{listed}");
    assert_eq!(listed["id"].as_str().map(str::len), Some(16), "{listed}");
    assert!(
        listed["duration"]
            .as_str()
            .is_some_and(|d| d.ends_with('s')),
        "{listed}"
    );
    assert!(listed["duration_seconds"].as_f64().is_some(), "{listed}");

    send_signal(stopped, libc::SIGCONT);
    drop(resume);
    let (status, body) = asker.join().expect("query thread");
    assert_eq!(status, 200, "{body}");
    assert!(
        active(coordinator).is_empty(),
        "an answered query is no longer listed"
    );
}

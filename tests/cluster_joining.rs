//! A node that has not met its cluster yet refuses writes instead of keeping data no
//! owner will ever receive (found by the simulation, ADR 0019), and takes them once it
//! joined.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use timbala::proto;

fn one_sample(value: f64) -> proto::WriteRequest {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    proto::WriteRequest {
        timeseries: vec![ts(
            &[("__name__", "joining_test"), ("job", "sim")],
            &[(now_ms, value)],
        )],
        ..Default::default()
    }
}

#[test]
fn a_node_that_has_not_joined_refuses_writes_with_503_then_takes_them() {
    // The only peer does not answer: the node cannot know the owners of any series.
    let founder_gossip = format!("127.0.0.1:{}", free_port());
    let joining = Node::start(&["--peers", &founder_gossip, "--gossip-profile", "fast"]);
    let (code, body) = remote_write(&joining, &one_sample(1.0));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not joined its cluster"), "{body}");
    // Still refused a moment later: nothing was kept and acknowledged meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = remote_write(&joining, &one_sample(2.0));
    assert_eq!(code, 503, "{body}");

    // The peer appears: the node joins and the write goes through.
    let founder_dir = tempfile::tempdir().expect("temp dir");
    let founder = Node::spawn_at(
        &founder_dir.path().join("data"),
        &format!("127.0.0.1:{}", free_port()),
        &founder_gossip,
        &["--gossip-profile", "fast"],
    );
    founder.wait_ready(Duration::from_secs(60));
    wait_converged(&[&founder, &joining], 2, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = remote_write(&joining, &one_sample(3.0));
        if code == 204 || code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "write still refused: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

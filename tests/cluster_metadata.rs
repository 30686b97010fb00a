//! Acceptance tests of cluster-wide metric metadata (issue 12, bar 7; ADR 0020) with
//! real processes on 127.0.0.1: metadata remote-written to one node is stored on the
//! owners of each family name (local-only reads on every node), `/api/v1/metadata`
//! gives the same answer on every node with Prometheus's `metric`, `limit` and
//! `limit_per_metric`, a node SIGKILLed leaves an answer with a warning naming it (never
//! an error), metadata written meanwhile reaches it by hinted handoff once it is back,
//! and after a node is removed for good every family is again on its three owners.
//!
//! The tests take a lock so their clusters do not run at the same time.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use timbala::cluster::placement;
use timbala::proto;

const LOCAL_METADATA: &str = "/internal/v1/metadata";

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn family(i: usize) -> proto::MetricMetadata {
    let types = [
        proto::MetricType::Counter,
        proto::MetricType::Gauge,
        proto::MetricType::Histogram,
        proto::MetricType::Summary,
    ];
    proto::MetricMetadata {
        r#type: types[i % types.len()] as i32,
        metric_family_name: format!("family_{i:03}"),
        help: format!("Help of family {i}, with \"quotes\" and ünïcode."),
        unit: if i % 3 == 0 { "seconds" } else { "" }.to_string(),
    }
}

/// The `/api/v1/metadata` entry Prometheus answers for a family.
fn entry(m: &proto::MetricMetadata) -> Value {
    let t = proto::MetricType::try_from(m.r#type).expect("type");
    json!({"type": t.api_name(), "help": m.help, "unit": m.unit})
}

fn expected(families: &[proto::MetricMetadata]) -> Value {
    let map: serde_json::Map<String, Value> = families
        .iter()
        .map(|m| (m.metric_family_name.clone(), json!([entry(m)])))
        .collect();
    Value::Object(map)
}

/// Remote-writes metadata only, as Prometheus's metadata sender does.
fn write_metadata(node: &Node, metadata: Vec<proto::MetricMetadata>) {
    let (code, body) = remote_write(
        node,
        &proto::WriteRequest {
            timeseries: vec![],
            metadata,
        },
    );
    assert!((200..300).contains(&code), "metadata write: {code} {body}");
}

/// Status and whole JSON answer of `/api/v1/metadata` with a query string.
fn metadata(node: &Node, query: &str) -> (u16, Value) {
    let (code, body) = get(&node.url(&format!("/api/v1/metadata{query}")));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, json)
}

fn warnings(answer: &Value) -> Vec<String> {
    answer["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The family names a node holds itself (the internal, local-only metadata read).
fn local_families(node: &Node) -> BTreeSet<String> {
    let (code, body) = post(
        &node.url(LOCAL_METADATA),
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let held: Vec<(String, String, String, String)> =
        serde_json::from_slice(&body).expect("local metadata JSON");
    held.into_iter().map(|(family, ..)| family).collect()
}

#[test]
fn metadata_is_the_same_on_every_node_of_three_even_with_one_down() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut cluster = start_cluster(3, &[]);
    {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, 3, Duration::from_secs(30));
    }
    let mut families: Vec<proto::MetricMetadata> = (0..40).map(family).collect();
    write_metadata(&cluster[0].node, families.clone());
    // Metadata riding along with series, written through another node.
    let with_series = proto::WriteRequest {
        timeseries: vec![ts(&[("__name__", "family_040")], &[(now_ms(), 1.0)])],
        metadata: vec![family(40)],
    };
    let (code, body) = remote_write(&cluster[1].node, &with_series);
    assert!((200..300).contains(&code), "{code} {body}");
    families.push(family(40));
    let want = expected(&families);

    // Stored on every owner (3 nodes: every node owns every family) and answered the
    // same everywhere, without warnings.
    let all_names: BTreeSet<String> = families
        .iter()
        .map(|m| m.metric_family_name.clone())
        .collect();
    for c in &cluster {
        assert_eq!(local_families(&c.node), all_names, "{}", c.node.http_addr);
        let (code, answer) = metadata(&c.node, "");
        assert_eq!(code, 200);
        assert_eq!(answer["data"], want, "{}", c.node.http_addr);
        assert!(warnings(&answer).is_empty(), "{answer}");
    }

    // Prometheus's parameters, applied to the cluster's answer.
    let asked = &cluster[2].node;
    let (_, answer) = metadata(asked, "?metric=family_007");
    assert_eq!(answer["data"], json!({"family_007": [entry(&family(7))]}));
    let (_, answer) = metadata(asked, "?metric=no_such_family");
    assert_eq!(answer["data"], json!({}));
    let (_, answer) = metadata(asked, "?limit=5");
    let names: Vec<&String> = answer["data"].as_object().expect("map").keys().collect();
    assert_eq!(names.len(), 5, "{answer}");
    let (_, answer) = metadata(asked, "?limit=0");
    assert_eq!(answer["data"], json!({}));
    let (_, answer) = metadata(asked, "?limit_per_metric=1");
    assert_eq!(answer["data"], want);
    for bad in ["?limit=abc", "?limit_per_metric=1.5"] {
        let (code, answer) = metadata(asked, bad);
        assert_eq!(
            (code, &answer["errorType"]),
            (400, &json!("bad_data")),
            "{bad}"
        );
    }
    // The internal endpoint refuses what is not its request shape.
    for bad in [
        &b"not json"[..],
        b"{\"metric\": 5}",
        b"{\"metric\": [\"a\"]}",
    ] {
        let (code, _) = post(
            &asked.url(LOCAL_METADATA),
            &[("content-type", "application/json")],
            bad,
        );
        assert_eq!(code, 400, "{}", String::from_utf8_lossy(bad));
    }

    // One node SIGKILLed: the others still answer everything, with a warning naming it,
    // both before gossip has noticed (the request fails) and after (down in the view).
    let victim_addr = cluster[2].node.http_addr.clone();
    let victim_id = seen(&cluster[2].node).expect("status").0;
    cluster[2].node.kill();
    let killed = Instant::now();
    let mut warned_while_noticing = 0;
    wait_until("the killed node seen down", Duration::from_secs(30), || {
        for c in &cluster[..2] {
            let (code, answer) = metadata(&c.node, "");
            assert_eq!(code, 200, "{answer}");
            assert_eq!(answer["data"], want);
            let w = warnings(&answer);
            assert!(w.iter().any(|w| w.contains(&victim_addr)), "{answer}");
            warned_while_noticing += 1;
        }
        cluster[..2]
            .iter()
            .all(|c| member_state(&c.node, &victim_id).as_deref() == Some("down"))
    });
    let (code, answer) = metadata(&cluster[1].node, "?metric=family_012");
    assert_eq!(code, 200);
    assert_eq!(answer["data"], json!({"family_012": [entry(&family(12))]}));
    assert!(warnings(&answer)
        .iter()
        .any(|w| w.contains(&victim_addr) && w.contains("down")));
    println!(
        "node down seen after {:?}; {warned_while_noticing} answers meanwhile, all complete \
         and warning",
        killed.elapsed()
    );

    // Metadata written while it is down is hinted for it and delivered when it returns.
    let changed = proto::MetricMetadata {
        help: "Changed while a replica was down.".into(),
        ..family(41)
    };
    write_metadata(&cluster[0].node, vec![changed.clone()]);
    families.push(changed);
    let want = expected(&families);
    cluster[2].spawn();
    cluster[2].node.wait_ready(Duration::from_secs(60));
    {
        let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
        wait_converged(&nodes, 3, Duration::from_secs(30));
    }
    let delivered = wait_until("hinted metadata delivered", Duration::from_secs(60), || {
        local_families(&cluster[2].node).contains("family_041")
    });
    println!("hinted metadata delivered {delivered:?} after the restart");
    // It came as a hint: the only way to a node that was down when it was written.
    // (Summed over the per-target series: every peer has one, at 0 until delivered.)
    let hints_delivered: f64 = get(&cluster[0].node.url("/metrics"))
        .1
        .lines()
        .filter(|l| l.starts_with("timbala_handoff_delivered_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(hints_delivered >= 1.0, "{hints_delivered}");
    wait_until("answers without warnings", Duration::from_secs(30), || {
        cluster
            .iter()
            .all(|c| warnings(&metadata(&c.node, "").1).is_empty())
    });
    let answers: Vec<Value> = cluster
        .iter()
        .map(|c| metadata(&c.node, "").1["data"].clone())
        .collect();
    for (c, answer) in cluster.iter().zip(&answers) {
        assert_eq!(answer, &want, "{}", c.node.http_addr);
    }
}

/// Owner ids of a family's metadata by placement over the slots a node reports.
fn family_owners(slots: &[(String, bool)], family: &str) -> BTreeSet<String> {
    placement::owners_among_slots(
        placement::metadata_partition_key(family),
        slots.len(),
        3,
        |i| slots[i].1,
    )
    .into_iter()
    .map(|i| slots[i].0.clone())
    .collect()
}

/// Every node holds exactly the families whose owners it is among.
fn check_placement(nodes: &[(&str, &Node)], slots: &[(String, bool)], families: usize) {
    let mut copies = 0;
    for (id, node) in nodes {
        let held = local_families(node);
        let owned: BTreeSet<String> = (0..families)
            .map(|i| family(i).metric_family_name)
            .filter(|f| family_owners(slots, f).contains(*id))
            .collect();
        assert_eq!(held, owned, "node {id}");
        copies += held.len();
    }
    assert_eq!(copies, 3 * families);
}

#[test]
fn metadata_lives_on_its_family_owners_and_follows_a_removal() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    const FAMILIES: usize = 60;
    let mut cluster = start_cluster_with(4, &[], |_| MemberSetup {
        args: vec!["--web-enable-admin-api".into()],
        ..MemberSetup::default()
    });
    let nodes: Vec<&Node> = cluster.iter().map(|c| &c.node).collect();
    let order = wait_converged(&nodes, 4, Duration::from_secs(30));
    wait_until("join passes idle", Duration::from_secs(60), || {
        repair_idle(&nodes)
    });
    let ids: Vec<String> = nodes.iter().map(|n| seen(n).expect("status").0).collect();
    let families: Vec<proto::MetricMetadata> = (0..FAMILIES).map(family).collect();
    write_metadata(nodes[0], families.clone());
    let want = expected(&families);

    let slots = slots_of(nodes[0]);
    let by_id: Vec<(&str, &Node)> = ids
        .iter()
        .map(String::as_str)
        .zip(nodes.iter().copied())
        .collect();
    check_placement(&by_id, &slots, FAMILIES);
    for node in &nodes {
        let (_, answer) = metadata(node, "");
        assert_eq!(answer["data"], want);
    }

    // The second node of the join order dies and is removed: the families it held move
    // to their new owners (re-replication, ADR 0015/0020), nothing else moves.
    let victim_id = order[1].clone();
    let victim = ids.iter().position(|id| *id == victim_id).expect("victim");
    drop(nodes);
    cluster[victim].node.kill();
    let live: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let asked = &cluster[live[0]].node;
    wait_until("the victim seen down", Duration::from_secs(30), || {
        member_state(asked, &victim_id).as_deref() == Some("down")
    });
    let (code, body) = post_form(
        &asked.url("/api/v1/admin/cluster/remove"),
        &[("node", &victim_id)],
    );
    assert_eq!(code, 200, "{body}");
    let live_nodes: Vec<&Node> = live.iter().map(|&i| &cluster[i].node).collect();
    let healed = wait_until(
        "metadata on its new owners",
        Duration::from_secs(120),
        || {
            let slots = slots_of(live_nodes[0]);
            slots
                .iter()
                .any(|(id, removed)| *id == victim_id && *removed)
                && repair_idle(&live_nodes)
                && live
                    .iter()
                    .map(|&i| local_families(&cluster[i].node).len())
                    .sum::<usize>()
                    == 3 * FAMILIES
        },
    );
    println!("metadata re-replicated {healed:?} after the removal");
    let slots = slots_of(live_nodes[0]);
    let by_id: Vec<(&str, &Node)> = live
        .iter()
        .map(|&i| (ids[i].as_str(), &cluster[i].node))
        .collect();
    check_placement(&by_id, &slots, FAMILIES);
    for node in &live_nodes {
        let (code, answer) = metadata(node, "");
        assert_eq!(code, 200);
        assert_eq!(answer["data"], want);
        assert!(warnings(&answer).is_empty(), "{answer}");
    }
}

//! Stable-toolchain fuzzing of aggregation pushdown's untrusted inputs (ADR 0029) for a
//! bounded time (TIMBALA_FUZZ_SECONDS, default 2): a node's share request
//! (`POST /internal/v1/aggregate`'s JSON body: field-level mutations of valid requests,
//! then byte-level damage) parsed and answered over a small TSDB as the handler does,
//! and a share's answer (snappy protobuf) damaged and decoded as the coordinator does.
//! Neither may panic; a request that parses is answered or refused.

#[path = "support/fuzz_input.rs"]
mod fuzz_input;

use std::time::Instant;

use prometheus_client::registry::Registry;
use rand::rngs::SmallRng;
use rand::Rng;
use timbala::cluster::identity::NodeId;
use timbala::cluster::ring::{Ring, RingNode, RingSlot};
use timbala::fanout::one_copy::wire_slots;
use timbala::fanout::pushdown::{answer_share, decode_answer, encode_answer, WirePushdownRequest};
use timbala::model::{stale_nan, Labels, Sample, Series};
use timbala::promql::pushdown::PartialRequest;
use timbala::storage::Storage;
use timbala::tsdb::{Tsdb, TsdbMetrics, TsdbOptions};

const QUERIES: &[&str] = &[
    "sum(m)",
    "sum by (a) (rate(m[1m]))",
    "avg without (a) (avg_over_time(m[2m] offset 30s))",
    "max(irate(m[1m] @ 60)) / min by (a) (m)",
    "count(count_over_time({__name__=\"m\"}[5m]))",
    "group(m)",
];

/// Text a mutated query gets spliced into it: operators, brackets, modifiers.
const QUERY_PIECES: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "sum",
    "by (a)",
    "[0s]",
    "@ -1",
    "offset 1y",
    "rate",
    ",",
    "\"",
    "1e308",
    "-",
    "topk(1,",
    "m",
    " ",
    "\u{0}",
];

/// Steps beyond which a request is only parsed: evaluating up to the protocol's
/// million steps is allowed but would spend the run's time on one input.
const MAX_FUZZ_STEPS: i64 = 10_000;

fn ring() -> Ring {
    Ring::from_slots(
        (1..=3u128)
            .map(|id| RingSlot {
                node: RingNode {
                    id: NodeId(id),
                    join_seq: id as u64,
                    gossip_addr: "127.0.0.1:1".parse().expect("addr"),
                    http_addr: format!("127.0.0.1:{}", 1000 + id),
                },
                removed: false,
            })
            .collect(),
    )
}

fn seed(rng: &mut SmallRng, ring: &Ring) -> WirePushdownRequest {
    let start = rng.random_range(0..600) * 1000;
    let step = [0, 15_000, 60_000][rng.random_range(0..3)];
    let end = if step == 0 {
        start
    } else {
        start + rng.random_range(0..20) * step
    };
    WirePushdownRequest {
        request: PartialRequest {
            query: QUERIES[rng.random_range(0..QUERIES.len())].to_string(),
            aggregate: rng.random_range(0..2),
            start,
            end,
            step,
            lookback: 300_000,
            max_samples: 10_000,
            delayed_name_removal: rng.random(),
        },
        slots: wire_slots(ring),
        alive: (1..=3).map(NodeId).collect(),
        instead_of: Vec::new(),
    }
}

/// Field-level damage: text spliced into the query, extreme times and limits, another
/// aggregation index, a view that differs.
fn mutate_fields(rng: &mut SmallRng, req: &mut WirePushdownRequest) {
    let r = &mut req.request;
    match rng.random_range(0..7) {
        0 => {
            let piece = QUERY_PIECES[rng.random_range(0..QUERY_PIECES.len())];
            let mut at = rng.random_range(0..=r.query.len());
            while !r.query.is_char_boundary(at) {
                at -= 1;
            }
            r.query.insert_str(at, piece);
        }
        1 => {
            let extreme = [i64::MIN, -1, 0, 1, i64::MAX, 1 << 53];
            r.start = extreme[rng.random_range(0..extreme.len())];
            r.step = extreme[rng.random_range(0..extreme.len())];
        }
        2 => r.lookback = [i64::MIN, 0, 1, i64::MAX][rng.random_range(0..4)],
        3 => r.aggregate = rng.random(),
        4 => r.max_samples = [0, 1, usize::MAX][rng.random_range(0..3)],
        5 => {
            req.instead_of = (0..rng.random_range(0..3))
                .map(|_| NodeId(rng.random_range(0..5)))
                .collect()
        }
        _ => {
            req.alive = (0..rng.random_range(0..4))
                .map(|_| NodeId(rng.random_range(0..5)))
                .collect();
            req.slots.truncate(rng.random_range(0..=req.slots.len()));
        }
    }
}

fn steps(r: &PartialRequest) -> i64 {
    match r.step {
        s if s > 0 => r.end.checked_sub(r.start).map_or(i64::MAX, |d| d / s),
        _ => 1,
    }
}

#[test]
fn share_requests_and_answers_survive_damage() {
    let run_for = fuzz_input::duration();
    let mut rng = fuzz_input::rng();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TsdbOptions {
        dir: dir.path().to_path_buf(),
        retention_ms: 0,
        ..TsdbOptions::default()
    };
    let tsdb = Tsdb::open(opts, TsdbMetrics::register(&mut Registry::default())).expect("open");
    let batch = (0..12)
        .map(|i| Series {
            labels: Labels::from_pairs([
                ("__name__", "m".to_string()),
                ("a", (i % 3).to_string()),
                ("i", i.to_string()),
            ]),
            samples: (0..60)
                .map(|s| {
                    Sample::new(
                        s * 15_000,
                        if s == 30 { stale_nan() } else { (s * i) as f64 },
                    )
                })
                .collect(),
        })
        .collect();
    runtime.block_on(tsdb.append(batch)).expect("append");
    let ring = ring();
    let store: &dyn Storage = &tsdb;
    let started = Instant::now();
    let (mut answered, mut refused) = (0u64, 0u64);
    while started.elapsed() < run_for {
        let mut req = seed(&mut rng, &ring);
        for _ in 0..rng.random_range(0..3) {
            mutate_fields(&mut rng, &mut req);
        }
        let mut body = serde_json::to_vec(&req).expect("serialises");
        if rng.random_bool(0.5) {
            fuzz_input::mutate_bytes(&mut rng, &mut body, b"{}[],:\"0-9e");
        }
        let Ok(mut parsed) = serde_json::from_slice::<WirePushdownRequest>(&body) else {
            refused += 1;
            continue;
        };
        if steps(&parsed.request) > MAX_FUZZ_STEPS {
            continue;
        }
        // As the handler does: the node's own limit caps the asker's.
        parsed.request.max_samples = parsed.request.max_samples.clamp(1, 10_000);
        let me = NodeId(rng.random_range(1..=3));
        match runtime.block_on(answer_share(store, &ring, me, parsed)) {
            Ok(Some(answer)) => {
                answered += 1;
                let mut bytes = encode_answer(&answer);
                assert_eq!(decode_answer(&bytes).map(|a| a.digests), Ok(answer.digests));
                fuzz_input::mutate_bytes(
                    &mut rng,
                    &mut bytes,
                    &[0x00, 0x08, 0x0a, 0x12, 0x80, 0xff],
                );
                let _ = decode_answer(&bytes);
            }
            Ok(None) | Err(_) => refused += 1,
        }
    }
    println!("{answered} share requests answered, {refused} refused or declined");
    assert!(answered > 0, "no valid request got through");
}

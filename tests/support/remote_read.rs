//! Remote-read client for the acceptance tests: sends a `prometheus.ReadRequest` the way
//! Prometheus does and decodes either response type (snappy `ReadResponse`, or streamed
//! CRC32C-checked frames of XOR chunks) into one comparable form.
#![allow(dead_code)]

use prost::Message;
use timbala::proto::{self, MatcherType, ResponseType};
use timbala::tsdb::chunk::decode_xor;

use crate::common::{post, Node};

/// A series as read back: labels as sent by the server, samples as (ms, value bits).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadSeries {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<(i64, u64)>,
}

/// One matcher: (type, name, value).
pub type M<'a> = (MatcherType, &'a str, &'a str);

/// Reads `[start, end]` for one query; panics unless the server answers 200 correctly.
pub fn remote_read(
    node: &Node,
    matchers: &[M],
    start: i64,
    end: i64,
    rt: ResponseType,
) -> Vec<ReadSeries> {
    let (status, body) = remote_read_raw(node, matchers, start, end, rt);
    assert_eq!(
        status,
        200,
        "remote read failed: {}",
        String::from_utf8_lossy(&body)
    );
    match rt {
        ResponseType::Samples => decode_samples(&body),
        ResponseType::StreamedXorChunks => decode_streamed(&body),
    }
}

/// Sends a remote-read request and returns status and raw body.
pub fn remote_read_raw(
    node: &Node,
    matchers: &[M],
    start: i64,
    end: i64,
    rt: ResponseType,
) -> (u16, Vec<u8>) {
    let req = proto::ReadRequest {
        queries: vec![proto::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: matchers
                .iter()
                .map(|(t, n, v)| proto::LabelMatcher {
                    r#type: *t as i32,
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            hints: None,
        }],
        accepted_response_types: vec![rt as i32],
    };
    post(
        &node.url("/api/v1/read"),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Read-Version", "0.1.0"),
        ],
        &proto::encode_snappy(&req),
    )
}

fn labels_of(labels: &[proto::Label]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

fn decode_samples(body: &[u8]) -> Vec<ReadSeries> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .expect("snappy response");
    let resp = proto::ReadResponse::decode(raw.as_slice()).expect("ReadResponse");
    assert_eq!(resp.results.len(), 1, "one result per query");
    resp.results[0]
        .timeseries
        .iter()
        .map(|ts| ReadSeries {
            labels: labels_of(&ts.labels),
            samples: ts
                .samples
                .iter()
                .map(|s| (s.timestamp, s.value.to_bits()))
                .collect(),
        })
        .collect()
}

/// Decodes frames (uvarint length, big-endian CRC32C, message); a series split across
/// consecutive frames is joined.
fn decode_streamed(mut body: &[u8]) -> Vec<ReadSeries> {
    let mut out: Vec<ReadSeries> = Vec::new();
    while !body.is_empty() {
        let len = prost::encoding::decode_varint(&mut body).expect("frame length") as usize;
        assert!(body.len() >= 4 + len, "truncated frame");
        let (crc, rest) = body.split_at(4);
        let (message, rest) = rest.split_at(len);
        assert_eq!(crc, crc32c::crc32c(message).to_be_bytes(), "frame checksum");
        body = rest;
        let frame = proto::ChunkedReadResponse::decode(message).expect("ChunkedReadResponse");
        assert_eq!(frame.query_index, 0);
        for cs in frame.chunked_series {
            let labels = labels_of(&cs.labels);
            let mut samples = Vec::new();
            for chunk in &cs.chunks {
                assert_eq!(chunk.r#type, proto::ChunkEncoding::Xor as i32);
                let decoded: Vec<_> = decode_xor(&chunk.data)
                    .collect::<Result<_, _>>()
                    .expect("XOR chunk");
                assert!(
                    !decoded.is_empty() && decoded.len() <= 120,
                    "chunk of {} samples",
                    decoded.len()
                );
                assert_eq!(chunk.min_time_ms, decoded[0].t);
                assert_eq!(chunk.max_time_ms, decoded[decoded.len() - 1].t);
                samples.extend(decoded.iter().map(|s| (s.t, s.v.to_bits())));
            }
            match out.last_mut() {
                Some(last) if last.labels == labels => last.samples.extend(samples),
                _ => out.push(ReadSeries { labels, samples }),
            }
        }
    }
    out
}

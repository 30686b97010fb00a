//! One copy of each series on the wire (ADR 0028): who sends a series in full and who
//! sends only its digest, what a digest is, and the binary form of a node's answer to a
//! fan-out select (`peer::SELECT_PATH`).
//!
//! Owns: `SeriesDigest` (labels hash, sample count, first and last timestamp, and a
//! wrapping sum of `tsdb::digest::sample_hash` over the samples in the requested range:
//! equal digests mean equal samples, whatever order they were read in); the rule a node
//! answers by (`answer_select`: in full where it is the first owner of the series alive
//! in the asker's view, where it owns nothing or places the series differently, and in a
//! second round for the series asked by hash; a digest where an owner before it is
//! alive); and the snappy-compressed protobuf answer, whose full series travel as XOR
//! chunks (`tsdb::chunk`) rather than 16-byte samples. Merging digests with full copies
//! is `lagging::Collation`'s. Both sides of the protocol live here so they cannot drift.
//! Calls `cluster` (the ring, placement), `model`, `peer` (the request shape), `proto`
//! (labels) and `tsdb::{chunk, digest}` (encoding, sample hash) only.

use std::collections::HashSet;

use prost::Message;

use crate::cluster::identity::NodeId;
use crate::cluster::placement;
use crate::cluster::ring::Ring;
use crate::model::{Label, Labels, Sample, Series};
use crate::peer::WireSelectRequest;
use crate::proto;
use crate::tsdb::chunk::{decode_xor, encode_xor_chunks, MAX_SAMPLES_PER_CHUNK};
use crate::tsdb::digest::sample_hash;

/// What a node that holds an exact copy of a series' samples in the requested range
/// says instead of sending them. Two copies with equal digests hold the same samples
/// (timestamps and value bits) up to a 64-bit hash collision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesDigest {
    /// `Labels::stable_hash` of the series (its partition key).
    pub labels_hash: u64,
    pub samples: u64,
    /// First and last timestamp (`i64::MIN` when there are no samples).
    pub first: i64,
    pub last: i64,
    /// Wrapping sum of `sample_hash` over the samples.
    pub hash: u64,
}

impl SeriesDigest {
    /// The digest of a series' time-sorted, deduplicated samples.
    pub fn of(labels_hash: u64, samples: &[Sample]) -> SeriesDigest {
        SeriesDigest {
            labels_hash,
            samples: samples.len() as u64,
            first: samples.first().map_or(i64::MIN, |s| s.t),
            last: samples.last().map_or(i64::MIN, |s| s.t),
            hash: samples
                .iter()
                .fold(0u64, |acc, s| acc.wrapping_add(sample_hash(s))),
        }
    }
}

/// One node's answer to a fan-out select: series in full and digests of others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectAnswer {
    pub full: Vec<Series>,
    pub digests: Vec<SeriesDigest>,
}

/// Whether node `me` answers `labels` with a digest: the asker places series as `ring`
/// does (`same_ring`), `me` owns the series, and an owner before `me` in placement
/// order is among `alive` (the nodes the asker asked, itself included). Every other
/// series is sent in full: the first alive owner's copy is the read's data, and a node
/// that is no owner (data left from before a membership change) or cannot tell whom the
/// asker would count first has nobody to stand in for it.
pub fn sends_digest(
    ring: &Ring,
    same_ring: bool,
    alive: &[NodeId],
    me: NodeId,
    labels: &Labels,
) -> bool {
    if !same_ring {
        return false;
    }
    let owners = ring.owners(placement::partition_key(labels));
    if !owners.contains(&me) {
        return false;
    }
    owners
        .iter()
        .find(|o| alive.contains(o))
        .is_some_and(|first| *first != me)
}

/// Whether `slots` (the asker's ring as (id, removed) in join order) places every
/// series as `ring` does.
pub fn same_placement(ring: &Ring, slots: &[(NodeId, bool)]) -> bool {
    ring.slots().len() == slots.len()
        && ring
            .slots()
            .iter()
            .zip(slots)
            .all(|(mine, (id, removed))| mine.node.id == *id && mine.removed == *removed)
}

/// The asker's ring as it is sent: every slot in join order as (id, removed).
pub fn wire_slots(ring: &Ring) -> Vec<(NodeId, bool)> {
    ring.slots()
        .iter()
        .map(|s| (s.node.id, s.removed))
        .collect()
}

/// Node `me`'s answer to `request` from the series its own store selected for it (see
/// `sends_digest`; with `request.only`, just those series, each in full).
pub fn answer_select(
    ring: &Ring,
    me: NodeId,
    request: &WireSelectRequest,
    series: Vec<Series>,
) -> SelectAnswer {
    let mut answer = SelectAnswer::default();
    if let Some(only) = &request.only {
        let wanted: HashSet<u64> = only.iter().copied().collect();
        answer.full = series
            .into_iter()
            .filter(|s| wanted.contains(&s.labels.stable_hash()))
            .collect();
        return answer;
    }
    let same_ring = same_placement(ring, &request.slots);
    for s in series {
        if sends_digest(ring, same_ring, &request.alive, me, &s.labels) {
            let digest = SeriesDigest::of(s.labels.stable_hash(), &s.samples);
            answer.digests.push(digest);
        } else {
            answer.full.push(s);
        }
    }
    answer
}

#[derive(Clone, PartialEq, Message)]
struct WireAnswer {
    #[prost(message, repeated, tag = "1")]
    series: Vec<WireSeries>,
    #[prost(message, repeated, tag = "2")]
    digests: Vec<WireDigest>,
}

/// A series in full: its labels (sorted) and its samples as XOR chunks in time order.
#[derive(Clone, PartialEq, Message)]
struct WireSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<proto::Label>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    chunks: Vec<Vec<u8>>,
}

/// A digest on the wire (here and in a pushed-down aggregation's answer, ADR 0029).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct WireDigest {
    #[prost(fixed64, tag = "1")]
    labels_hash: u64,
    #[prost(uint64, tag = "2")]
    samples: u64,
    #[prost(int64, tag = "3")]
    first: i64,
    #[prost(int64, tag = "4")]
    last: i64,
    #[prost(fixed64, tag = "5")]
    hash: u64,
}

impl WireDigest {
    pub(crate) fn of(d: &SeriesDigest) -> WireDigest {
        WireDigest {
            labels_hash: d.labels_hash,
            samples: d.samples,
            first: d.first,
            last: d.last,
            hash: d.hash,
        }
    }

    pub(crate) fn digest(&self) -> SeriesDigest {
        SeriesDigest {
            labels_hash: self.labels_hash,
            samples: self.samples,
            first: self.first,
            last: self.last,
            hash: self.hash,
        }
    }
}

/// The answer's wire form: snappy over the protobuf, each full series' samples as XOR
/// chunks as long as the chunk header allows (fewer chunk heads than remote read's
/// 120-sample chunks).
pub fn encode_answer(answer: &SelectAnswer) -> Vec<u8> {
    let wire = WireAnswer {
        series: answer
            .full
            .iter()
            .map(|s| WireSeries {
                labels: proto::labels_to_proto(&s.labels),
                chunks: encode_xor_chunks(&s.samples, MAX_SAMPLES_PER_CHUNK)
                    .map(|c| c.into_bytes())
                    .collect(),
            })
            .collect(),
        digests: answer.digests.iter().map(WireDigest::of).collect(),
    };
    proto::encode_snappy(&wire)
}

/// A snappy-compressed protobuf message from a peer; a malformed body is an error.
/// Shared with the other fan-out answers (`pushdown`) so every peer body is opened alike.
pub(crate) fn decode_snappy_message<M: Message + Default>(body: &[u8]) -> Result<M, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    M::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
}

/// A peer's label set, refused unless its names are sorted and unique (the evaluator
/// and the merge rely on that order); `what` names it in the error.
pub(crate) fn labels_from_wire(wire: Vec<proto::Label>, what: &str) -> Result<Labels, String> {
    let labels: Vec<Label> = wire
        .into_iter()
        .map(|l| Label::new(l.name, l.value))
        .collect();
    if !labels.windows(2).all(|w| w[0].name < w[1].name) {
        return Err(format!("{what} labels not sorted and unique"));
    }
    Ok(Labels::from_sorted(labels))
}

/// Decodes `encode_answer`'s output; a malformed body is an error, never a panic.
pub fn decode_answer(body: &[u8]) -> Result<SelectAnswer, String> {
    let wire: WireAnswer = decode_snappy_message(body)?;
    let mut full = Vec::with_capacity(wire.series.len());
    for s in wire.series {
        let labels = labels_from_wire(s.labels, "series")?;
        let mut samples = Vec::new();
        for chunk in &s.chunks {
            for sample in decode_xor(chunk) {
                samples.push(sample.map_err(|e| format!("chunk: {e}"))?);
            }
        }
        if !samples.windows(2).all(|w| w[0].t < w[1].t) {
            return Err("series samples not in strictly increasing time order".into());
        }
        full.push(Series { labels, samples });
    }
    let digests = wire.digests.iter().map(WireDigest::digest).collect();
    Ok(SelectAnswer { full, digests })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::test_ring as ring;
    use crate::fanout::test_series as series;

    fn request(ring: &Ring, alive: &[u128]) -> WireSelectRequest {
        WireSelectRequest {
            matchers: Vec::new(),
            mint: 0,
            maxt: 100,
            max_samples: 0,
            slots: wire_slots(ring),
            alive: alive.iter().map(|&id| NodeId(id)).collect(),
            only: None,
        }
    }

    #[test]
    fn digests_tell_copies_apart_by_any_sample() {
        let h = 7;
        let x = series("x", &[(1, 1.0), (2, 2.0), (3, 3.0)]);
        let d = SeriesDigest::of(h, &x.samples);
        assert_eq!(d.samples, 3);
        assert_eq!((d.first, d.last), (1, 3));
        assert_eq!(d, SeriesDigest::of(h, &x.samples.clone()));
        let missing = series("x", &[(1, 1.0), (3, 3.0)]);
        let other_value = series("x", &[(1, 1.0), (2, 2.5), (3, 3.0)]);
        let stale = series("x", &[(1, 1.0), (2, crate::model::stale_nan()), (3, 3.0)]);
        let nan = series("x", &[(1, 1.0), (2, f64::NAN), (3, 3.0)]);
        for other in [missing, other_value, stale.clone(), nan] {
            assert_ne!(d, SeriesDigest::of(h, &other.samples));
        }
        assert_ne!(
            SeriesDigest::of(h, &stale.samples),
            SeriesDigest::of(
                h,
                &series("x", &[(1, 1.0), (2, f64::NAN), (3, 3.0)]).samples
            )
        );
        assert_eq!(SeriesDigest::of(h, &[]).first, i64::MIN);
    }

    #[test]
    fn the_first_alive_owner_sends_data_and_the_other_owners_digests() {
        // Five nodes: a series has three owners and two non-owners.
        let ring = ring(&[1, 2, 3, 4, 5], &[]);
        let x = series("x", &[(1, 1.0)]);
        let owners = ring.owners(placement::partition_key(&x.labels));
        let everyone = [1, 2, 3, 4, 5];
        let req = request(&ring, &everyone);
        let roles: Vec<(NodeId, bool)> = everyone
            .iter()
            .map(|&id| {
                let answer = answer_select(&ring, NodeId(id), &req, vec![x.clone()]);
                (NodeId(id), answer.digests.len() == 1)
            })
            .collect();
        for (id, digest) in roles {
            // Owners after the first send digests; the first and non-owners send data.
            let expected = owners.contains(&id) && owners[0] != id;
            assert_eq!(digest, expected, "node {id}");
        }
        // With the first owner not alive in the asker's view, the second sends data.
        let first = owners[0].0;
        let alive: Vec<u128> = everyone.into_iter().filter(|&id| id != first).collect();
        let req = request(&ring, &alive);
        let second = answer_select(&ring, owners[1], &req, vec![x.clone()]);
        assert_eq!(second.full, vec![x.clone()]);
        let third = answer_select(&ring, owners[2], &req, vec![x.clone()]);
        assert_eq!(third.digests.len(), 1);
        // An asker that places series differently gets everything in full.
        let other_ring = self::ring(&[1, 2, 3, 4, 5, 6], &[]);
        let req = request(&other_ring, &everyone);
        let answer = answer_select(&ring, owners[2], &req, vec![x.clone()]);
        assert_eq!(answer.full, vec![x]);
    }

    #[test]
    fn a_second_round_sends_exactly_the_series_asked_by_hash() {
        let ring = ring(&[1, 2, 3], &[]);
        let x = series("x", &[(1, 1.0)]);
        let y = series("y", &[(2, 2.0)]);
        let mut req = request(&ring, &[1, 2, 3]);
        req.only = Some(vec![y.labels.stable_hash()]);
        for id in [1, 2, 3] {
            let answer = answer_select(&ring, NodeId(id), &req, vec![x.clone(), y.clone()]);
            assert_eq!(answer.full, vec![y.clone()]);
            assert!(answer.digests.is_empty());
        }
    }

    #[test]
    fn answers_survive_the_wire_as_chunks() {
        let long: Vec<(i64, f64)> = (0..70_000)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i / 4) as f64))
            .collect();
        let answer = SelectAnswer {
            full: vec![
                series("long", &long),
                series("odd", &[(-5, f64::NAN), (0, crate::model::stale_nan())]),
                series("empty", &[]),
            ],
            digests: vec![SeriesDigest::of(42, &[Sample::new(1, 2.0)])],
        };
        let bytes = encode_answer(&answer);
        let back = decode_answer(&bytes).expect("decodes");
        assert_eq!(back, answer);
        // XOR chunks, not 16-byte samples.
        assert!(bytes.len() < 70_000 * 4, "{} bytes", bytes.len());
        assert!(decode_answer(b"garbage").is_err());
    }
}

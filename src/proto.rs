//! Prometheus's wire messages for remote write 1.0 and remote read, as prost structs.
//!
//! Owns: the protobuf schema (field numbers and types copied from Prometheus's
//! `prompb/types.proto` and `prompb/remote.proto`), written by hand with prost's derive so
//! the build needs no `protoc`, and the conversion of `model` series into them. Calls
//! only `model`. Native histograms and exemplars are stored (ADR 0027, 0030).
//! `histogram`: the native histogram message both remote-write versions share, and its
//! conversion to and from `model::histogram`.
//! `otlp`: OpenTelemetry's OTLP metrics export messages, in the same hand-written style.
//! `write_v2`: remote write 2.0 (`io.prometheus.write.v2.Request`), in the same style.
//! `write_body`: remote-write 1.0 bytes written straight from `model` series (the bodies
//! nodes send each other), without the prost structs in between.

pub mod histogram;
pub mod otlp;
pub mod write_body;
pub mod write_v2;

use prost::Message;

use crate::model;

pub use histogram::{histogram_series_to_proto, BucketSpan, Histogram};

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    Gaugehistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

impl MetricType {
    /// The name Prometheus's metadata API uses for this type.
    pub fn api_name(self) -> &'static str {
        match self {
            MetricType::Unknown => "unknown",
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Gaugehistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::Stateset => "stateset",
        }
    }

    /// The type `api_name` names; `Unknown` for any other name.
    pub fn from_api_name(name: &str) -> MetricType {
        const ALL: [MetricType; 8] = [
            MetricType::Unknown,
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Gaugehistogram,
            MetricType::Summary,
            MetricType::Info,
            MetricType::Stateset,
        ];
        ALL.into_iter()
            .find(|t| t.api_name() == name)
            .unwrap_or(MetricType::Unknown)
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    pub queries: Vec<Query>,
    #[prost(enumeration = "ResponseType", repeated, packed = "true", tag = "2")]
    pub accepted_response_types: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResponseType {
    Samples = 0,
    StreamedXorChunks = 1,
}

#[derive(Clone, PartialEq, Message)]
pub struct Query {
    #[prost(int64, tag = "1")]
    pub start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    pub end_timestamp_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub matchers: Vec<LabelMatcher>,
    #[prost(message, optional, tag = "4")]
    pub hints: Option<ReadHints>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelMatcher {
    #[prost(enumeration = "MatcherType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MatcherType {
    Eq = 0,
    Neq = 1,
    Re = 2,
    Nre = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadHints {
    #[prost(int64, tag = "1")]
    pub step_ms: i64,
    #[prost(string, tag = "2")]
    pub func: String,
    #[prost(int64, tag = "3")]
    pub start_ms: i64,
    #[prost(int64, tag = "4")]
    pub end_ms: i64,
    #[prost(string, repeated, tag = "5")]
    pub grouping: Vec<String>,
    #[prost(bool, tag = "6")]
    pub by: bool,
    #[prost(int64, tag = "7")]
    pub range_ms: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<QueryResult>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryResult {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One frame of a STREAMED_XOR_CHUNKS response.
#[derive(Clone, PartialEq, Message)]
pub struct ChunkedReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub chunked_series: Vec<ChunkedSeries>,
    #[prost(int64, tag = "2")]
    pub query_index: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChunkedSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub chunks: Vec<Chunk>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Chunk {
    #[prost(int64, tag = "1")]
    pub min_time_ms: i64,
    #[prost(int64, tag = "2")]
    pub max_time_ms: i64,
    #[prost(enumeration = "ChunkEncoding", tag = "3")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChunkEncoding {
    Unknown = 0,
    Xor = 1,
    Histogram = 2,
    FloatHistogram = 3,
}

/// Encodes a message and compresses it with snappy's block format, as remote write does.
pub fn encode_snappy<M: Message>(msg: &M) -> Vec<u8> {
    compress_snappy(&msg.encode_to_vec())
}

/// Encoded message bytes as remote write carries them: snappy, block format.
pub fn compress_snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("snappy block compression of an in-memory buffer cannot fail")
}

/// The wire form of a label set.
pub fn labels_to_proto(labels: &model::Labels) -> Vec<Label> {
    labels
        .iter()
        .map(|l| Label {
            name: String::from(&l.name),
            value: String::from(&l.value),
        })
        .collect()
}

/// The wire form of a series with its float samples.
/// Metadata as remote write carries it (the type by its enum number).
pub fn metadata_to_proto(metadata: &model::MetricMetadata) -> MetricMetadata {
    MetricMetadata {
        r#type: MetricType::from_api_name(&metadata.metric_type) as i32,
        metric_family_name: metadata.metric_family.clone(),
        help: metadata.help.clone(),
        unit: metadata.unit.clone(),
    }
}

/// The wire form of a series' exemplars: a `TimeSeries` without samples.
pub fn exemplars_to_proto(series: &model::SeriesExemplars) -> TimeSeries {
    TimeSeries {
        labels: labels_to_proto(&series.series),
        exemplars: series
            .exemplars
            .iter()
            .map(|e| Exemplar {
                labels: labels_to_proto(&e.labels),
                value: e.value,
                timestamp: e.t,
            })
            .collect(),
        ..Default::default()
    }
}

pub fn series_to_proto(series: &model::Series) -> TimeSeries {
    TimeSeries {
        labels: labels_to_proto(&series.labels),
        samples: series
            .samples
            .iter()
            .map(|s| Sample {
                value: s.v,
                timestamp: s.t,
            })
            .collect(),
        ..Default::default()
    }
}

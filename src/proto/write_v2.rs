//! Prometheus remote write 2.0 (`io.prometheus.write.v2.Request`), as prost structs
//! written by hand (field numbers and types from Prometheus's
//! `prompb/io/prometheus/write/v2/types.proto`).
//!
//! The server decodes 2.0 with its own borrowing decoder (`ingest::decode_v2`); these
//! structs are the reference that decoder is held to by the differential fuzz test, and
//! what tests and tools build requests with. `TimeSeries.created_timestamp` (field 6) is
//! what Prometheus 3.0 to 3.4 send; newer senders put a `start_timestamp` on each sample
//! and reserve field 6. Both are read.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    /// Every string of the request once; `symbols[0]` must be the empty string.
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Name and value references into `symbols`, in pairs, sorted by name.
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
    #[prost(int64, tag = "3")]
    pub start_timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    /// `MetricType`, numbered as remote write 1.0's (`proto::MetricType`).
    #[prost(enumeration = "super::MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// A native histogram: the same message as remote write 1.0's, plus `start_timestamp`
/// (field 17), which the shared struct declares.
pub use super::Histogram;

/// Builds the symbol table of a request: `symbols[0]` is "", each string once.
#[derive(Clone, Debug)]
pub struct SymbolTable {
    symbols: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

impl Default for SymbolTable {
    fn default() -> Self {
        SymbolTable {
            symbols: vec![String::new()],
            index: [(String::new(), 0)].into_iter().collect(),
        }
    }
}

impl SymbolTable {
    /// The reference of `s`, added if new.
    pub fn symbolize(&mut self, s: &str) -> u32 {
        if let Some(&r) = self.index.get(s) {
            return r;
        }
        let r = self.symbols.len() as u32;
        self.symbols.push(s.to_string());
        self.index.insert(s.to_string(), r);
        r
    }

    /// The references of label pairs, in the order given.
    pub fn symbolize_labels<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<u32> {
        labels
            .into_iter()
            .flat_map(|(n, v)| [self.symbolize(n), self.symbolize(v)])
            .collect()
    }

    pub fn into_symbols(self) -> Vec<String> {
        self.symbols
    }
}

/// Encodes a request and compresses it with snappy, as a 2.0 sender does.
pub fn encode_snappy(request: &Request) -> Vec<u8> {
    super::encode_snappy(request)
}

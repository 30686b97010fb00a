//! `POST /api/v1/read`: Prometheus remote read, SAMPLES and STREAMED_XOR_CHUNKS.
//!
//! Owns: decoding a snappy `prometheus.ReadRequest`, response-type negotiation (the
//! first type in the client's list that we support, as Prometheus), and both response
//! encodings: a snappy `ReadResponse` (a series' float samples and native histograms in
//! one `TimeSeries`), or length-prefixed, CRC32C-checked `ChunkedReadResponse` frames
//! holding XOR chunks of at most 120 samples and histogram chunks (encodings 2 and 3,
//! cut as the head cuts them), in time order, one series per frame and a series split
//! across frames once a frame passes 1 MiB.
//! Calls `ingest` (bounded snappy), `storage` (select, select_histograms) and `tsdb`
//! (XOR and histogram chunk encoding).
//!
//! Known gap: storage answers a select as one vector, so the streamed response is built
//! in memory before it is sent; the per-query sample limit bounds that memory.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;

use super::write::{plain_text, read_limited};
use super::{ApiError, AppState};
use crate::ingest::decompress_snappy;
use crate::model::{HistogramSeries, Labels, MatchOp, Matcher, Series};
use crate::proto;
use crate::storage::{SelectError, SelectRequest, Storage};
use crate::tsdb::chunk::encode_xor_chunks;
use crate::tsdb::encode_histogram_chunks;

/// Largest compressed and decompressed read request (Prometheus's `decodeReadLimit`).
const MAX_READ_REQUEST_BYTES: usize = 32 << 20;
/// Samples one query may return (Prometheus's `--storage.remote.read-sample-limit`).
const SAMPLE_LIMIT: usize = 50_000_000;
/// Frame size after which a streamed series continues in a new frame (Prometheus's
/// `--storage.remote.read-max-bytes-in-frame`).
const MAX_BYTES_IN_FRAME: usize = 1 << 20;
/// Samples per XOR chunk, as Prometheus's head cuts them.
const SAMPLES_PER_CHUNK: usize = 120;

const STREAMED_CONTENT_TYPE: &str =
    "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/read", post(remote_read))
}

/// A failure with the status it is answered with.
struct ReadFailure {
    status: StatusCode,
    message: String,
}

impl ReadFailure {
    fn bad_request(message: impl Into<String>) -> Self {
        ReadFailure {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

async fn remote_read(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let storage = match state.services() {
        Ok(services) => services.storage.clone(),
        Err(err) => return plain_text(err.status, &err.message),
    };
    answer_read(storage.as_ref(), &headers, body).await
}

/// `POST /internal/v1/read-local`: remote read of this node's own data only (no
/// fan-out): the fan-out's internal select, and a debugging aid.
pub async fn local_read(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let tsdb = match state.services() {
        Ok(services) => services.tsdb.clone(),
        Err(err) => return plain_text(err.status, &err.message),
    };
    answer_read(&tsdb, &headers, body).await
}

async fn answer_read(storage: &dyn Storage, headers: &HeaderMap, body: Body) -> Response {
    let body = match read_limited(headers, body, MAX_READ_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(err) => return plain_text(err.status, &err.message),
    };
    match answer(storage, body).await {
        Ok(response) => response,
        Err(ReadFailure { status, message }) => plain_text(status, &message),
    }
}

/// Decodes on a blocking thread, selects (storage does its own blocking work off the
/// runtime) and encodes on a blocking thread again: chunk encoding is CPU work.
async fn answer(storage: &dyn Storage, body: Bytes) -> Result<Response, ReadFailure> {
    let request = off_runtime(move || decode_read_request(&body)).await?;
    let response_type = negotiate(&request.accepted_response_types)?;
    let mut results = Vec::with_capacity(request.queries.len());
    for query in &request.queries {
        results.push(run_select(storage, select_request(query)?).await?);
    }
    off_runtime(move || {
        Ok(match response_type {
            proto::ResponseType::Samples => samples_response(results),
            proto::ResponseType::StreamedXorChunks => streamed_response(&results),
        })
    })
    .await
}

async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReadFailure> + Send + 'static,
) -> Result<T, ReadFailure> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(ReadFailure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("remote read task failed: {e}"),
        })
    })
}

fn decode_read_request(body: &[u8]) -> Result<proto::ReadRequest, ReadFailure> {
    let raw = decompress_snappy(body, MAX_READ_REQUEST_BYTES).map_err(|e| ReadFailure {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        message: e.message,
    })?;
    proto::ReadRequest::decode(raw.as_slice()).map_err(|e| {
        ReadFailure::bad_request(format!(
            "body is not a valid prometheus.ReadRequest protobuf: {e}"
        ))
    })
}

/// The first response type in the client's order that this server supports.
fn negotiate(accepted: &[i32]) -> Result<proto::ResponseType, ReadFailure> {
    if accepted.is_empty() {
        return Ok(proto::ResponseType::Samples);
    }
    accepted
        .iter()
        .find_map(|&t| proto::ResponseType::try_from(t).ok())
        .ok_or_else(|| {
            ReadFailure::bad_request(format!(
                "server does not support any of the requested response types: {accepted:?}; \
                 supported: SAMPLES (0), STREAMED_XOR_CHUNKS (1)"
            ))
        })
}

fn select_request(query: &proto::Query) -> Result<SelectRequest, ReadFailure> {
    let matchers = query
        .matchers
        .iter()
        .map(to_matcher)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SelectRequest {
        matchers,
        mint: query.start_timestamp_ms,
        maxt: query.end_timestamp_ms,
        max_samples: SAMPLE_LIMIT,
    })
}

fn to_matcher(m: &proto::LabelMatcher) -> Result<Matcher, ReadFailure> {
    let op = match proto::MatcherType::try_from(m.r#type) {
        Ok(proto::MatcherType::Eq) => MatchOp::Equal,
        Ok(proto::MatcherType::Neq) => MatchOp::NotEqual,
        Ok(proto::MatcherType::Re) => MatchOp::RegexMatch,
        Ok(proto::MatcherType::Nre) => MatchOp::RegexNoMatch,
        Err(_) => {
            return Err(ReadFailure::bad_request(format!(
                "invalid matcher type {} for label {:?}",
                m.r#type, m.name
            )))
        }
    };
    Matcher::new(op, m.name.clone(), m.value.clone())
        .map_err(|e| ReadFailure::bad_request(format!("invalid regex in matcher {}: {e}", m.name)))
}

/// One series of an answer: its float samples and its native histogram samples.
struct ReadSeries {
    labels: Labels,
    floats: Option<Series>,
    histograms: Option<HistogramSeries>,
}

/// Both kinds of samples of the selected series, joined by labels, in label order.
async fn run_select(
    storage: &dyn Storage,
    select: SelectRequest,
) -> Result<Vec<ReadSeries>, ReadFailure> {
    let (floats, histograms) = tokio::join!(
        storage.select(select.clone()),
        storage.select_histograms(select)
    );
    let (floats, histograms) = (
        floats.map_err(read_failure)?,
        histograms.map_err(read_failure)?,
    );
    let mut joined: std::collections::BTreeMap<Labels, ReadSeries> = Default::default();
    for s in floats {
        joined.insert(
            s.labels.clone(),
            ReadSeries {
                labels: s.labels.clone(),
                floats: Some(s),
                histograms: None,
            },
        );
    }
    for h in histograms {
        let labels = h.labels.clone();
        joined
            .entry(labels.clone())
            .or_insert_with(|| ReadSeries {
                labels,
                floats: None,
                histograms: None,
            })
            .histograms = Some(h);
    }
    Ok(joined.into_values().collect())
}

fn read_failure(e: SelectError) -> ReadFailure {
    match e {
        SelectError::TooManySamples => {
            ReadFailure::bad_request(format!("exceeded sample limit ({SAMPLE_LIMIT})"))
        }
        SelectError::Storage(e) => {
            let e = ApiError::from(e);
            ReadFailure {
                status: e.status,
                message: e.message,
            }
        }
    }
}

fn samples_response(results: Vec<Vec<ReadSeries>>) -> Response {
    let to_proto = |s: &ReadSeries| {
        let mut ts = proto::TimeSeries {
            labels: proto::labels_to_proto(&s.labels),
            ..Default::default()
        };
        if let Some(floats) = &s.floats {
            ts.samples = proto::series_to_proto(floats).samples;
        }
        if let Some(h) = &s.histograms {
            ts.histograms = h
                .samples
                .iter()
                .map(proto::Histogram::from_sample)
                .collect();
        }
        ts
    };
    let response = proto::ReadResponse {
        results: results
            .into_iter()
            .map(|series| proto::QueryResult {
                timeseries: series.iter().map(to_proto).collect(),
            })
            .collect(),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-protobuf"),
            (header::CONTENT_ENCODING, "snappy"),
        ],
        proto::encode_snappy(&response),
    )
        .into_response()
}

fn streamed_response(results: &[Vec<ReadSeries>]) -> Response {
    let mut body = Vec::new();
    for (query_index, series) in results.iter().enumerate() {
        for s in series {
            write_series_frames(&mut body, query_index as i64, s);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, STREAMED_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

/// A series' chunks of both kinds, by start time (a series that switches between floats
/// and histograms has its chunks of each kind at different times).
fn series_chunks(series: &ReadSeries) -> Vec<proto::Chunk> {
    let mut chunks: Vec<proto::Chunk> = Vec::new();
    if let Some(floats) = &series.floats {
        chunks.extend(
            encode_xor_chunks(&floats.samples, SAMPLES_PER_CHUNK).map(|chunk| proto::Chunk {
                min_time_ms: chunk.min_time(),
                max_time_ms: chunk.max_time(),
                r#type: proto::ChunkEncoding::Xor as i32,
                data: chunk.into_bytes(),
            }),
        );
    }
    if let Some(histograms) = &series.histograms {
        // Validated at ingest, so every sample encodes; none is left out.
        let (sealed, _) = encode_histogram_chunks(histograms.samples.iter().cloned());
        chunks.extend(sealed.into_iter().map(|c| proto::Chunk {
            min_time_ms: c.min_t,
            max_time_ms: c.max_t,
            r#type: i32::from(c.encoding),
            data: c.bytes.into_vec(),
        }));
    }
    chunks.sort_by_key(|c| c.min_time_ms);
    chunks
}

/// Writes one series as chunks, starting a new frame whenever the current one has
/// passed `MAX_BYTES_IN_FRAME` (a frame may overshoot by one chunk, as in Prometheus).
fn write_series_frames(out: &mut Vec<u8>, query_index: i64, series: &ReadSeries) {
    let labels = proto::labels_to_proto(&series.labels);
    let label_bytes: usize = labels.iter().map(Message::encoded_len).sum();
    let budget = MAX_BYTES_IN_FRAME.saturating_sub(label_bytes);
    let mut chunks = Vec::new();
    let mut frame_bytes = 0;
    let mut windows = series_chunks(series).into_iter().peekable();
    while let Some(chunk) = windows.next() {
        frame_bytes += chunk.encoded_len();
        chunks.push(chunk);
        if frame_bytes < budget && windows.peek().is_some() {
            continue;
        }
        let frame = proto::ChunkedReadResponse {
            chunked_series: vec![proto::ChunkedSeries {
                labels: labels.clone(),
                chunks: std::mem::take(&mut chunks),
            }],
            query_index,
        };
        write_frame(out, &frame.encode_to_vec());
        frame_bytes = 0;
    }
}

/// One frame: uvarint length, big-endian CRC32 (Castagnoli) of the message, message.
fn write_frame(out: &mut Vec<u8>, message: &[u8]) {
    prost::encoding::encode_varint(message.len() as u64, out);
    out.extend_from_slice(&crc32c::crc32c(message).to_be_bytes());
    out.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;
    use crate::model::Sample;
    use crate::tsdb::chunk::decode_xor;

    fn read_frames(mut body: &[u8]) -> Vec<proto::ChunkedReadResponse> {
        let mut frames = Vec::new();
        while !body.is_empty() {
            let len = prost::encoding::decode_varint(&mut body).unwrap() as usize;
            let (crc, rest) = body.split_at(4);
            let (message, rest) = rest.split_at(len);
            assert_eq!(crc, crc32c::crc32c(message).to_be_bytes());
            frames.push(proto::ChunkedReadResponse::decode(message).unwrap());
            body = rest;
        }
        frames
    }

    #[test]
    fn negotiation_takes_first_supported() {
        assert_eq!(negotiate(&[]).ok(), Some(proto::ResponseType::Samples));
        assert_eq!(
            negotiate(&[7, 1, 0]).ok(),
            Some(proto::ResponseType::StreamedXorChunks)
        );
        assert!(negotiate(&[7]).is_err());
    }

    #[test]
    fn long_series_split_into_chunks_and_frames() {
        let samples: Vec<Sample> = (0..250_000)
            .map(|i| Sample::new(i * 15_000, (i as f64 * 1.37).sin()))
            .collect();
        let labels = Labels::from_pairs([("__name__", "x")]);
        let series = ReadSeries {
            labels: labels.clone(),
            floats: Some(Series {
                labels,
                samples: samples.clone(),
            }),
            histograms: None,
        };
        let mut body = Vec::new();
        write_series_frames(&mut body, 3, &series);
        let frames = read_frames(&body);
        assert!(frames.len() > 1, "250k noisy floats must not fit one frame");
        let mut decoded = Vec::new();
        for frame in &frames {
            assert_eq!(frame.query_index, 3);
            assert_eq!(frame.chunked_series.len(), 1);
            for chunk in &frame.chunked_series[0].chunks {
                let got: Vec<Sample> = decode_xor(&chunk.data).collect::<Result<_, _>>().unwrap();
                assert!(got.len() <= SAMPLES_PER_CHUNK);
                assert_eq!(chunk.min_time_ms, got[0].t);
                assert_eq!(chunk.max_time_ms, got[got.len() - 1].t);
                decoded.extend(got);
            }
        }
        assert_eq!(decoded, samples);
    }

    #[test]
    fn a_series_switching_to_histograms_streams_both_chunk_kinds_in_time_order() {
        use crate::model::histogram::{FloatHistogram, HistogramSample, HistogramValue};
        use crate::tsdb::histogram_chunk::decode_histogram_chunk;
        let labels = Labels::from_pairs([("__name__", "switch")]);
        let floats: Vec<Sample> = (0..130).map(|i| Sample::new(i, i as f64)).collect();
        let histogram = |t: i64| HistogramSample {
            t,
            h: HistogramValue::Float(FloatHistogram {
                count: t as f64,
                sum: 2.0 * t as f64,
                zero_count: t as f64,
                ..FloatHistogram::default()
            }),
        };
        let histograms: Vec<HistogramSample> = (200..330).map(histogram).collect();
        let series = ReadSeries {
            labels: labels.clone(),
            floats: Some(Series {
                labels: labels.clone(),
                samples: floats.clone(),
            }),
            histograms: Some(HistogramSeries {
                labels,
                samples: histograms.clone(),
            }),
        };
        let mut body = Vec::new();
        write_series_frames(&mut body, 0, &series);
        let chunks: Vec<proto::Chunk> = read_frames(&body)
            .into_iter()
            .flat_map(|f| f.chunked_series.into_iter().flat_map(|s| s.chunks))
            .collect();
        let kinds: Vec<i32> = chunks.iter().map(|c| c.r#type).collect();
        let (xor, float_histogram) = (
            proto::ChunkEncoding::Xor as i32,
            proto::ChunkEncoding::FloatHistogram as i32,
        );
        assert_eq!(kinds, vec![xor, xor, float_histogram, float_histogram]);
        let mut got_floats = Vec::new();
        let mut got_histograms = Vec::new();
        for c in &chunks[..2] {
            got_floats.extend(decode_xor(&c.data).map(Result::unwrap));
        }
        for c in &chunks[2..] {
            for decoded in decode_histogram_chunk::<FloatHistogram>(&c.data) {
                let (t, h) = decoded.unwrap();
                got_histograms.push((t, h.count));
            }
        }
        assert_eq!(got_floats, floats);
        let want: Vec<(i64, f64)> = (200..330).map(|t| (t, t as f64)).collect();
        assert_eq!(got_histograms, want);
    }

    #[test]
    fn bad_regex_is_bad_request() {
        let m = proto::LabelMatcher {
            r#type: proto::MatcherType::Re as i32,
            name: "job".into(),
            value: "(".into(),
        };
        assert_eq!(
            to_matcher(&m).err().map(|e| e.status),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}

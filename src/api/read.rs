//! `POST /api/v1/read`: Prometheus remote read, SAMPLES and STREAMED_XOR_CHUNKS.
//!
//! Owns: decoding a snappy `prometheus.ReadRequest`, response-type negotiation (the
//! first type in the client's list that we support, as Prometheus), and both response
//! encodings: a snappy `ReadResponse`, or length-prefixed, CRC32C-checked
//! `ChunkedReadResponse` frames holding XOR chunks of at most 120 samples, one series
//! per frame and a series split across frames once a frame passes 1 MiB.
//! Calls `ingest` (bounded snappy), `storage` (select) and `tsdb::chunk` (XOR encoding).
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
use crate::model::{MatchOp, Matcher, Series};
use crate::proto;
use crate::storage::{SelectError, SelectRequest, Storage};
use crate::tsdb::chunk::encode_xor_chunks;

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

async fn run_select(
    storage: &dyn Storage,
    select: SelectRequest,
) -> Result<Vec<Series>, ReadFailure> {
    storage.select(select).await.map_err(|e| match e {
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
    })
}

fn samples_response(results: Vec<Vec<Series>>) -> Response {
    let response = proto::ReadResponse {
        results: results
            .into_iter()
            .map(|series| proto::QueryResult {
                timeseries: series.iter().map(proto::series_to_proto).collect(),
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

fn streamed_response(results: &[Vec<Series>]) -> Response {
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

/// Writes one series as XOR chunks, starting a new frame whenever the current one has
/// passed `MAX_BYTES_IN_FRAME` (a frame may overshoot by one chunk, as in Prometheus).
fn write_series_frames(out: &mut Vec<u8>, query_index: i64, series: &Series) {
    let labels = proto::labels_to_proto(&series.labels);
    let label_bytes: usize = labels.iter().map(Message::encoded_len).sum();
    let budget = MAX_BYTES_IN_FRAME.saturating_sub(label_bytes);
    let mut chunks = Vec::new();
    let mut frame_bytes = 0;
    let mut windows = encode_xor_chunks(&series.samples, SAMPLES_PER_CHUNK).peekable();
    while let Some(chunk) = windows.next() {
        let chunk = proto::Chunk {
            min_time_ms: chunk.min_time(),
            max_time_ms: chunk.max_time(),
            r#type: proto::ChunkEncoding::Xor as i32,
            data: chunk.into_bytes(),
        };
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
        let series = Series {
            labels: Labels::from_pairs([("__name__", "x")]),
            samples: samples.clone(),
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

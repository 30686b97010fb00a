//! Native histogram samples of one head series (ADR 0030, amended for the head).
//!
//! Owns: a series' histogram chunks (Prometheus's encodings 2 and 3, at most
//! `SAMPLES_PER_CHUNK` samples each, the last one open), its accepted out-of-order
//! histograms (a sorted list, as the float path keeps its own), and the histograms of
//! requests whose WAL record is not yet durable (staged). It stores what `head` decided
//! to store; the append rules across floats and histograms live in `head`. Calls
//! `histogram_chunk` and `model`.

use super::head::SAMPLES_PER_CHUNK;
use super::histogram_chunk::{Appended, ChunkHistogram, HistogramChunk};
use crate::model::histogram::{HistogramError, HistogramSample, HistogramValue};

/// One chunk of either kind.
#[derive(Clone, Debug)]
enum Chunk {
    Int(HistogramChunk<crate::model::histogram::Histogram>),
    Float(HistogramChunk<crate::model::histogram::FloatHistogram>),
}

/// Appends `h` to `c`, or returns the chunk that starts with it: cut by the chunk
/// (reset, layout change) or because `c` is full, continuing `c` as Prometheus's head
/// does.
fn append_to<H: ChunkHistogram>(
    c: &mut HistogramChunk<H>,
    t: i64,
    h: &H,
) -> Result<Option<HistogramChunk<H>>, HistogramError> {
    if c.num_samples() >= SAMPLES_PER_CHUNK {
        return HistogramChunk::continuing(c, t, h).map(Some);
    }
    Ok(match c.append(t, h)? {
        Appended::InPlace | Appended::Recoded => None,
        Appended::Cut(next) => Some(next),
    })
}

/// A new chunk holding only `h`.
fn first<H: ChunkHistogram>(t: i64, h: &H) -> Result<HistogramChunk<H>, HistogramError> {
    let mut c = HistogramChunk::new();
    c.append(t, h)?;
    Ok(c)
}

impl Chunk {
    fn starting(t: i64, h: &HistogramValue) -> Result<Chunk, HistogramError> {
        Ok(match h {
            HistogramValue::Int(h) => Chunk::Int(first(t, h)?),
            HistogramValue::Float(h) => Chunk::Float(first(t, h)?),
        })
    }

    fn min_time(&self) -> i64 {
        match self {
            Chunk::Int(c) => c.min_time(),
            Chunk::Float(c) => c.min_time(),
        }
    }

    fn max_time(&self) -> i64 {
        match self {
            Chunk::Int(c) => c.max_time(),
            Chunk::Float(c) => c.max_time(),
        }
    }

    fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.max_time() >= mint && self.min_time() <= maxt
    }

    fn samples(&self) -> Vec<HistogramSample> {
        match self {
            Chunk::Int(c) => c
                .iter()
                .map(|(t, h)| HistogramSample {
                    t,
                    h: HistogramValue::Int(h),
                })
                .collect(),
            Chunk::Float(c) => c
                .iter()
                .map(|(t, h)| HistogramSample {
                    t,
                    h: HistogramValue::Float(h),
                })
                .collect(),
        }
    }
}

/// A histogram staged by a request (see `head::SeriesData::stage`).
#[derive(Clone, Debug)]
struct Staged {
    sample: HistogramSample,
    ticket: u64,
}

/// The histogram samples of one series.
#[derive(Debug, Default)]
pub struct HistData {
    /// Time-ordered and disjoint; the last one is open.
    chunks: Vec<Chunk>,
    /// Samples kept outside the chunks, sorted by time, disjoint from the chunks'
    /// times: accepted out-of-order ones (older than the chunks' end), and any a chunk
    /// could not encode.
    ooo: Vec<HistogramSample>,
    staged: Vec<Staged>,
}

impl HistData {
    /// Whether no histogram is stored (staged ones aside).
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.ooo.is_empty()
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The end of the chunks: a newer sample goes into them, an older one is
    /// out of order.
    pub fn chunk_max_time(&self) -> Option<i64> {
        self.chunks.last().map(Chunk::max_time)
    }

    /// Newest stored histogram time.
    pub fn max_time(&self) -> Option<i64> {
        let ooo = self.ooo.last().map(|s| s.t);
        self.chunk_max_time().max(ooo)
    }

    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The histogram stored at `t`, if any.
    pub fn at(&self, t: i64) -> Option<HistogramValue> {
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
            return Some(self.ooo[i].h.clone());
        }
        let c = self
            .chunks
            .iter()
            .find(|c| c.min_time() <= t && t <= c.max_time())?;
        c.samples().into_iter().find(|s| s.t == t).map(|s| s.h)
    }

    /// Histograms other requests (or this one) staged at `t`, with their tickets.
    pub fn staged_at(&self, t: i64) -> impl Iterator<Item = (&HistogramValue, u64)> {
        self.staged
            .iter()
            .filter(move |s| s.sample.t == t)
            .map(|s| (&s.sample.h, s.ticket))
    }

    /// Whether a histogram is staged at `t`.
    pub fn is_staged_at(&self, t: i64) -> bool {
        self.staged_at(t).next().is_some()
    }

    pub fn stage(&mut self, sample: HistogramSample, ticket: u64) {
        self.staged.push(Staged { sample, ticket });
    }

    /// Takes the histograms staged under `ticket`, in staging order.
    pub fn take_staged(&mut self, ticket: u64) -> Vec<HistogramSample> {
        let (mine, others) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|s| s.ticket == ticket);
        self.staged = others;
        mine.into_iter().map(|s: Staged| s.sample).collect()
    }

    /// Stores a sample newer than the chunks' end. `fresh_chunk` starts a new chunk
    /// whatever the open one would say (the series held floats since: Prometheus cuts
    /// a chunk of the other encoding at every type switch). Returns whether a chunk
    /// was started.
    pub fn append_in_order(
        &mut self,
        t: i64,
        h: &HistogramValue,
        fresh_chunk: bool,
    ) -> Result<bool, HistogramError> {
        let next = match (self.chunks.last_mut(), h) {
            (Some(Chunk::Int(c)), HistogramValue::Int(h)) if !fresh_chunk => {
                append_to(c, t, h)?.map(Chunk::Int)
            }
            (Some(Chunk::Float(c)), HistogramValue::Float(h)) if !fresh_chunk => {
                append_to(c, t, h)?.map(Chunk::Float)
            }
            // The first histogram, a switch of kind, or after floats.
            _ => Some(Chunk::starting(t, h)?),
        };
        let started = next.is_some();
        self.chunks.extend(next);
        Ok(started)
    }

    /// Stores a sample outside the chunks (no sample is stored at its time).
    pub fn insert_unchunked(&mut self, sample: HistogramSample) {
        let at = self.ooo.partition_point(|s| s.t < sample.t);
        self.ooo.insert(at, sample);
    }

    /// Samples in `[mint, maxt]` in time order, appended to `out`.
    pub fn samples_in(&self, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) {
        let start = out.len();
        for c in self.chunks.iter().filter(|c| c.overlaps(mint, maxt)) {
            out.extend(
                c.samples()
                    .into_iter()
                    .filter(|s| s.t >= mint && s.t <= maxt),
            );
        }
        let ooo = self.ooo.iter().filter(|s| s.t >= mint && s.t <= maxt);
        let before = out.len();
        out.extend(ooo.cloned());
        if out.len() > before {
            // Stable and disjoint in time: one merge of two sorted runs.
            out[start..].sort_by_key(|s| s.t);
        }
    }

    /// Removes samples in `[mint, maxt]`; returns how many. The rest is re-encoded in
    /// order (deletion is rare; the float path does the same).
    pub fn delete_range(&mut self, mint: i64, maxt: i64) -> usize {
        let mut all = Vec::new();
        self.samples_in(i64::MIN, i64::MAX, &mut all);
        let before = all.len();
        all.retain(|s| s.t < mint || s.t > maxt);
        let removed = before - all.len();
        if removed > 0 {
            self.chunks.clear();
            self.ooo.clear();
            for s in all {
                if self.append_in_order(s.t, &s.h, false).is_err() {
                    self.insert_unchunked(s);
                }
            }
        }
        removed
    }
}

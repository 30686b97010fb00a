//! Native histogram samples of one head series (ADR 0030, amended for the head).
//!
//! Owns: a series' histogram chunks (Prometheus's encodings 2 and 3, at most
//! `SAMPLES_PER_CHUNK` samples each, the last one open), its accepted out-of-order
//! histograms (a sorted list, as the float path keeps its own), and the histograms of
//! requests whose WAL record is not yet durable (staged). It stores what `head` decided
//! to store; the append rules across floats and histograms live in `head`. Also owns
//! the head side of a cut (the chunks handed to a block, still read until the block is
//! visible) and encoding time-ordered histograms into sealed chunks for blocks
//! (`encode_sealed`), with the head's appender so a block's chunks are cut as the
//! head's are. Calls `histogram_chunk` and `model`.

use super::head::SAMPLES_PER_CHUNK;
use super::histogram_chunk::{Appended, ChunkHistogram, HistogramChunk};
use crate::model::histogram::{
    FloatHistogram, Histogram, HistogramError, HistogramSample, HistogramValue,
};

/// One chunk of either kind.
#[derive(Clone, Debug)]
enum Chunk {
    Int(HistogramChunk<Histogram>),
    Float(HistogramChunk<FloatHistogram>),
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

    fn sealed(&self) -> SealedHistogramChunk {
        let (encoding, bytes, num_samples) = match self {
            Chunk::Int(c) => (Histogram::ENCODING, c.bytes(), c.num_samples()),
            Chunk::Float(c) => (FloatHistogram::ENCODING, c.bytes(), c.num_samples()),
        };
        SealedHistogramChunk {
            min_t: self.min_time(),
            max_t: self.max_time(),
            encoding,
            num_samples,
            bytes: bytes.into(),
        }
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

/// A complete histogram chunk as a block stores it: Prometheus's bytes and encoding
/// (2 integer, 3 float histograms) with its time range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHistogramChunk {
    pub min_t: i64,
    pub max_t: i64,
    /// Prometheus's chunk encoding: 2 (`EncHistogram`) or 3 (`EncFloatHistogram`).
    pub encoding: u8,
    pub num_samples: usize,
    pub bytes: Box<[u8]>,
}

/// Encodes time-ordered samples with distinct times into chunks as the head's appender
/// cuts them (at most `SAMPLES_PER_CHUNK` each, a new chunk at a reset, a layout the
/// chunk cannot widen to, a change of kind, ...). Returns the chunks and the samples no
/// chunk could encode (none for validated histograms).
pub fn encode_sealed(
    samples: impl IntoIterator<Item = HistogramSample>,
) -> (Vec<SealedHistogramChunk>, Vec<HistogramSample>) {
    let mut data = HistData::default();
    let unencodable = data.encode_in_order(samples);
    (data.chunks.iter().map(Chunk::sealed).collect(), unencodable)
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
    /// Chunks handed to a head cut whose block is not yet visible: still read, and
    /// still held against a different histogram at one of their times.
    cutting: Vec<Chunk>,
}

impl HistData {
    /// Whether no histogram is stored (staged ones aside).
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.ooo.is_empty()
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Whether chunks are out for a head cut.
    pub fn is_cutting(&self) -> bool {
        !self.cutting.is_empty()
    }

    /// Oldest stored histogram time (chunks being cut aside).
    pub fn min_time(&self) -> Option<i64> {
        let chunks = self.chunks.first().map(Chunk::min_time);
        let ooo = self.ooo.first().map(|s| s.t);
        match (chunks, ooo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// Whether a stored histogram (chunks being cut included) may lie in
    /// `[mint, maxt]`: by chunk bounds, as the float side answers series lookups.
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.cutting
            .iter()
            .chain(&self.chunks)
            .any(|c| c.overlaps(mint, maxt))
            || self.ooo.iter().any(|s| s.t >= mint && s.t <= maxt)
    }

    /// The histogram stored at `t`, if any.
    pub fn at(&self, t: i64) -> Option<HistogramValue> {
        if let Ok(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
            return Some(self.ooo[i].h.clone());
        }
        let c = self
            .chunks
            .iter()
            .chain(&self.cutting)
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

    /// Samples in `[mint, maxt]` in time order (those being cut included), appended to
    /// `out`.
    pub fn samples_in(&self, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) {
        self.samples_of(true, mint, maxt, out);
    }

    /// Samples in `[mint, maxt]` in time order, with or without the chunks being cut
    /// (disjoint in time from the rest: `at` holds a time against them).
    fn samples_of(&self, with_cutting: bool, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) {
        let start = out.len();
        let cutting = if with_cutting { &self.cutting[..] } else { &[] };
        let mut sort = !cutting.is_empty();
        for c in cutting
            .iter()
            .chain(&self.chunks)
            .filter(|c| c.overlaps(mint, maxt))
        {
            out.extend(
                c.samples()
                    .into_iter()
                    .filter(|s| s.t >= mint && s.t <= maxt),
            );
        }
        let ooo = self.ooo.iter().filter(|s| s.t >= mint && s.t <= maxt);
        let before = out.len();
        out.extend(ooo.cloned());
        sort |= out.len() > before;
        if sort {
            // Stable and disjoint in time: one merge of two sorted runs.
            out[start..].sort_by_key(|s| s.t);
        }
    }

    /// Removes samples in `[mint, maxt]`; returns how many. The rest is re-encoded in
    /// order (deletion is rare; the float path does the same).
    pub fn delete_range(&mut self, mint: i64, maxt: i64) -> usize {
        let mut all = Vec::new();
        self.samples_of(false, i64::MIN, i64::MAX, &mut all);
        let before = all.len();
        all.retain(|s| s.t < mint || s.t > maxt);
        let removed = before - all.len();
        if removed > 0 {
            self.rebuild(all);
        }
        removed
    }

    /// Replaces the chunks and out-of-order samples by time-ordered `samples`.
    fn rebuild(&mut self, samples: Vec<HistogramSample>) {
        self.chunks.clear();
        self.ooo.clear();
        for s in self.encode_in_order(samples) {
            self.insert_unchunked(s);
        }
    }

    /// Appends time-ordered samples, newer than the chunks' end, to the chunks;
    /// returns those no chunk could encode.
    fn encode_in_order(
        &mut self,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) -> Vec<HistogramSample> {
        let mut unencodable = Vec::new();
        for s in samples {
            if self.append_in_order(s.t, &s.h, false).is_err() {
                unencodable.push(s);
            }
        }
        unencodable
    }

    /// Moves every sample older than `boundary` into `cutting` and returns them as
    /// sealed chunks for the block; reads still see them until `finish_cut`. Whole
    /// chunks move unchanged when the boundary falls between chunks; otherwise both
    /// sides are re-encoded (a sample no chunk encodes stays in the head).
    pub fn start_cut(&mut self, boundary: i64) -> Vec<SealedHistogramChunk> {
        let whole = self
            .chunks
            .iter()
            .take_while(|c| c.max_time() < boundary)
            .count();
        let between_chunks = self
            .chunks
            .get(whole)
            .is_none_or(|c| c.min_time() >= boundary)
            && self.ooo.first().is_none_or(|s| s.t >= boundary);
        let moved: Vec<Chunk> = if between_chunks {
            self.chunks.drain(..whole).collect()
        } else {
            let mut all = Vec::new();
            self.samples_of(false, i64::MIN, i64::MAX, &mut all);
            let newer = all.split_off(all.partition_point(|s| s.t < boundary));
            self.rebuild(newer);
            let mut old = HistData::default();
            for s in old.encode_in_order(all) {
                self.insert_unchunked(s);
            }
            old.chunks
        };
        let sealed = moved.iter().map(Chunk::sealed).collect();
        self.cutting.extend(moved);
        sealed
    }

    /// Drops the chunks handed out by `start_cut` once their block is queryable.
    pub fn finish_cut(&mut self) {
        self.cutting.clear();
    }

    /// Takes the chunks handed out by `start_cut` back (their block was not written).
    pub fn abort_cut(&mut self) {
        if self.cutting.is_empty() {
            return;
        }
        let mut all = Vec::new();
        self.samples_of(true, i64::MIN, i64::MAX, &mut all);
        self.cutting.clear();
        self.rebuild(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::histogram::Span;

    fn sample(t: i64, n: i64) -> HistogramSample {
        let h = Histogram {
            count: n as u64,
            sum: n as f64,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }]
            .into(),
            positive_buckets: vec![n],
            ..Histogram::default()
        };
        HistogramSample {
            t,
            h: if t % 7 == 0 {
                HistogramValue::Float(h.to_float())
            } else {
                HistogramValue::Int(h)
            },
        }
    }

    fn all(d: &HistData) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        d.samples_in(i64::MIN, i64::MAX, &mut out);
        out.iter()
            .map(|s| (s.t, matches!(s.h, HistogramValue::Int(_))))
            .collect()
    }

    /// Both ways of cutting (between chunks, and through a chunk with out-of-order
    /// samples) hand out exactly the older samples, keep them readable and held
    /// against other values until finished, and give them back when aborted.
    #[test]
    fn cuts_hand_out_older_samples_and_abort_restores_them() {
        let mut d = HistData::default();
        for t in 1..=300 {
            d.append_in_order(t, &sample(t, t).h, false).unwrap();
        }
        // Between chunks (whole chunks move), then through a chunk with an
        // out-of-order sample (both sides re-encoded).
        let between = d.chunks[1].min_time();
        for (boundary, ooo) in [(between, false), (150, true)] {
            if ooo {
                d.insert_unchunked(sample(0, 5));
            }
            let before = all(&d);
            let mut old = Vec::new();
            d.samples_in(i64::MIN, boundary - 1, &mut old);
            let sealed = d.start_cut(boundary);
            assert_eq!(
                sealed.iter().map(|c| c.num_samples).sum::<usize>(),
                old.len(),
                "boundary {boundary}"
            );
            assert!(sealed.windows(2).all(|w| w[0].max_t < w[1].min_t));
            assert!(sealed
                .iter()
                .all(|c| c.max_t < boundary && matches!(c.encoding, 2 | 3)));
            // As the head's appender would have cut them.
            assert_eq!(encode_sealed(old.iter().cloned()), (sealed.clone(), vec![]));
            assert_eq!(all(&d), before, "still read while cutting");
            assert!(d.at(boundary - 1).is_some(), "held against other values");
            assert!(d.is_cutting());
            d.abort_cut();
            assert!(!d.is_cutting());
            assert_eq!(all(&d), before, "aborted: all back");
        }
        let before = all(&d);
        d.start_cut(150);
        d.finish_cut();
        assert_eq!(all(&d), before[150..].to_vec());
        assert_eq!(d.min_time(), Some(150));
    }
}

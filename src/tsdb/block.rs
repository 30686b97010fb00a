//! Immutable on-disk blocks: the series, chunks and index of one time range.
//!
//! Owns: the block directory format, writing a block (temporary directory, fsync,
//! rename) and reading it through memory maps. Calls `chunk` (version-1 blocks and the
//! head's chunks), `packed` (version-2 columns), `histogram_chunk` (decoding native
//! histogram chunks), `head_hist` (their sealed type and encoder), `index`,
//! `tombstones`, `head` (for the sealed-chunk type) and `model`.
//!
//! A block is a directory named by a ULID holding:
//! - `meta.json`: `{"ulid", "minTime" (inclusive), "maxTime" (exclusive), "stats":
//!   {"numSamples", "numSeries", "numChunks"}, "compaction": {"level", "sources"},
//!   "version"}` (2 for blocks written now, 1 for blocks of the XOR-only format);
//!   `stats.numHistogramSamples` (native histogram samples, also counted in
//!   `numSamples`) only when not 0.
//! - `chunks`: magic `TMBC`, a version byte, then records `uvarint length, payload, u32
//!   LE CRC32C of the payload`. A chunk is referenced by the byte offset of its record.
//!   - version 1 (blocks written before ADR 0026, still read): each payload is an XOR
//!     chunk (Prometheus encoding) of at most 120 samples.
//!   - version 2 (written now): each payload starts with a kind byte: 1 = XOR chunk
//!     (Prometheus bytes follow; read, not written), 2 = timestamp column (`packed`),
//!     3 = packed chunk: `uvarint offset of its timestamp record, value column`,
//!     4 = native histogram chunk: `encoding byte (2 integer, 3 float histograms),
//!     Prometheus's chunk bytes` (ADR 0030), at most 120 samples.
//!     A chunk holds at most `PACKED_SAMPLES_PER_CHUNK` samples; identical timestamp
//!     columns (every series of one scrape target) are written once per block, before
//!     the first chunk that refers to them. A packed chunk may only refer to a kind-2
//!     record.
//! - `index`: magic `TMBI`, version byte 1 (no histograms) or 2 (written only when a
//!   series has histogram chunks), then
//!   - symbols: uvarint count, then sorted strings (uvarint length, bytes);
//!   - series, sorted by labels, each `uvarint length, payload, u32 LE CRC32C` with
//!     payload `uvarint label count, (name symbol, value symbol)*, uvarint chunk count,
//!     (varint minTime, uvarint maxTime - minTime, uvarint chunk offset)*` (float
//!     chunks; the count may be 0), in version 2 followed by the histogram chunks the
//!     same way (`uvarint count, (minTime, span, offset)*`); a series is referenced by
//!     the byte offset of its entry;
//!   - postings lists, each `uvarint length, payload, u32 LE CRC32C` with payload
//!     `uvarint count, uvarint delta-encoded series references*`;
//!   - postings table: uvarint count, then `(name symbol, value symbol, list offset)*`
//!     sorted by name then value;
//!   - table of contents (last 44 bytes): u64 LE offsets of symbols, series, postings
//!     table, the all-series postings list, the series count, then u32 LE CRC32C of
//!     those 40 bytes.
//! - `tombstones` (optional): see `tombstones`.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use memmap2::Mmap;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::chunk::decode_xor;
use super::head::{encode_chunks, SealedChunk};
use super::head_hist::{encode_sealed, SealedHistogramChunk};
use super::histogram_chunk::{decode_histogram_chunk, ChunkHistogram};
use super::index::{union, PostingsSource, SeriesRef};
use super::packed::{decode_times, decode_values, encode_times, encode_values};
use super::tombstones::Tombstones;
use super::wal::{fsync_dir, put_str, put_uvarint, put_varint};
use crate::model::histogram::{FloatHistogram, Histogram, HistogramSample, HistogramValue};
use crate::model::{Label, Labels, Sample};
use crate::storage::StorageError;

const CHUNKS_MAGIC: &[u8; 4] = b"TMBC";
const INDEX_MAGIC: &[u8; 4] = b"TMBI";
/// Index format version of blocks without histograms (unchanged by the packed chunks).
const VERSION: u8 = 1;
/// Index format version of blocks with histogram chunks: series entries list them
/// after their float chunks. Older binaries refuse it rather than drop histograms.
const VERSION_HISTOGRAMS: u8 = 2;
/// Chunks file of XOR records only: blocks written before ADR 0026.
const CHUNKS_VERSION_XOR: u8 = 1;
/// Chunks file of kind-tagged records (packed columns).
const CHUNKS_VERSION_PACKED: u8 = 2;
const RECORD_XOR: u8 = 1;
const RECORD_TIMES: u8 = 2;
const RECORD_PACKED: u8 = 3;
const RECORD_HISTOGRAM: u8 = 4;
/// Samples per packed chunk: 2 h of 15 s scrapes, so a head cut gives one chunk per
/// series and compaction's larger blocks a few; measured in bench/RESULTS.md.
pub const PACKED_SAMPLES_PER_CHUNK: usize = 480;
const TOC_LEN: usize = 44;
pub const META_FILE: &str = "meta.json";
pub const CHUNKS_FILE: &str = "chunks";
pub const INDEX_FILE: &str = "index";

/// (min time, max time, offset in the chunks file) of one chunk of a series.
pub type ChunkMeta = (i64, i64, u64);

/// How a block writer stores samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkFormat {
    /// Chunks file version 1: Prometheus XOR chunks. Kept so tests can write a data
    /// directory exactly as the previous format did.
    Xor,
    /// Chunks file version 2: packed timestamp and value columns (the default).
    Packed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    /// Float and histogram samples.
    pub num_samples: u64,
    /// Native histogram samples (ADR 0030); absent from meta.json when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_histogram_samples: u64,
    pub num_series: u64,
    pub num_chunks: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub level: u32,
    pub sources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    pub ulid: String,
    pub min_time: i64,
    /// Exclusive: one past the newest sample.
    pub max_time: i64,
    pub stats: BlockStats,
    pub compaction: Compaction,
    pub version: u32,
}

/// A new block id: a ULID (48-bit milliseconds, 80 random bits, Crockford base32).
pub fn new_block_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let random: u128 = rng.random::<u128>() & ((1u128 << 80) - 1);
    let value = (ms & ((1u128 << 48) - 1)) << 80 | random;
    (0..26)
        .map(|i| ALPHABET[((value >> (125 - 5 * i)) & 31) as usize] as char)
        .collect()
}

// ---- writing ----

/// A series' labels as a block writer takes them: (name, value) pairs sorted by name,
/// names unique. The head passes its interned pairs and compaction a `Labels`, so
/// neither builds a label set per series only to write it.
pub trait SeriesLabels {
    fn pairs(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)>;
}

impl SeriesLabels for Labels {
    fn pairs(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.iter().map(|l| (l.name.as_arc(), l.value.as_arc()))
    }
}

impl SeriesLabels for &Labels {
    fn pairs(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.iter().map(|l| (l.name.as_arc(), l.value.as_arc()))
    }
}

impl SeriesLabels for &[(Arc<str>, Arc<str>)] {
    fn pairs(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.iter().map(|(n, v)| (n, v))
    }
}

/// Writes one block. Series must be added in label order. A writer dropped before
/// `finish` succeeded removes its temporary directory, so a failed cut or compaction
/// leaves nothing behind on a full disk.
///
/// Until `finish` writes the index, a series costs the writer 4 bytes a label (the id
/// of its label pair), 24 bytes a chunk and 16 bytes of bounds: the label text is
/// held once per distinct pair, shared with the caller's strings.
pub struct BlockWriter {
    format: ChunkFormat,
    /// Offsets of the timestamp records written so far, by their encoded bytes.
    times_written: HashMap<Vec<u8>, u64>,
    parent: PathBuf,
    tmp: TmpDir,
    ulid: String,
    chunks: BufWriter<File>,
    chunks_len: u64,
    /// Distinct label pairs, numbered in the order they were first seen.
    pair_ids: HashMap<(Arc<str>, Arc<str>), u32>,
    /// Every series' pair ids, one after the other.
    series_pairs: Vec<u32>,
    /// Every series' chunks, one after the other.
    series_chunks: Vec<ChunkMeta>,
    /// Every series' histogram chunks, one after the other.
    series_hist_chunks: Vec<ChunkMeta>,
    /// Per series, the end of its pairs in `series_pairs`, of its chunks in
    /// `series_chunks` and of its histogram chunks in `series_hist_chunks`.
    series_ends: Vec<(usize, usize, usize)>,
    stats: BlockStats,
    min_time: i64,
    max_time: i64,
}

impl BlockWriter {
    /// Starts a block that will become `<parent>/<ulid>` on `finish`, in the current
    /// format (packed).
    pub fn new(parent: &Path) -> Result<BlockWriter, StorageError> {
        Self::with_format(parent, ChunkFormat::Packed)
    }

    /// Starts a block in the given chunk format.
    pub fn with_format(parent: &Path, format: ChunkFormat) -> Result<BlockWriter, StorageError> {
        let ulid = new_block_id();
        let tmp = TmpDir(parent.join(format!("{ulid}.tmp")));
        fs::create_dir_all(&tmp.0)?;
        let mut chunks = BufWriter::new(File::create(tmp.0.join(CHUNKS_FILE))?);
        chunks.write_all(CHUNKS_MAGIC)?;
        chunks.write_all(&[match format {
            ChunkFormat::Xor => CHUNKS_VERSION_XOR,
            ChunkFormat::Packed => CHUNKS_VERSION_PACKED,
        }])?;
        Ok(BlockWriter {
            format,
            times_written: HashMap::new(),
            parent: parent.to_path_buf(),
            tmp,
            ulid,
            chunks,
            chunks_len: 5,
            pair_ids: HashMap::new(),
            series_pairs: Vec::new(),
            series_chunks: Vec::new(),
            series_hist_chunks: Vec::new(),
            series_ends: Vec::new(),
            stats: BlockStats::default(),
            min_time: i64::MAX,
            max_time: i64::MIN,
        })
    }

    /// Adds a series with its time-ordered, non-overlapping XOR chunks (the head's).
    /// Empty series are skipped. A packed block re-encodes their samples.
    pub fn add_series(
        &mut self,
        labels: impl SeriesLabels,
        chunks: &[SealedChunk],
    ) -> Result<(), StorageError> {
        self.add(labels, Floats::Chunks(chunks), &[])
    }

    /// Adds a series with its time-ordered samples. Empty series are skipped.
    pub fn add_series_samples(
        &mut self,
        labels: impl SeriesLabels,
        samples: &[Sample],
    ) -> Result<(), StorageError> {
        self.add(labels, Floats::Samples(samples), &[])
    }

    /// Adds a series with its XOR chunks (as `add_series`) and its time-ordered,
    /// non-overlapping histogram chunks, stored as they are (a head cut).
    pub fn add_series_with_histograms(
        &mut self,
        labels: impl SeriesLabels,
        chunks: &[SealedChunk],
        histograms: &[SealedHistogramChunk],
    ) -> Result<(), StorageError> {
        self.add(labels, Floats::Chunks(chunks), histograms)
    }

    /// Adds a series with its time-ordered samples and time-ordered histogram samples
    /// (distinct times), encoding the histograms as the head does.
    pub fn add_series_samples_with_histograms(
        &mut self,
        labels: impl SeriesLabels,
        samples: &[Sample],
        histograms: &[HistogramSample],
    ) -> Result<(), StorageError> {
        let (chunks, unencodable) = encode_sealed(histograms.iter().cloned());
        if let Some(s) = unencodable.first() {
            return Err(corrupt(format!(
                "histogram at {} cannot be encoded in a chunk",
                s.t
            )));
        }
        self.add(labels, Floats::Samples(samples), &chunks)
    }

    fn add(
        &mut self,
        labels: impl SeriesLabels,
        floats: Floats<'_>,
        histograms: &[SealedHistogramChunk],
    ) -> Result<(), StorageError> {
        let metas = match (self.format, floats) {
            (_, Floats::Chunks([])) | (_, Floats::Samples([])) => Vec::new(),
            (ChunkFormat::Xor, Floats::Chunks(chunks)) => self.add_xor_chunks(chunks)?,
            (ChunkFormat::Xor, Floats::Samples(samples)) => {
                self.add_xor_chunks(&encode_chunks(samples))?
            }
            (ChunkFormat::Packed, Floats::Chunks(chunks)) => {
                let mut samples = Vec::with_capacity(chunks.len() * 120);
                for c in chunks {
                    for s in decode_xor(&c.bytes) {
                        samples.push(s.map_err(|e| corrupt(format!("head chunk: {e}")))?);
                    }
                }
                self.add_packed_chunks(&samples)?
            }
            (ChunkFormat::Packed, Floats::Samples(samples)) => self.add_packed_chunks(samples)?,
        };
        let hist_metas = self.add_histogram_chunks(histograms)?;
        if metas.is_empty() && hist_metas.is_empty() {
            return Ok(());
        }
        self.push_series(labels, metas, hist_metas);
        Ok(())
    }

    /// Writes each histogram chunk as a kind-4 record.
    fn add_histogram_chunks(
        &mut self,
        chunks: &[SealedHistogramChunk],
    ) -> Result<Vec<ChunkMeta>, StorageError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        if self.format == ChunkFormat::Xor {
            return Err(StorageError::Other(
                "the XOR block format carries no native histograms".into(),
            ));
        }
        let mut metas = Vec::with_capacity(chunks.len());
        let mut record = Vec::new();
        for c in chunks {
            if !matches!(c.encoding, Histogram::ENCODING | FloatHistogram::ENCODING) {
                return Err(StorageError::Other(format!(
                    "chunk encoding {} is not a histogram's",
                    c.encoding
                )));
            }
            record.clear();
            record.push(RECORD_HISTOGRAM);
            record.push(c.encoding);
            record.extend_from_slice(&c.bytes);
            let off = self.write_record(&record)?;
            metas.push((c.min_t, c.max_t, off));
            self.stats.num_samples += c.num_samples as u64;
            self.stats.num_histogram_samples += c.num_samples as u64;
        }
        Ok(metas)
    }

    /// Writes one `uvarint length, payload, CRC32C` record; returns its offset.
    fn write_record(&mut self, payload: &[u8]) -> Result<u64, StorageError> {
        let mut len = Vec::with_capacity(10);
        put_uvarint(&mut len, payload.len() as u64);
        self.chunks.write_all(&len)?;
        self.chunks.write_all(payload)?;
        self.chunks
            .write_all(&crc32c::crc32c(payload).to_le_bytes())?;
        let off = self.chunks_len;
        self.chunks_len += (len.len() + payload.len() + 4) as u64;
        Ok(off)
    }

    fn push_series(
        &mut self,
        labels: impl SeriesLabels,
        metas: Vec<ChunkMeta>,
        hist_metas: Vec<ChunkMeta>,
    ) {
        for (name, value) in labels.pairs() {
            let next = self.pair_ids.len() as u32;
            let id = *self
                .pair_ids
                .entry((name.clone(), value.clone()))
                .or_insert(next);
            self.series_pairs.push(id);
        }
        for &(mint, maxt, _) in metas.iter().chain(&hist_metas) {
            self.min_time = self.min_time.min(mint);
            self.max_time = self.max_time.max(maxt);
        }
        self.stats.num_chunks += (metas.len() + hist_metas.len()) as u64;
        self.stats.num_series += 1;
        self.series_chunks.extend_from_slice(&metas);
        self.series_hist_chunks.extend_from_slice(&hist_metas);
        self.series_ends.push((
            self.series_pairs.len(),
            self.series_chunks.len(),
            self.series_hist_chunks.len(),
        ));
    }

    /// The previous format: every chunk an XOR record of its own.
    fn add_xor_chunks(&mut self, chunks: &[SealedChunk]) -> Result<Vec<ChunkMeta>, StorageError> {
        let mut metas = Vec::with_capacity(chunks.len());
        for c in chunks {
            let off = self.write_record(&c.bytes)?;
            metas.push((c.min_t, c.max_t, off));
            self.stats.num_samples += u64::from(u16::from_be_bytes([c.bytes[0], c.bytes[1]]));
        }
        Ok(metas)
    }

    fn add_packed_chunks(&mut self, samples: &[Sample]) -> Result<Vec<ChunkMeta>, StorageError> {
        let mut metas = Vec::with_capacity(samples.len().div_ceil(PACKED_SAMPLES_PER_CHUNK));
        let mut times = Vec::with_capacity(PACKED_SAMPLES_PER_CHUNK);
        let mut values = Vec::with_capacity(PACKED_SAMPLES_PER_CHUNK);
        for part in samples.chunks(PACKED_SAMPLES_PER_CHUNK) {
            times.clear();
            values.clear();
            times.extend(part.iter().map(|s| s.t));
            values.extend(part.iter().map(|s| s.v));
            let mut times_record = vec![RECORD_TIMES];
            times_record.extend_from_slice(&encode_times(&times));
            let times_off = match self.times_written.get(&times_record) {
                Some(&off) => off,
                None => {
                    let off = self.write_record(&times_record)?;
                    self.times_written.insert(times_record, off);
                    off
                }
            };
            let mut record = vec![RECORD_PACKED];
            put_uvarint(&mut record, times_off);
            record.extend_from_slice(&encode_values(&values));
            let off = self.write_record(&record)?;
            metas.push((times[0], times[times.len() - 1], off));
            self.stats.num_samples += part.len() as u64;
        }
        Ok(metas)
    }

    /// Writes the index and meta.json, fsyncs, and renames the block into place.
    /// Returns None (and removes the temporary directory) when no series was added.
    pub fn finish(
        mut self,
        level: u32,
        sources: Vec<String>,
    ) -> Result<Option<BlockMeta>, StorageError> {
        if self.series_ends.is_empty() {
            drop(self.chunks);
            fs::remove_dir_all(&self.tmp.0)?;
            return Ok(None);
        }
        self.chunks.flush()?;
        self.chunks.get_ref().sync_all()?;
        write_index(&self.tmp.0.join(INDEX_FILE), &self)?;
        let meta = BlockMeta {
            ulid: self.ulid.clone(),
            min_time: self.min_time,
            max_time: self.max_time.saturating_add(1),
            stats: self.stats.clone(),
            compaction: Compaction {
                level,
                sources: if sources.is_empty() {
                    vec![self.ulid.clone()]
                } else {
                    sources
                },
            },
            version: match self.format {
                ChunkFormat::Xor => 1,
                ChunkFormat::Packed => 2,
            },
        };
        write_meta(&self.tmp.0, &meta)?;
        fsync_dir(&self.tmp.0)?;
        fs::rename(&self.tmp.0, self.parent.join(&self.ulid))?;
        fsync_dir(&self.parent)?;
        Ok(Some(meta))
    }
}

/// The float part of a series given to a block writer.
enum Floats<'a> {
    Chunks(&'a [SealedChunk]),
    Samples(&'a [Sample]),
}

/// A block's temporary directory, removed when dropped (a no-op once renamed).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn write_meta(dir: &Path, meta: &BlockMeta) -> Result<(), StorageError> {
    let json = serde_json::to_vec_pretty(meta).map_err(|e| StorageError::Other(e.to_string()))?;
    let mut f = File::create(dir.join(META_FILE))?;
    f.write_all(&json)?;
    f.sync_all()?;
    Ok(())
}

fn put_checked_entry(out: &mut Vec<u8>, payload: &[u8]) {
    put_uvarint(out, payload.len() as u64);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
}

/// The index file being written, with the offset of the next byte (series and
/// postings are referenced by offset). Written through a buffer rather than built in
/// memory: the index of a head cut is tens of megabytes.
struct IndexFile {
    out: BufWriter<File>,
    len: u64,
}

impl IndexFile {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes `uvarint length, payload, CRC32C`; returns its offset.
    fn write_checked_entry(
        &mut self,
        scratch: &mut Vec<u8>,
        payload: &[u8],
    ) -> Result<u64, StorageError> {
        let off = self.len;
        scratch.clear();
        put_checked_entry(scratch, payload);
        self.write(scratch)?;
        Ok(off)
    }
}

/// `uvarint count, (varint minTime, uvarint maxTime - minTime, uvarint offset)*`.
fn put_chunk_metas(out: &mut Vec<u8>, metas: &[ChunkMeta]) {
    put_uvarint(out, metas.len() as u64);
    for &(mint, maxt, off) in metas {
        put_varint(out, mint);
        put_uvarint(out, maxt.wrapping_sub(mint) as u64);
        put_uvarint(out, off);
    }
}

fn write_index(path: &Path, w: &BlockWriter) -> Result<(), StorageError> {
    // Label pairs in (name, value) order: the postings table's order, and numbering
    // the symbols in text order gives the symbol ids of each pair.
    let mut pairs: Vec<(&str, &str, u32)> = w
        .pair_ids
        .iter()
        .map(|((n, v), &id)| (n.as_ref(), v.as_ref(), id))
        .collect();
    pairs.sort_unstable();
    let symbols: BTreeSet<&str> = pairs.iter().flat_map(|&(n, v, _)| [n, v]).collect();
    let sym_index: HashMap<&str, u64> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u64))
        .collect();
    // Symbol ids of each pair, by the pair's id in the writer.
    let mut pair_syms = vec![(0u64, 0u64); pairs.len()];
    for &(n, v, id) in &pairs {
        pair_syms[id as usize] = (sym_index[n], sym_index[v]);
    }
    drop(sym_index);

    let mut out = IndexFile {
        out: BufWriter::new(File::create(path)?),
        len: 0,
    };
    let mut scratch = Vec::new();
    let with_histograms = !w.series_hist_chunks.is_empty();
    out.write(INDEX_MAGIC)?;
    out.write(&[if with_histograms {
        VERSION_HISTOGRAMS
    } else {
        VERSION
    }])?;

    let symbols_off = out.len;
    scratch.clear();
    put_uvarint(&mut scratch, symbols.len() as u64);
    out.write(&scratch)?;
    for s in &symbols {
        scratch.clear();
        put_str(&mut scratch, s);
        out.write(&scratch)?;
    }
    drop(symbols);

    let series_off = out.len;
    let mut postings: Vec<Vec<u64>> = vec![Vec::new(); pairs.len()];
    let mut all = Vec::with_capacity(w.series_ends.len());
    let mut payload = Vec::new();
    let (mut pairs_start, mut chunks_start, mut hist_start) = (0, 0, 0);
    // Symbol ids compare as their text does, so this is the label order.
    #[cfg(debug_assertions)]
    let mut previous: Option<Vec<(u64, u64)>> = None;
    for &(pairs_end, chunks_end, hist_end) in &w.series_ends {
        let ids = &w.series_pairs[pairs_start..pairs_end];
        let metas = &w.series_chunks[chunks_start..chunks_end];
        let hist_metas = &w.series_hist_chunks[hist_start..hist_end];
        #[cfg(debug_assertions)]
        {
            let labels: Vec<(u64, u64)> = ids.iter().map(|&id| pair_syms[id as usize]).collect();
            debug_assert!(
                previous.as_ref().is_none_or(|p| *p < labels),
                "block series not added in label order"
            );
            previous = Some(labels);
        }
        payload.clear();
        put_uvarint(&mut payload, ids.len() as u64);
        for &id in ids {
            let (n, v) = pair_syms[id as usize];
            put_uvarint(&mut payload, n);
            put_uvarint(&mut payload, v);
        }
        put_chunk_metas(&mut payload, metas);
        if with_histograms {
            put_chunk_metas(&mut payload, hist_metas);
        }
        let series_ref = out.write_checked_entry(&mut scratch, &payload)?;
        for &id in ids {
            postings[id as usize].push(series_ref);
        }
        all.push(series_ref);
        (pairs_start, chunks_start, hist_start) = (pairs_end, chunks_end, hist_end);
    }

    let mut write_list = |out: &mut IndexFile, list: &[u64]| -> Result<u64, StorageError> {
        payload.clear();
        put_uvarint(&mut payload, list.len() as u64);
        let mut prev = 0;
        for &r in list {
            put_uvarint(&mut payload, r - prev);
            prev = r;
        }
        out.write_checked_entry(&mut scratch, &payload)
    };
    let all_off = write_list(&mut out, &all)?;
    drop(all);
    let mut table = Vec::with_capacity(pairs.len());
    for &(_, _, id) in &pairs {
        let list = std::mem::take(&mut postings[id as usize]);
        let (n, v) = pair_syms[id as usize];
        table.push((n, v, write_list(&mut out, &list)?));
    }
    let table_off = out.len;
    let mut buf = Vec::new();
    put_uvarint(&mut buf, table.len() as u64);
    for (n, v, off) in table {
        put_uvarint(&mut buf, n);
        put_uvarint(&mut buf, v);
        put_uvarint(&mut buf, off);
    }
    out.write(&buf)?;
    let mut toc = Vec::with_capacity(TOC_LEN);
    for x in [
        symbols_off,
        series_off,
        table_off,
        all_off,
        w.series_ends.len() as u64,
    ] {
        toc.extend_from_slice(&x.to_le_bytes());
    }
    let crc = crc32c::crc32c(&toc);
    toc.extend_from_slice(&crc.to_le_bytes());
    out.write(&toc)?;
    let f = out.out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(())
}

// ---- reading ----

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corruption(what.to_string())
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at(b: &'a [u8], pos: usize) -> Self {
        Reader { b, pos }
    }

    fn uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            x |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(x);
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u32_le(&mut self) -> Option<u32> {
        let b: [u8; 4] = self.bytes(4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// Reads a `uvarint length, payload, CRC32C` entry and returns the checked payload.
    fn checked_entry(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uvarint()?).ok()?;
        let payload = self.bytes(len)?;
        (self.u32_le()? == crc32c::crc32c(payload)).then_some(payload)
    }
}

/// The index of a block, read through a memory map.
pub struct BlockIndex {
    map: Mmap,
    /// (start, len) of every symbol in `map`, in sorted order.
    symbols: Vec<(usize, usize)>,
    /// name symbol -> sorted (value symbol, postings list offset).
    table: HashMap<u32, Vec<(u32, u64)>>,
    all_off: u64,
    series_off: u64,
    num_series: u64,
    /// Whether series entries list histogram chunks (index version 2).
    with_histograms: bool,
}

impl BlockIndex {
    fn open(path: &Path) -> Result<BlockIndex, StorageError> {
        let file = File::open(path)?;
        // SAFETY: block files are immutable once renamed into place; nothing truncates
        // them while mapped (deletion only unlinks).
        let map = unsafe { Mmap::map(&file)? };
        let bad = |what: &str| corrupt(format!("{}: {what}", path.display()));
        if map.len() < 5 + TOC_LEN
            || &map[..4] != INDEX_MAGIC
            || !matches!(map[4], VERSION | VERSION_HISTOGRAMS)
        {
            return Err(bad("bad header"));
        }
        let toc = &map[map.len() - TOC_LEN..];
        let crc = u32::from_le_bytes([toc[40], toc[41], toc[42], toc[43]]);
        if crc32c::crc32c(&toc[..40]) != crc {
            return Err(bad("table of contents checksum mismatch"));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&toc[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (symbols_off, series_off, table_off, all_off, num_series) =
            (word(0), word(1), word(2), word(3), word(4));
        let symbols = read_symbols(&map, symbols_off).ok_or_else(|| bad("bad symbol table"))?;
        let table =
            read_table(&map, table_off, symbols.len()).ok_or_else(|| bad("bad postings table"))?;
        let with_histograms = map[4] == VERSION_HISTOGRAMS;
        Ok(BlockIndex {
            map,
            symbols,
            table,
            all_off,
            series_off,
            num_series,
            with_histograms,
        })
    }

    fn symbol(&self, i: u32) -> Option<&str> {
        let &(start, len) = self.symbols.get(i as usize)?;
        // Validated as UTF-8 when the index was opened.
        std::str::from_utf8(&self.map[start..start + len]).ok()
    }

    fn find_symbol(&self, s: &str) -> Option<u32> {
        let i = self
            .symbols
            .binary_search_by(|&(start, len)| self.map[start..start + len].cmp(s.as_bytes()))
            .ok()?;
        Some(i as u32)
    }

    fn read_list(&self, off: u64) -> Result<Vec<SeriesRef>, StorageError> {
        let mut r = Reader::at(&self.map, off as usize);
        let payload = r
            .checked_entry()
            .ok_or_else(|| corrupt(format!("postings list at {off} damaged")))?;
        let mut p = Reader::at(payload, 0);
        let n = p.uvarint().ok_or_else(|| corrupt("bad postings list"))?;
        let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
        let mut prev = 0u64;
        for _ in 0..n {
            prev = prev.wrapping_add(p.uvarint().ok_or_else(|| corrupt("bad postings list"))?);
            out.push(prev);
        }
        Ok(out)
    }

    /// Labels and float chunk metas (mint, maxt, chunk offset) of the series at
    /// `series_ref` (none when it holds only histograms).
    pub fn series(&self, series_ref: SeriesRef) -> Result<(Labels, Vec<ChunkMeta>), StorageError> {
        let (labels, metas, _) = self.read_series(series_ref, false)?;
        Ok((labels, metas))
    }

    /// Labels, float chunk metas and native histogram chunk metas of the series at
    /// `series_ref`.
    pub fn series_with_histograms(
        &self,
        series_ref: SeriesRef,
    ) -> Result<(Labels, Vec<ChunkMeta>, Vec<ChunkMeta>), StorageError> {
        self.read_series(series_ref, true)
    }

    fn read_series(
        &self,
        series_ref: SeriesRef,
        histograms: bool,
    ) -> Result<(Labels, Vec<ChunkMeta>, Vec<ChunkMeta>), StorageError> {
        let bad = || corrupt(format!("series entry at {series_ref} damaged"));
        if series_ref < self.series_off {
            return Err(bad());
        }
        let mut r = Reader::at(&self.map, series_ref as usize);
        let payload = r.checked_entry().ok_or_else(bad)?;
        let mut p = Reader::at(payload, 0);
        let nlabels = p.uvarint().ok_or_else(bad)?;
        let mut labels = Vec::with_capacity(nlabels.min(256) as usize);
        for _ in 0..nlabels {
            let name = p
                .uvarint()
                .and_then(|i| self.symbol(i as u32))
                .ok_or_else(bad)?;
            let value = p
                .uvarint()
                .and_then(|i| self.symbol(i as u32))
                .ok_or_else(bad)?;
            labels.push(Label::new(name, value));
        }
        if !labels.windows(2).all(|w| w[0].name < w[1].name) {
            return Err(bad());
        }
        let metas = read_chunk_metas(&mut p).ok_or_else(bad)?;
        let hist_metas = if histograms && self.with_histograms {
            read_chunk_metas(&mut p).ok_or_else(bad)?
        } else {
            Vec::new()
        };
        Ok((Labels::from_sorted(labels), metas, hist_metas))
    }

    /// Label names present in the block, unsorted.
    pub fn label_names(&self) -> Vec<&str> {
        self.table.keys().filter_map(|&n| self.symbol(n)).collect()
    }

    pub fn num_series(&self) -> u64 {
        self.num_series
    }

    /// Whether series entries list histogram chunks (a block written with histograms).
    pub fn has_histograms(&self) -> bool {
        self.with_histograms
    }
}

/// The inverse of `put_chunk_metas`.
fn read_chunk_metas(p: &mut Reader<'_>) -> Option<Vec<ChunkMeta>> {
    let n = p.uvarint()?;
    let mut metas = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let mint = p.varint()?;
        let span = p.uvarint()?;
        let off = p.uvarint()?;
        metas.push((mint, mint.wrapping_add(span as i64), off));
    }
    Some(metas)
}

fn read_symbols(map: &[u8], off: u64) -> Option<Vec<(usize, usize)>> {
    let mut r = Reader::at(map, usize::try_from(off).ok()?);
    let n = r.uvarint()?;
    let mut out = Vec::with_capacity(n.min(1 << 24) as usize);
    for _ in 0..n {
        let len = usize::try_from(r.uvarint()?).ok()?;
        let start = r.pos;
        std::str::from_utf8(r.bytes(len)?).ok()?;
        out.push((start, len));
    }
    Some(out)
}

fn read_table(map: &[u8], off: u64, num_symbols: usize) -> Option<HashMap<u32, Vec<(u32, u64)>>> {
    let mut r = Reader::at(map, usize::try_from(off).ok()?);
    let n = r.uvarint()?;
    let mut table: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for _ in 0..n {
        let (name, value, list) = (r.uvarint()?, r.uvarint()?, r.uvarint()?);
        if name as usize >= num_symbols || value as usize >= num_symbols {
            return None;
        }
        table
            .entry(name as u32)
            .or_default()
            .push((value as u32, list));
    }
    Some(table)
}

impl PostingsSource for BlockIndex {
    fn all_postings(&self) -> Vec<SeriesRef> {
        self.read_list(self.all_off).unwrap_or_else(|e| {
            tracing::error!(error = %e, "block postings unreadable");
            Vec::new()
        })
    }

    fn postings(&self, name: &str, value: &str) -> Vec<SeriesRef> {
        let (Some(n), Some(v)) = (self.find_symbol(name), self.find_symbol(value)) else {
            return Vec::new();
        };
        let Some(values) = self.table.get(&n) else {
            return Vec::new();
        };
        match values.binary_search_by_key(&v, |&(v, _)| v) {
            Ok(i) => self.read_list(values[i].1).unwrap_or_else(|e| {
                tracing::error!(error = %e, "block postings unreadable");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    fn postings_where(&self, name: &str, keep: &mut dyn FnMut(&str) -> bool) -> Vec<SeriesRef> {
        let Some(values) = self.find_symbol(name).and_then(|n| self.table.get(&n)) else {
            return Vec::new();
        };
        union(
            values
                .iter()
                .filter(|&&(v, _)| self.symbol(v).is_some_and(&mut *keep))
                .filter_map(|&(_, off)| self.read_list(off).ok())
                .collect(),
        )
    }
}

impl BlockIndex {
    /// Distinct values of label `name` in the block.
    pub fn label_values(&self, name: &str) -> Vec<&str> {
        self.find_symbol(name)
            .and_then(|n| self.table.get(&n))
            .map(|values| values.iter().filter_map(|&(v, _)| self.symbol(v)).collect())
            .unwrap_or_default()
    }
}

/// An open block.
pub struct Block {
    pub dir: PathBuf,
    pub meta: BlockMeta,
    pub index: BlockIndex,
    chunks: Mmap,
    /// The chunks file's version: 1 (XOR records) or 2 (kind-tagged records).
    chunks_version: u8,
    pub tombstones: RwLock<Tombstones>,
    pub size_bytes: u64,
}

impl Block {
    pub fn open(dir: &Path) -> Result<Block, StorageError> {
        let meta_bytes = fs::read(dir.join(META_FILE))?;
        let meta: BlockMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| corrupt(format!("{}: {e}", dir.display())))?;
        let index = BlockIndex::open(&dir.join(INDEX_FILE))?;
        let chunks_file = File::open(dir.join(CHUNKS_FILE))?;
        // SAFETY: as for the index, block files are never modified in place.
        let chunks = unsafe { Mmap::map(&chunks_file)? };
        if chunks.len() < 5
            || &chunks[..4] != CHUNKS_MAGIC
            || !matches!(chunks[4], CHUNKS_VERSION_XOR | CHUNKS_VERSION_PACKED)
        {
            return Err(corrupt(format!("{}: bad chunks header", dir.display())));
        }
        let chunks_version = chunks[4];
        let tombstones = Tombstones::load(dir)?;
        let size_bytes = dir_size(dir)?;
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            index,
            chunks,
            chunks_version,
            tombstones: RwLock::new(tombstones),
            size_bytes,
        })
    }

    /// The record at `off` (an XOR chunk in a version-1 file, a kind byte and its body
    /// in version 2), checksum verified.
    pub fn chunk(&self, off: u64) -> Result<&[u8], StorageError> {
        let mut r = Reader::at(&self.chunks, usize::try_from(off).unwrap_or(usize::MAX));
        r.checked_entry()
            .ok_or_else(|| corrupt(format!("{}: chunk at {off} damaged", self.dir.display())))
    }

    /// Decodes the chunk at `off`, appending its samples to `out`.
    pub fn decode_chunk(&self, off: u64, out: &mut Vec<Sample>) -> Result<(), StorageError> {
        let bad = |e: &dyn std::fmt::Display| {
            corrupt(format!("{}: chunk at {off}: {e}", self.dir.display()))
        };
        let record = self.chunk(off)?;
        let xor = |bytes: &[u8], out: &mut Vec<Sample>| {
            for s in decode_xor(bytes) {
                out.push(s.map_err(|e| bad(&e))?);
            }
            Ok(())
        };
        if self.chunks_version == CHUNKS_VERSION_XOR {
            return xor(record, out);
        }
        match record.first() {
            Some(&RECORD_XOR) => xor(&record[1..], out),
            Some(&RECORD_PACKED) => {
                let mut r = Reader::at(record, 1);
                let times_off = r.uvarint().ok_or_else(|| bad(&"bad timestamp reference"))?;
                let times_record = self.chunk(times_off)?;
                if times_record.first() != Some(&RECORD_TIMES) {
                    return Err(bad(&"timestamp reference is not a timestamp record"));
                }
                let mut times = Vec::new();
                decode_times(&times_record[1..], &mut times).map_err(|e| bad(&e))?;
                let mut values = Vec::new();
                decode_values(&record[r.pos..], &mut values).map_err(|e| bad(&e))?;
                if times.len() != values.len() {
                    return Err(bad(&format_args!(
                        "{} timestamps for {} values",
                        times.len(),
                        values.len()
                    )));
                }
                out.extend(
                    times
                        .into_iter()
                        .zip(values)
                        .map(|(t, v)| Sample::new(t, v)),
                );
                Ok(())
            }
            Some(&kind) => Err(bad(&format_args!("record kind {kind} is not a chunk"))),
            None => Err(bad(&"empty record")),
        }
    }

    /// Decodes the native histogram chunk at `off`, appending its samples to `out`.
    pub fn decode_histogram_chunk(
        &self,
        off: u64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<(), StorageError> {
        let bad = |e: &dyn std::fmt::Display| {
            corrupt(format!(
                "{}: histogram chunk at {off}: {e}",
                self.dir.display()
            ))
        };
        if self.chunks_version == CHUNKS_VERSION_XOR {
            return Err(bad(&"an XOR-format block holds no histograms"));
        }
        let record = self.chunk(off)?;
        let (Some(&RECORD_HISTOGRAM), Some(&encoding)) = (record.first(), record.get(1)) else {
            return Err(bad(&"not a histogram chunk record"));
        };
        let bytes = &record[2..];
        match encoding {
            Histogram::ENCODING => {
                for s in decode_histogram_chunk::<Histogram>(bytes) {
                    let (t, h) = s.map_err(|e| bad(&e))?;
                    out.push(HistogramSample {
                        t,
                        h: HistogramValue::Int(h),
                    });
                }
            }
            FloatHistogram::ENCODING => {
                for s in decode_histogram_chunk::<FloatHistogram>(bytes) {
                    let (t, h) = s.map_err(|e| bad(&e))?;
                    out.push(HistogramSample {
                        t,
                        h: HistogramValue::Float(h),
                    });
                }
            }
            other => return Err(bad(&format_args!("unknown encoding {other}"))),
        }
        Ok(())
    }

    /// The live histogram samples of the series at `series_ref` within `[mint, maxt]`,
    /// from its histogram chunk metas, in time order.
    pub fn histograms(
        &self,
        series_ref: SeriesRef,
        hist_metas: &[ChunkMeta],
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<(), StorageError> {
        let start = out.len();
        for &(cmin, cmax, off) in hist_metas {
            if cmax >= mint && cmin <= maxt {
                self.decode_histogram_chunk(off, out)?;
            }
        }
        let tombstones = self.tombstones.read().unwrap_or_else(|e| e.into_inner());
        let intervals = tombstones.intervals(series_ref);
        let mut kept = start;
        for i in start..out.len() {
            let t = out[i].t;
            if t >= mint && t <= maxt && !super::tombstones::is_deleted(intervals, t) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
        Ok(())
    }

    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.meta.min_time <= maxt && mint < self.meta.max_time
    }

    /// The live samples of the series at `series_ref` within `[mint, maxt]`.
    pub fn samples(
        &self,
        series_ref: SeriesRef,
        metas: &[ChunkMeta],
        mint: i64,
        maxt: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), StorageError> {
        let start = out.len();
        for &(cmin, cmax, off) in metas {
            if cmax < mint || cmin > maxt {
                continue;
            }
            let first = out.len();
            self.decode_chunk(off, out)?;
            if cmin < mint || cmax > maxt {
                let mut kept = first;
                for i in first..out.len() {
                    if out[i].t >= mint && out[i].t <= maxt {
                        out[kept] = out[i];
                        kept += 1;
                    }
                }
                out.truncate(kept);
            }
        }
        let tombstones = self.tombstones.read().unwrap_or_else(|e| e.into_inner());
        let intervals = tombstones.intervals(series_ref);
        if !intervals.is_empty() {
            let mut mine = out.split_off(start);
            super::tombstones::retain_live(&mut mine, intervals);
            out.extend(mine);
        }
        Ok(())
    }

    pub fn has_tombstones_for(&self, series_ref: SeriesRef) -> bool {
        !self
            .tombstones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .intervals(series_ref)
            .is_empty()
    }

    pub fn has_tombstones(&self) -> bool {
        !self
            .tombstones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

pub fn dir_size(dir: &Path) -> Result<u64, StorageError> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        if md.is_file() {
            total += md.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MatchOp, Matcher};
    use crate::tsdb::head::encode_chunks;
    use crate::tsdb::index::select_postings;

    fn write_sample_block(parent: &Path) -> BlockMeta {
        write_sample_block_as(parent, ChunkFormat::Packed)
    }

    fn write_sample_block_as(parent: &Path, format: ChunkFormat) -> BlockMeta {
        let mut w = BlockWriter::with_format(parent, format).unwrap();
        for (job, n) in [("api", 150), ("db", 10)] {
            let labels = Labels::from_pairs([("__name__", "up"), ("job", job)]);
            let samples: Vec<Sample> = (0..n).map(|i| Sample::new(i * 1000, i as f64)).collect();
            w.add_series(labels, &encode_chunks(&samples)).unwrap();
        }
        w.finish(1, vec![]).unwrap().unwrap()
    }

    #[test]
    fn ulids_are_26_chars_and_distinct() {
        let (a, b) = (new_block_id(), new_block_id());
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
    }

    #[test]
    fn write_then_read_block() {
        for (format, chunks, version) in [(ChunkFormat::Packed, 2, 2), (ChunkFormat::Xor, 3, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let meta = write_sample_block_as(dir.path(), format);
            assert_eq!(meta.stats.num_chunks, chunks);
            assert_eq!(meta.version, version);
            read_sample_block(dir.path(), meta);
        }
    }

    fn read_sample_block(dir: &Path, meta: BlockMeta) {
        assert_eq!(meta.stats.num_samples, 160);
        assert_eq!(meta.stats.num_series, 2);
        assert_eq!((meta.min_time, meta.max_time), (0, 149_001));
        let block = Block::open(&dir.join(&meta.ulid)).unwrap();
        assert_eq!(block.meta, meta);
        let refs = select_postings(
            &block.index,
            &[Matcher::new(MatchOp::RegexMatch, "job", "d.*").unwrap()],
        );
        assert_eq!(refs.len(), 1);
        let (labels, metas) = block.index.series(refs[0]).unwrap();
        assert_eq!(labels.get("job"), Some("db"));
        let mut out = Vec::new();
        block
            .samples(refs[0], &metas, 2_000, 4_000, &mut out)
            .unwrap();
        assert_eq!(out.len(), 3);
        let mut names = block.index.label_names();
        names.sort();
        assert_eq!(names, vec!["__name__", "job"]);
        assert_eq!(block.index.label_values("job").len(), 2);
        assert_eq!(select_postings(&block.index, &[]).len(), 2);
    }

    /// Every sample of every series, in both formats, including values and times that
    /// break lossy encodings.
    #[test]
    fn both_formats_read_back_bit_exact() {
        use rand::rngs::SmallRng;
        let mut rng = SmallRng::seed_from_u64(2);
        let odd = [
            0x7ff8_0000_0000_0001u64,
            crate::model::STALE_NAN_BITS,
            0x8000_0000_0000_0000,
            0x7ff0_0000_0000_0000,
            0x0000_0000_0000_0001,
            0xffff_ffff_ffff_ffff,
        ];
        let mut series: Vec<(Labels, Vec<Sample>)> = (0..40)
            .map(|i| {
                let labels = Labels::from_pairs([("__name__", "m"), ("i", &format!("{i:02}"))]);
                let n = rng.random_range(1..1500);
                let mut t = rng.random_range(-1_000_000i64..1_000_000);
                let samples = (0..n)
                    .map(|j| {
                        t += if i % 3 == 0 {
                            15_000
                        } else {
                            rng.random_range(1..40_000)
                        };
                        let v = match i % 4 {
                            0 => j as f64 * 0.01,
                            1 => f64::from_bits(odd[rng.random_range(0..odd.len())]),
                            2 => f64::from_bits(rng.random()),
                            _ => rng.random::<f64>() * 1e6,
                        };
                        Sample::new(t, v)
                    })
                    .collect();
                (labels, samples)
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        for format in [ChunkFormat::Packed, ChunkFormat::Xor] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = BlockWriter::with_format(dir.path(), format).unwrap();
            for (labels, samples) in &series {
                w.add_series_samples(labels.clone(), samples).unwrap();
            }
            let meta = w.finish(1, vec![]).unwrap().unwrap();
            let block = Block::open(&dir.path().join(&meta.ulid)).unwrap();
            for (r, (labels, samples)) in block.index.all_postings().into_iter().zip(&series) {
                let (got_labels, metas) = block.index.series(r).unwrap();
                assert_eq!(&got_labels, labels);
                let mut out = Vec::new();
                block
                    .samples(r, &metas, i64::MIN, i64::MAX, &mut out)
                    .unwrap();
                let bits =
                    |s: &[Sample]| s.iter().map(|s| (s.t, s.v.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&out), bits(samples), "{format:?} {labels:?}");
            }
        }
    }

    /// Series scraped together share one timestamp record; each chunk stays readable.
    #[test]
    fn identical_timestamp_columns_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path()).unwrap();
        for i in 0..10 {
            let labels = Labels::from_pairs([("i", i.to_string())]);
            let samples: Vec<Sample> = (0..480)
                .map(|j| Sample::new(j * 15_000 + j % 3, (i * j) as f64))
                .collect();
            w.add_series_samples(labels, &samples).unwrap();
        }
        let meta = w.finish(1, vec![]).unwrap().unwrap();
        let block = Block::open(&dir.path().join(&meta.ulid)).unwrap();
        let offsets: BTreeSet<u64> = block
            .index
            .all_postings()
            .into_iter()
            .map(|r| {
                let (_, metas) = block.index.series(r).unwrap();
                let record = block.chunk(metas[0].2).unwrap();
                Reader::at(record, 1).uvarint().unwrap()
            })
            .collect();
        assert_eq!(offsets.len(), 1);
    }

    /// A damaged packed chunk, timestamp record or reference gives an error, never a
    /// panic, and never wrong samples without an error.
    #[test]
    fn damaged_packed_chunks_give_errors() {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_sample_block(dir.path());
        let bdir = dir.path().join(&meta.ulid);
        let chunks_path = bdir.join(CHUNKS_FILE);
        let good = fs::read(&chunks_path).unwrap();
        let expected: Vec<Vec<(i64, u64)>> = {
            let block = Block::open(&bdir).unwrap();
            read_all(&block).unwrap()
        };
        for i in 5..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                fs::write(&chunks_path, &bad).unwrap();
                let block = Block::open(&bdir).unwrap();
                match read_all(&block) {
                    Err(StorageError::Corruption(_)) => {}
                    Err(e) => panic!("byte {i}: unexpected error {e}"),
                    Ok(got) => assert_eq!(got, expected, "byte {i} changed samples silently"),
                }
            }
        }
        // A packed chunk whose timestamp reference points at another chunk.
        let block = {
            fs::write(&chunks_path, &good).unwrap();
            Block::open(&bdir).unwrap()
        };
        let refs = block.index.all_postings();
        let (_, metas) = block.index.series(refs[0]).unwrap();
        let (_, other) = block.index.series(refs[1]).unwrap();
        let record = block.chunk(metas[0].2).unwrap();
        let mut r = Reader::at(record, 1);
        r.uvarint().unwrap();
        let mut forged = vec![RECORD_PACKED];
        put_uvarint(&mut forged, other[0].2);
        forged.extend_from_slice(&record[r.pos..]);
        let mut bytes = good.clone();
        let forged_off = bytes.len() as u64;
        put_uvarint(&mut bytes, forged.len() as u64);
        bytes.extend_from_slice(&forged);
        bytes.extend_from_slice(&crc32c::crc32c(&forged).to_le_bytes());
        fs::write(&chunks_path, &bytes).unwrap();
        let block = Block::open(&bdir).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            block.decode_chunk(forged_off, &mut out),
            Err(StorageError::Corruption(e)) if e.contains("not a timestamp record")
        ));
        assert!(block.decode_chunk(u64::MAX, &mut out).is_err());
    }

    fn read_all(block: &Block) -> Result<Vec<Vec<(i64, u64)>>, StorageError> {
        let mut all = Vec::new();
        for r in block.index.all_postings() {
            let (_, metas) = block.index.series(r)?;
            let mut out = Vec::new();
            block.samples(r, &metas, i64::MIN, i64::MAX, &mut out)?;
            all.push(out.iter().map(|s| (s.t, s.v.to_bits())).collect());
        }
        Ok(all)
    }

    /// Integer and float histograms at every third time, floats between them.
    fn mixed_series(n: i64) -> (Vec<Sample>, Vec<HistogramSample>) {
        use crate::model::histogram::Span;
        let mut floats = Vec::new();
        let mut hists = Vec::new();
        for i in 0..n {
            let t = i * 15_000;
            if i % 3 != 0 {
                floats.push(Sample::new(t, i as f64));
                continue;
            }
            let h = Histogram {
                count: 3 + i as u64,
                sum: i as f64 * 0.5,
                positive_spans: vec![Span {
                    offset: 0,
                    length: 2,
                }]
                .into(),
                positive_buckets: vec![1, 1 + i],
                ..Histogram::default()
            };
            hists.push(HistogramSample {
                t,
                h: if i % 2 == 0 {
                    HistogramValue::Int(h)
                } else {
                    HistogramValue::Float(h.to_float())
                },
            });
        }
        (floats, hists)
    }

    /// Histogram chunks sit beside float chunks of the same series and read back; the
    /// index says version 2 only then, so float-only blocks stay as they were.
    #[test]
    fn histogram_chunks_read_back_beside_floats() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path()).unwrap();
        let (floats, hists) = mixed_series(1000);
        let only = Labels::from_pairs([("k", "hist-only")]);
        let mixed = Labels::from_pairs([("k", "mixed")]);
        w.add_series_samples_with_histograms(only.clone(), &[], &hists)
            .unwrap();
        w.add_series_samples_with_histograms(mixed.clone(), &floats, &hists)
            .unwrap();
        let meta = w.finish(1, vec![]).unwrap().unwrap();
        let n = hists.len() as u64;
        assert_eq!(meta.stats.num_histogram_samples, 2 * n);
        assert_eq!(meta.stats.num_samples, 2 * n + floats.len() as u64);
        assert_eq!((meta.min_time, meta.max_time), (0, 999 * 15_000 + 1));
        let block = Block::open(&dir.path().join(&meta.ulid)).unwrap();
        assert!(block.index.has_histograms());
        let refs = block.index.all_postings();
        for (r, labels, want_floats) in [(refs[0], &only, &[][..]), (refs[1], &mixed, &floats[..])]
        {
            let (got_labels, metas, hist_metas) = block.index.series_with_histograms(r).unwrap();
            assert_eq!(&got_labels, labels);
            // 334 histograms: three chunks of at most 120 (a kind switch cuts too).
            assert!(hist_metas.len() >= 3, "{hist_metas:?}");
            let mut got = Vec::new();
            block
                .samples(r, &metas, i64::MIN, i64::MAX, &mut got)
                .unwrap();
            assert_eq!(got, want_floats);
            let mut got = Vec::new();
            block
                .histograms(r, &hist_metas, i64::MIN, i64::MAX, &mut got)
                .unwrap();
            assert_eq!(got.len(), hists.len());
            assert!(got
                .iter()
                .zip(&hists)
                .all(|(a, b)| a.t == b.t && a.h.same(&b.h)));
            // A range, and a tombstone.
            let mut got = Vec::new();
            block
                .histograms(r, &hist_metas, 30_000, 90_000, &mut got)
                .unwrap();
            assert_eq!(
                got.iter().map(|s| s.t).collect::<Vec<_>>(),
                [45_000, 90_000]
            );
            block.tombstones.write().unwrap().add(r, 0, 45_000);
            let mut got = Vec::new();
            block
                .histograms(r, &hist_metas, i64::MIN, 90_000, &mut got)
                .unwrap();
            assert_eq!(got.iter().map(|s| s.t).collect::<Vec<_>>(), [90_000]);
        }
        // `series` keeps answering float chunks only.
        assert!(block.index.series(refs[0]).unwrap().1.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let meta = write_sample_block(dir.path());
        let block = Block::open(&dir.path().join(&meta.ulid)).unwrap();
        assert!(!block.index.has_histograms());
        let index = fs::read(dir.path().join(&meta.ulid).join(INDEX_FILE)).unwrap();
        assert_eq!(index[4], VERSION);
        let meta_json = fs::read_to_string(dir.path().join(&meta.ulid).join(META_FILE)).unwrap();
        assert!(!meta_json.contains("numHistogramSamples"), "{meta_json}");
        // The XOR format cannot hold them: an error, not a silent loss.
        let mut w = BlockWriter::with_format(dir.path(), ChunkFormat::Xor).unwrap();
        assert!(w
            .add_series_samples_with_histograms(only, &floats, &hists)
            .is_err());
    }

    /// Damaged histogram chunks give errors, never a panic or wrong samples silently.
    #[test]
    fn damaged_histogram_chunks_give_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path()).unwrap();
        let (_, hists) = mixed_series(60);
        w.add_series_samples_with_histograms(Labels::from_pairs([("k", "h")]), &[], &hists)
            .unwrap();
        let meta = w.finish(1, vec![]).unwrap().unwrap();
        let bdir = dir.path().join(&meta.ulid);
        let chunks_path = bdir.join(CHUNKS_FILE);
        let good = fs::read(&chunks_path).unwrap();
        let read_all = |block: &Block| -> Result<Vec<HistogramSample>, StorageError> {
            let mut out = Vec::new();
            for r in block.index.all_postings() {
                let (_, _, hist_metas) = block.index.series_with_histograms(r)?;
                block.histograms(r, &hist_metas, i64::MIN, i64::MAX, &mut out)?;
            }
            Ok(out)
        };
        let expected = read_all(&Block::open(&bdir).unwrap()).unwrap();
        assert_eq!(expected.len(), hists.len());
        for i in 5..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs::write(&chunks_path, &bad).unwrap();
            let block = Block::open(&bdir).unwrap();
            match read_all(&block) {
                Err(StorageError::Corruption(_)) => {}
                Err(e) => panic!("byte {i}: unexpected error {e}"),
                Ok(got) => assert_eq!(got, expected, "byte {i} changed samples silently"),
            }
        }
        // A float chunk's offset given as a histogram chunk's.
        fs::write(&chunks_path, &good).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let floats_meta = write_sample_block(dir2.path());
        let block = Block::open(&dir2.path().join(&floats_meta.ulid)).unwrap();
        let (_, metas) = block.index.series(block.index.all_postings()[0]).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            block.decode_histogram_chunk(metas[0].2, &mut out),
            Err(StorageError::Corruption(e)) if e.contains("not a histogram chunk")
        ));
    }

    /// The size of a realistic series' histograms in a block: a request-latency
    /// histogram (schema 3, log-normal latencies around 50 ms, 100 requests a second,
    /// scraped every 15 s for 2 h), as integer histograms. Prints bytes per sample
    /// (ADR 0030) and holds it to a bound a per-sample layout would break.
    #[test]
    fn a_realistic_histogram_series_costs_little_per_sample() {
        use crate::model::histogram::Span;
        use rand::rngs::SmallRng;
        let mut rng = SmallRng::seed_from_u64(7);
        let schema = 3;
        // Cumulative counts by bucket index.
        let mut counts: std::collections::BTreeMap<i32, i64> = Default::default();
        let (mut count, mut sum) = (0u64, 0.0f64);
        let mut samples = Vec::new();
        for scrape in 0..480 {
            for _ in 0..1500 {
                // Box-Muller: a standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = (0.05f64.ln() + 0.8 * z).exp();
                let idx = (v.log2() * f64::from(1 << schema)).ceil() as i32;
                *counts.entry(idx).or_default() += 1;
                count += 1;
                sum += v;
            }
            // Spans over the populated indexes, gaps of up to 2 empty buckets kept.
            let mut spans: Vec<Span> = Vec::new();
            let mut abs = Vec::new();
            let mut prev: Option<i32> = None;
            for (&idx, &c) in &counts {
                match prev {
                    Some(p) if idx - p <= 3 => {
                        abs.extend(std::iter::repeat_n(0, (idx - p - 1) as usize));
                        spans.last_mut().unwrap().length += (idx - p) as u32;
                    }
                    Some(p) => spans.push(Span {
                        offset: idx - p - 1,
                        length: 1,
                    }),
                    None => spans.push(Span {
                        offset: idx,
                        length: 1,
                    }),
                }
                abs.push(c);
                prev = Some(idx);
            }
            let mut last = 0;
            let buckets = abs
                .iter()
                .map(|&c| {
                    let d = c - last;
                    last = c;
                    d
                })
                .collect();
            let h = Histogram {
                schema,
                count,
                sum,
                positive_spans: spans.into(),
                positive_buckets: buckets,
                ..Histogram::default()
            };
            h.validate().unwrap();
            samples.push(HistogramSample {
                t: scrape * 15_000,
                h: HistogramValue::Int(h),
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path()).unwrap();
        w.add_series_samples_with_histograms(Labels::from_pairs([("k", "latency")]), &[], &samples)
            .unwrap();
        let meta = w.finish(1, vec![]).unwrap().unwrap();
        let chunks = fs::metadata(dir.path().join(&meta.ulid).join(CHUNKS_FILE))
            .unwrap()
            .len();
        let buckets = match &samples[samples.len() - 1].h {
            HistogramValue::Int(h) => h.positive_buckets.len(),
            HistogramValue::Float(_) => 0,
        };
        let per_sample = chunks as f64 / samples.len() as f64;
        println!(
            "{} samples, {buckets} buckets at the end, {} chunks: {chunks} bytes of chunks, \
             {per_sample:.1} bytes per sample",
            samples.len(),
            meta.stats.num_chunks
        );
        assert!(per_sample < 4.0 * buckets as f64, "{per_sample}");
    }

    #[test]
    fn tombstones_filter_block_reads() {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_sample_block(dir.path());
        let block = Block::open(&dir.path().join(&meta.ulid)).unwrap();
        let refs = select_postings(&block.index, &[Matcher::equal("job", "api")]);
        let (_, metas) = block.index.series(refs[0]).unwrap();
        block.tombstones.write().unwrap().add(refs[0], 0, 99_000);
        let mut out = Vec::new();
        block
            .samples(refs[0], &metas, i64::MIN, i64::MAX, &mut out)
            .unwrap();
        assert_eq!(out.len(), 50);
    }

    #[test]
    fn damaged_files_are_reported_not_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_sample_block(dir.path());
        let bdir = dir.path().join(&meta.ulid);
        let index = bdir.join(INDEX_FILE);
        let mut bytes = fs::read(&index).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x55;
        fs::write(&index, &bytes).unwrap();
        assert!(matches!(
            Block::open(&bdir),
            Err(StorageError::Corruption(_))
        ));
        bytes[n - 3] ^= 0x55;
        bytes[40] ^= 0x55; // inside the series entries
        fs::write(&index, &bytes).unwrap();
        if let Ok(block) = Block::open(&bdir) {
            for r in block.index.all_postings() {
                let _ = block.index.series(r);
            }
        }
    }
}

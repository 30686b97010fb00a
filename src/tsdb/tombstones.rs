//! Deletion marks for the immutable blocks.
//!
//! Owns: the per-block `tombstones` file and the interval arithmetic of deletions.
//! A block's data never changes in place: `delete_series` records (series, time range)
//! intervals here, reads filter them out, and `clean_tombstones` rewrites the block.
//! (The head applies deletions directly and logs them to the WAL.) Calls `model` only.
//!
//! File format: JSON `{"version":1,"series":[{"ref":R,"intervals":[[mint,maxt],...]}]}`
//! followed by a newline and the CRC32C of the JSON bytes as 8 hex digits. Written to a
//! temporary file, fsynced and renamed, so a crash leaves the old or the new file.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::index::SeriesRef;
use crate::storage::StorageError;

pub const FILE_NAME: &str = "tombstones";

/// Inclusive deleted time ranges per series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tombstones {
    by_series: HashMap<SeriesRef, Vec<(i64, i64)>>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    #[serde(rename = "ref")]
    series: SeriesRef,
    intervals: Vec<(i64, i64)>,
}

#[derive(Serialize, Deserialize)]
struct FileBody {
    version: u32,
    series: Vec<FileEntry>,
}

impl Tombstones {
    pub fn is_empty(&self) -> bool {
        self.by_series.is_empty()
    }

    /// Marks `[mint, maxt]` of `series` deleted, merging overlapping intervals.
    pub fn add(&mut self, series: SeriesRef, mint: i64, maxt: i64) {
        let list = self.by_series.entry(series).or_default();
        list.push((mint, maxt));
        list.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(list.len());
        for &(a, b) in list.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *list = merged;
    }

    /// The deleted intervals of one series (empty when none).
    pub fn intervals(&self, series: SeriesRef) -> &[(i64, i64)] {
        self.by_series.get(&series).map_or(&[], Vec::as_slice)
    }

    /// Whether the whole of `[mint, maxt]` is deleted for `series`.
    pub fn covers(&self, series: SeriesRef, mint: i64, maxt: i64) -> bool {
        self.intervals(series)
            .iter()
            .any(|&(a, b)| a <= mint && maxt <= b)
    }

    pub fn load(dir: &Path) -> Result<Tombstones, StorageError> {
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tombstones::default()),
            Err(e) => return Err(e.into()),
        };
        let corrupt = |why: &str| StorageError::Corruption(format!("{}: {why}", path.display()));
        let split = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .ok_or_else(|| corrupt("missing checksum"))?;
        let (json, crc) = (&bytes[..split], &bytes[split + 1..]);
        let crc = std::str::from_utf8(crc)
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| corrupt("bad checksum field"))?;
        if crc32c::crc32c(json) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let body: FileBody = serde_json::from_slice(json).map_err(|e| corrupt(&e.to_string()))?;
        let mut t = Tombstones::default();
        for entry in body.series {
            for (a, b) in entry.intervals {
                t.add(entry.series, a, b);
            }
        }
        Ok(t)
    }

    /// Writes the tombstones of the block in `dir` durably (removing the file when empty).
    pub fn store(&self, dir: &Path) -> Result<(), StorageError> {
        let path = dir.join(FILE_NAME);
        if self.is_empty() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => return Ok(()),
            }
        }
        let mut series: Vec<FileEntry> = self
            .by_series
            .iter()
            .map(|(&series, intervals)| FileEntry {
                series,
                intervals: intervals.clone(),
            })
            .collect();
        series.sort_by_key(|e| e.series);
        let json = serde_json::to_vec(&FileBody { version: 1, series })
            .map_err(|e| StorageError::Other(e.to_string()))?;
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            writeln!(f)?;
            write!(f, "{:08x}", crc32c::crc32c(&json))?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// Removes from `samples` (time-sorted) every sample inside one of `intervals`.
pub fn retain_live(samples: &mut Vec<crate::model::Sample>, intervals: &[(i64, i64)]) {
    if intervals.is_empty() {
        return;
    }
    samples.retain(|s| !is_deleted(intervals, s.t));
}

/// Whether one of `intervals` covers `t` (samples of either type).
pub fn is_deleted(intervals: &[(i64, i64)], t: i64) -> bool {
    intervals.iter().any(|&(a, b)| a <= t && t <= b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sample;

    #[test]
    fn intervals_merge() {
        let mut t = Tombstones::default();
        t.add(1, 10, 20);
        t.add(1, 21, 30);
        t.add(1, 50, 60);
        t.add(1, 55, 70);
        assert_eq!(t.intervals(1), &[(10, 30), (50, 70)]);
        assert!(t.covers(1, 12, 30));
        assert!(!t.covers(1, 12, 40));
        assert!(t.intervals(2).is_empty());
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Tombstones::load(dir.path()).unwrap().is_empty());
        let mut t = Tombstones::default();
        t.add(7, -5, 5);
        t.add(9, 0, i64::MAX);
        t.store(dir.path()).unwrap();
        assert_eq!(Tombstones::load(dir.path()).unwrap(), t);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Tombstones::load(dir.path()),
            Err(StorageError::Corruption(_))
        ));
        Tombstones::default().store(dir.path()).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn retain_live_filters() {
        let mut s: Vec<Sample> = (0..10).map(|i| Sample::new(i, 0.0)).collect();
        retain_live(&mut s, &[(2, 3), (8, 100)]);
        let ts: Vec<i64> = s.iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![0, 1, 4, 5, 6, 7]);
    }
}

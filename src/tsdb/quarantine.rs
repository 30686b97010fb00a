//! Quarantine: where start-up recovery puts the samples it removes for lying beyond the
//! future limit (ADR 0009).
//!
//! Owns: `<data>/quarantine/`, a directory of ordinary blocks that the database does not
//! load (it loads only block directories directly under the data directory). Recovery
//! removes a sample from the head or a block only after its copy here is durable, so a
//! node whose own clock was behind at start-up loses nothing: with the node stopped and
//! its clock right, moving a block from `quarantine/` into the data directory brings the
//! samples back. Calls `block` and `model`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::block::BlockWriter;
use crate::model::{merge_sorted_samples, Labels, Sample};
use crate::storage::StorageError;

/// The quarantine directory's name under the data directory.
pub const DIR_NAME: &str = "quarantine";

/// How many series the log line names.
const NAMED_SERIES: usize = 5;

/// Samples taken out of the database, by series.
#[derive(Default)]
pub struct Removed {
    by_series: BTreeMap<Labels, Vec<Sample>>,
}

/// What the log line says about the removed samples.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub samples: u64,
    pub series: usize,
    pub min_time: i64,
    pub max_time: i64,
    /// The first few series, for the operator to recognise the sender.
    pub named: String,
}

impl Removed {
    /// Adds time-ordered samples of one series (from the head or any block).
    pub fn add(&mut self, labels: Labels, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        let held = self.by_series.entry(labels).or_default();
        *held = merge_sorted_samples(std::mem::take(held), samples);
    }

    pub fn is_empty(&self) -> bool {
        self.by_series.is_empty()
    }

    pub fn summary(&self) -> Summary {
        let all = self.by_series.values().flatten();
        let mut named = String::new();
        for labels in self.by_series.keys().take(NAMED_SERIES) {
            let sep = if named.is_empty() { "" } else { ", " };
            let _ = write!(named, "{sep}{labels}");
        }
        if self.by_series.len() > NAMED_SERIES {
            named.push_str(", ...");
        }
        Summary {
            samples: all.clone().count() as u64,
            series: self.by_series.len(),
            min_time: all.clone().map(|s| s.t).min().unwrap_or(0),
            max_time: all.map(|s| s.t).max().unwrap_or(0),
            named,
        }
    }

    /// Writes the samples as one block under `<data_dir>/quarantine/` (fsynced before
    /// this returns) and returns the block's directory, or None when there is nothing.
    pub fn write(&self, data_dir: &Path) -> Result<Option<PathBuf>, StorageError> {
        if self.is_empty() {
            return Ok(None);
        }
        let parent = data_dir.join(DIR_NAME);
        let mut writer = BlockWriter::new(&parent)?;
        for (labels, samples) in &self.by_series {
            writer.add_series_samples(labels, samples)?;
        }
        Ok(writer
            .finish(1, Vec::new())?
            .map(|meta| parent.join(meta.ulid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::block::Block;
    use crate::tsdb::index::PostingsSource;

    #[test]
    fn removed_samples_become_a_loadable_block_outside_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let up = Labels::from_pairs([("__name__", "up")]);
        let mut removed = Removed::default();
        assert_eq!(removed.write(dir.path()).unwrap(), None);
        removed.add(up.clone(), vec![Sample::new(30, 3.0)]);
        removed.add(up.clone(), vec![Sample::new(10, 1.0), Sample::new(30, 3.0)]);
        removed.add(Labels::from_pairs([("__name__", "z")]), vec![]);
        assert_eq!(
            removed.summary(),
            Summary {
                samples: 2,
                series: 1,
                min_time: 10,
                max_time: 30,
                named: up.to_string(),
            }
        );
        let path = removed.write(dir.path()).unwrap().expect("a block");
        assert_eq!(path.parent(), Some(dir.path().join(DIR_NAME).as_path()));
        let block = Block::open(&path).unwrap();
        let refs = block.index.all_postings();
        let (labels, metas) = block.index.series(refs[0]).unwrap();
        assert_eq!(labels, up);
        let mut samples = Vec::new();
        block
            .samples(refs[0], &metas, i64::MIN, i64::MAX, &mut samples)
            .unwrap();
        assert_eq!(samples, vec![Sample::new(10, 1.0), Sample::new(30, 3.0)]);
    }
}

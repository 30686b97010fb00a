//! Retention: which blocks are old enough, or in excess of the size limit, to delete.
//!
//! Owns: the retention decision only (a pure function over block descriptions); the
//! database removes what it returns. Calls nothing else.

/// What retention needs to know about one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockExtent {
    pub id: String,
    pub min_time: i64,
    /// Exclusive.
    pub max_time: i64,
    pub size_bytes: u64,
}

/// Ids of blocks to delete: those whose data lies entirely before the newest block's
/// end minus `retention_ms`, then the oldest ones while the total size exceeds
/// `retention_bytes`. Zero disables a limit. `blocks` must be sorted oldest first.
pub fn expired(blocks: &[BlockExtent], retention_ms: i64, retention_bytes: u64) -> Vec<String> {
    let mut doomed = vec![false; blocks.len()];
    if retention_ms > 0 {
        if let Some(newest) = blocks.iter().map(|b| b.max_time).max() {
            let horizon = newest.saturating_sub(retention_ms);
            for (i, b) in blocks.iter().enumerate() {
                doomed[i] = b.max_time <= horizon;
            }
        }
    }
    if retention_bytes > 0 {
        let mut total: u64 = blocks
            .iter()
            .zip(&doomed)
            .filter(|(_, &d)| !d)
            .map(|(b, _)| b.size_bytes)
            .sum();
        for (i, b) in blocks.iter().enumerate() {
            if total <= retention_bytes {
                break;
            }
            if !doomed[i] {
                doomed[i] = true;
                total -= b.size_bytes;
            }
        }
    }
    blocks
        .iter()
        .zip(doomed)
        .filter(|(_, d)| *d)
        .map(|(b, _)| b.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: &str, min: i64, max: i64, size: u64) -> BlockExtent {
        BlockExtent {
            id: id.into(),
            min_time: min,
            max_time: max,
            size_bytes: size,
        }
    }

    #[test]
    fn time_retention_keeps_partially_covered_blocks() {
        let blocks = [b("a", 0, 10, 1), b("b", 10, 20, 1), b("c", 20, 30, 1)];
        assert_eq!(expired(&blocks, 20, 0), vec!["a"]);
        assert_eq!(expired(&blocks, 19, 0), vec!["a"]);
        assert_eq!(expired(&blocks, 9, 0), vec!["a", "b"]);
        assert!(expired(&blocks, 0, 0).is_empty());
    }

    #[test]
    fn size_retention_drops_oldest_first() {
        let blocks = [b("a", 0, 10, 5), b("b", 10, 20, 5), b("c", 20, 30, 5)];
        assert_eq!(expired(&blocks, 0, 10), vec!["a"]);
        assert_eq!(expired(&blocks, 0, 4), vec!["a", "b", "c"]);
        assert_eq!(expired(&blocks, 15, 100), vec!["a"]);
    }
}

//! Retention: which blocks are old enough, or in excess of the size limit, to delete.
//!
//! Owns: the retention decision only (a pure function over block descriptions and the
//! wall clock); the database removes what it returns. Calls nothing else.
//!
//! Time retention is measured from the wall clock, or from the newest block's end when
//! that is earlier (ADR 0009): a block reaching far into the future cannot move the
//! horizon past the wall clock, and a wall clock that jumps ahead cannot move it past
//! the data (an idle node keeps its newest data, as Prometheus does).

/// What retention needs to know about one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockExtent {
    pub id: String,
    pub min_time: i64,
    /// Exclusive.
    pub max_time: i64,
    pub size_bytes: u64,
}

/// Ids of blocks to delete: those whose data lies entirely before `retention_ms` ahead
/// of the earlier of `now_ms` and the newest block's end, then the oldest ones while the
/// total size exceeds `retention_bytes`. Zero disables a limit. `blocks` must be sorted
/// oldest first.
pub fn expired(
    blocks: &[BlockExtent],
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: u64,
) -> Vec<String> {
    let mut doomed = vec![false; blocks.len()];
    if retention_ms > 0 {
        if let Some(newest) = blocks.iter().map(|b| b.max_time).max() {
            let horizon = newest.min(now_ms).saturating_sub(retention_ms);
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

    /// A wall clock after every block's end: retention runs from the newest block.
    const LATER: i64 = 1_000;

    #[test]
    fn time_retention_keeps_partially_covered_blocks() {
        let blocks = [b("a", 0, 10, 1), b("b", 10, 20, 1), b("c", 20, 30, 1)];
        assert_eq!(expired(&blocks, LATER, 20, 0), vec!["a"]);
        assert_eq!(expired(&blocks, LATER, 19, 0), vec!["a"]);
        assert_eq!(expired(&blocks, LATER, 9, 0), vec!["a", "b"]);
        assert!(expired(&blocks, LATER, 0, 0).is_empty());
    }

    #[test]
    fn size_retention_drops_oldest_first() {
        let blocks = [b("a", 0, 10, 5), b("b", 10, 20, 5), b("c", 20, 30, 5)];
        assert_eq!(expired(&blocks, LATER, 0, 10), vec!["a"]);
        assert_eq!(expired(&blocks, LATER, 0, 4), vec!["a", "b", "c"]);
        assert_eq!(expired(&blocks, LATER, 15, 100), vec!["a"]);
    }

    #[test]
    fn a_far_future_block_never_expires_blocks_inside_the_window() {
        const HOUR: i64 = 3_600_000;
        const YEAR: i64 = 365 * 24 * HOUR;
        let now = 1_800_000_000_000;
        let blocks = [
            b("expired", now - 30 * HOUR, now - 25 * HOUR, 1),
            b("day-old", now - 24 * HOUR, now - 22 * HOUR, 1),
            b("recent", now - 2 * HOUR, now, 1),
            b("future", now + YEAR, now + YEAR + 1, 1),
        ];
        // 24h retention: only the block that ended 25h ago goes, whatever the future block.
        assert_eq!(expired(&blocks, now, 24 * HOUR, 0), vec!["expired"]);
        // A wall clock a year ahead cannot age out data the blocks do not reach past.
        assert_eq!(
            expired(&blocks[..3], now + YEAR, 24 * HOUR, 0),
            vec!["expired"]
        );
        // Both wrong at once is the one case that deletes: a year ahead, with data there.
        assert_eq!(
            expired(&blocks, now + YEAR, 24 * HOUR, 0),
            vec!["expired", "day-old", "recent"]
        );
    }
}

//! The cluster: which nodes exist (membership, join order) and which of them own a series
//! (placement).
//!
//! Owns: `placement` (pure: the partition key and jump-hash owners of a series, part of
//! the on-disk and on-wire contract). Calls only `model`.

pub mod placement;

//! The cluster: which nodes exist (membership, join order) and which of them own a series
//! (placement).
//!
//! Owns: `identity` (who this node is, kept in the data directory), `membership` (the
//! SWIM runtime over UDP: members and their state), `ring` (join order agreed without a
//! coordinator, ADR 0005) and `placement` (pure: the partition key and jump-hash owners
//! of a series, part of the on-disk and on-wire contract, ADR 0004), `keys` (the cluster
//! keys and the node-to-node HTTP credential) and `seal` (sealed gossip datagrams; both
//! ADR 0014). Calls only `model`.

pub mod identity;
pub mod keys;
pub mod membership;
pub mod placement;
pub mod ring;
pub mod seal;

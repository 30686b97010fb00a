//! Hint replay: delivers queued hints to their owners once gossip shows them alive.
//!
//! Owns: the background task that, on every membership change and at least once a
//! second, sends each alive owner its hints oldest first over the internal write, and
//! deletes a hint once the owner acknowledged it. A failed delivery stops that owner's
//! replay until the next round; a hint the owner refuses (4xx) or that fails its checksum
//! is dropped and counted. Calls `hints`, `peer` and the membership view.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::identity::NodeId;
use crate::cluster::membership::{MemberState, MembershipHandle};
use crate::peer::PeerClient;

use super::hints::{read_hint, HintStore};

const REPLAY_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the replay task; it ends when membership stops publishing views.
pub fn spawn(
    hints: Arc<HintStore>,
    membership: MembershipHandle,
    client: PeerClient,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut views = membership.subscribe();
        loop {
            replay_round(&hints, &membership, &client).await;
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(REPLAY_INTERVAL) => {}
            }
        }
    })
}

async fn replay_round(hints: &HintStore, membership: &MembershipHandle, client: &PeerClient) {
    let view = membership.view();
    let Ok(targets) = hints.targets() else { return };
    for target in targets {
        let alive = view
            .member(target)
            .is_some_and(|m| m.state == MemberState::Alive);
        let addr = view
            .ring
            .nodes_in_join_order()
            .iter()
            .find(|n| n.id == target)
            .map(|n| n.http_addr.clone());
        if let (true, Some(addr)) = (alive, addr) {
            replay_target(hints, client, target, &addr).await;
        }
    }
}

async fn replay_target(hints: &HintStore, client: &PeerClient, target: NodeId, addr: &str) {
    let files = match hints.pending(target) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(target_node = %target, error = %e, "cannot list hints");
            return;
        }
    };
    for file in files {
        let body = match read_hint(&file) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(target_node = %target, error = %e, "dropping a corrupt hint");
                remove(&file);
                hints.metrics().on_dropped(target);
                continue;
            }
        };
        match super::forward(client, addr, body, 0).await {
            Ok(_) => {
                remove(&file);
                hints.metrics().on_delivered(target);
            }
            Err(e) => {
                tracing::debug!(target_node = %target, error = %e, "hint delivery failed; retrying later");
                hints.metrics().on_failed_attempt(target);
                return;
            }
        }
    }
}

fn remove(file: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(file) {
        tracing::warn!(file = %file.display(), error = %e, "cannot remove a delivered hint");
    }
}

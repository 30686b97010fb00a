//! Sealed gossip datagrams: encrypted, authenticated, stamped and never accepted twice
//! (ADR 0014).
//!
//! Owns: the sealed frame `[SEALED_MARKER, nonce (24), ciphertext, tag (16)]`, whose
//! plaintext is `[sender's unix ms (8, LE), inner datagram]` and whose associated data is
//! the marker byte; XChaCha20-Poly1305 with every configured key's gossip sub-key tried
//! on the way in, and on the way out the primary key, or for a peer last heard sealing
//! with another configured key, that key (so a node that already has the next key
//! still talks to peers that do not yet: rotation by rolling restart); the replay guard (a stamp outside
//! `MAX_CLOCK_SKEW` is refused, and so is a nonce already seen within that window); and
//! the reasons a datagram is refused, as metric labels. I/O-free: the caller passes the
//! clock and the random nonce. Called by `membership`; calls `keys` and RustCrypto's
//! `chacha20poly1305`.

use std::collections::HashMap;
use std::net::SocketAddr;

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};

use crate::cluster::keys::{within_skew, ClusterKeys, MAX_CLOCK_SKEW};

/// First byte of a sealed datagram. Unsealed datagrams start with the protocol version
/// (1), so a node tells the two apart before trying any key.
pub const SEALED_MARKER: u8 = 0xA7;
pub const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const STAMP_BYTES: usize = 8;
/// Bytes a sealed datagram adds to the datagram it carries.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_BYTES + STAMP_BYTES + TAG_BYTES;
/// Most nonces remembered at once. Only authenticated datagrams are remembered, so only
/// members can fill it: at this size, over 8,000 datagrams a second within the window.
/// A full guard refuses datagrams rather than forgetting nonces still in the window.
const MAX_REMEMBERED_NONCES: usize = 1 << 19;
/// Most peers whose key is remembered; past it the memory starts afresh (peers then get
/// the primary key until they are heard from again).
const MAX_REMEMBERED_PEERS: usize = 4096;

/// Why a datagram was dropped before being parsed; `label()` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// A plain datagram reached a node that requires sealing.
    Unsealed,
    /// A sealed datagram reached a node without a key.
    SealedWithoutKey,
    /// Too short to hold a seal.
    Truncated,
    /// No configured key authenticates it (wrong key, or altered in transit).
    Unauthenticated,
    /// Its stamp is further than the allowed skew from this node's clock.
    OutsideWindow,
    /// Its nonce was already accepted within the window.
    Replayed,
    /// The replay guard is full.
    GuardFull,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Unsealed,
        Rejection::SealedWithoutKey,
        Rejection::Truncated,
        Rejection::Unauthenticated,
        Rejection::OutsideWindow,
        Rejection::Replayed,
        Rejection::GuardFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Unsealed => "unsealed",
            Rejection::SealedWithoutKey => "sealed_without_key",
            Rejection::Truncated => "truncated",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::OutsideWindow => "outside_window",
            Rejection::Replayed => "replayed",
            Rejection::GuardFull => "replay_guard_full",
        }
    }
}

/// Seals outgoing datagrams and opens incoming ones for one node.
pub struct Sealer {
    /// Primary first.
    ciphers: Vec<XChaCha20Poly1305>,
    guard: ReplayGuard,
    /// Per peer address, the index of the key its last authenticated datagram opened
    /// with: the key it is known to hold.
    peer_keys: HashMap<SocketAddr, usize>,
}

impl Sealer {
    pub fn new(keys: &ClusterKeys) -> Sealer {
        Sealer {
            ciphers: keys
                .all()
                .iter()
                .map(|k| XChaCha20Poly1305::new(&Key::from(*k.gossip_key())))
                .collect(),
            guard: ReplayGuard::default(),
            peer_keys: HashMap::new(),
        }
    }

    /// Appends the sealed form of `inner` for the peer at `to`, stamped `now_ms`, to
    /// `out`: sealed with the key the peer was last heard using, else the primary.
    pub fn seal(
        &self,
        inner: &[u8],
        to: SocketAddr,
        now_ms: u64,
        nonce: [u8; NONCE_BYTES],
        out: &mut Vec<u8>,
    ) {
        let key = self.peer_keys.get(&to).copied().unwrap_or(0);
        out.push(SEALED_MARKER);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(&now_ms.to_le_bytes());
        out.extend_from_slice(inner);
        let tag = self.ciphers[key]
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &[SEALED_MARKER],
                out[body_start..].as_mut().into(),
            )
            // Only fails for messages over 256 GiB.
            .unwrap_or_else(|_| unreachable!("datagram too large to seal"));
        out.extend_from_slice(&tag);
    }

    /// Authenticates, decrypts and checks freshness of a datagram from `from`; the inner
    /// datagram on success. Nothing of a refused datagram is parsed.
    pub fn open(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
    ) -> Result<Vec<u8>, Rejection> {
        let rest = match datagram.split_first() {
            Some((&SEALED_MARKER, rest)) => rest,
            _ => return Err(Rejection::Unsealed),
        };
        if rest.len() < NONCE_BYTES + STAMP_BYTES + TAG_BYTES {
            return Err(Rejection::Truncated);
        }
        let (nonce, rest) = rest.split_at(NONCE_BYTES);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Rejection::Truncated)?;
        let tag = Tag::try_from(tag).map_err(|_| Rejection::Truncated)?;
        let xnonce = XNonce::from(nonce);
        let mut plain = Vec::with_capacity(ciphertext.len());
        let opened_with = self.ciphers.iter().position(|cipher| {
            plain.clear();
            plain.extend_from_slice(ciphertext);
            cipher
                .decrypt_inout_detached(
                    &xnonce,
                    &[SEALED_MARKER],
                    plain.as_mut_slice().into(),
                    &tag,
                )
                .is_ok()
        });
        let Some(key) = opened_with else {
            return Err(Rejection::Unauthenticated);
        };
        let (stamp, inner) = plain.split_at(STAMP_BYTES);
        let stamp = u64::from_le_bytes(stamp.try_into().map_err(|_| Rejection::Truncated)?);
        self.guard.admit(nonce, stamp, now_ms)?;
        if self.peer_keys.len() >= MAX_REMEMBERED_PEERS && !self.peer_keys.contains_key(&from) {
            self.peer_keys.clear();
        }
        self.peer_keys.insert(from, key);
        Ok(inner.to_vec())
    }
}

/// Remembers the nonces of accepted datagrams while their stamps are in the window.
#[derive(Default)]
struct ReplayGuard {
    seen: HashMap<[u8; NONCE_BYTES], u64>,
    /// When (receiver's ms) stamps older than the window were last forgotten.
    last_prune_ms: u64,
}

impl ReplayGuard {
    fn admit(
        &mut self,
        nonce: [u8; NONCE_BYTES],
        stamp: u64,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        if !within_skew(stamp, now_ms) {
            return Err(Rejection::OutsideWindow);
        }
        self.prune(now_ms);
        if self.seen.contains_key(&nonce) {
            return Err(Rejection::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED_NONCES {
            return Err(Rejection::GuardFull);
        }
        self.seen.insert(nonce, stamp);
        Ok(())
    }

    /// Forgets nonces whose stamps have left the window (they would be refused by
    /// their stamp anyway), at most once a second unless the guard is full.
    fn prune(&mut self, now_ms: u64) {
        let full = self.seen.len() >= MAX_REMEMBERED_NONCES;
        if !full && now_ms.saturating_sub(self.last_prune_ms) < 1000 {
            return;
        }
        self.last_prune_ms = now_ms;
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        let oldest = now_ms.saturating_sub(skew);
        self.seen.retain(|_, stamp| *stamp >= oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn keys(bytes: &[[u8; 32]]) -> ClusterKeys {
        let text: String = bytes
            .iter()
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b) + "\n")
            .collect();
        ClusterKeys::parse(&text).unwrap()
    }

    const NOW: u64 = 1_800_000_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Sealed for a peer this sealer has not heard from.
    fn sealed(sealer: &Sealer, inner: &[u8], at: u64, nonce: u8) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(inner, addr(1), at, [nonce; NONCE_BYTES], &mut out);
        out
    }

    trait OpenFrom {
        fn open_at(&mut self, d: &[u8], at: u64) -> Result<Vec<u8>, Rejection>;
    }
    impl OpenFrom for Sealer {
        fn open_at(&mut self, d: &[u8], at: u64) -> Result<Vec<u8>, Rejection> {
            self.open(d, addr(2), at)
        }
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_hides_its_content() {
        let mut sender = Sealer::new(&keys(&[[1; 32]]));
        let mut receiver = Sealer::new(&keys(&[[1; 32]]));
        let inner = b"\x01\x01ring sync with node ids".to_vec();
        let d = sealed(&sender, &inner, NOW, 1);
        assert_eq!(d.len(), inner.len() + SEAL_OVERHEAD);
        assert_eq!(d[0], SEALED_MARKER);
        assert!(
            !d.windows(8).any(|w| w == b"ring syn"),
            "plaintext visible in the sealed datagram"
        );
        assert_eq!(receiver.open_at(&d, NOW + 5), Ok(inner.clone()));
        assert_eq!(receiver.open_at(&d, NOW + 6), Err(Rejection::Replayed));
        // The sender's own guard is separate: it never saw this nonce.
        assert_eq!(sender.open_at(&d, NOW), Ok(inner));
    }

    #[test]
    fn altered_truncated_unsealed_and_wrongly_keyed_datagrams_are_refused() {
        let sender = Sealer::new(&keys(&[[1; 32]]));
        let mut receiver = Sealer::new(&keys(&[[1; 32]]));
        let d = sealed(&sender, b"\x01\x00swim packet", NOW, 2);
        for at in 0..d.len() {
            let mut flipped = d.clone();
            flipped[at] ^= 0x01;
            let expected = if at == 0 {
                Rejection::Unsealed
            } else {
                Rejection::Unauthenticated
            };
            assert_eq!(receiver.open_at(&flipped, NOW), Err(expected), "byte {at}");
        }
        for len in 0..SEAL_OVERHEAD {
            let refused = receiver.open_at(&d[..len], NOW).unwrap_err();
            assert!(
                matches!(refused, Rejection::Truncated | Rejection::Unsealed),
                "{len}: {refused:?}"
            );
        }
        assert_eq!(
            receiver.open_at(&d[..d.len() - 1], NOW),
            Err(Rejection::Unauthenticated)
        );
        assert_eq!(
            receiver.open_at(b"\x01\x00plain", NOW),
            Err(Rejection::Unsealed)
        );
        let wrong = Sealer::new(&keys(&[[2; 32]]));
        assert_eq!(
            receiver.open_at(&sealed(&wrong, b"x", NOW, 3), NOW),
            Err(Rejection::Unauthenticated)
        );
        // None of the refusals used up the genuine datagram's nonce.
        assert!(receiver.open_at(&d, NOW).is_ok());
    }

    #[test]
    fn stamps_outside_the_clock_skew_window_are_refused() {
        let sender = Sealer::new(&keys(&[[1; 32]]));
        let mut receiver = Sealer::new(&keys(&[[1; 32]]));
        let skew = MAX_CLOCK_SKEW.as_millis() as u64;
        assert_eq!(
            receiver.open_at(&sealed(&sender, b"x", NOW - skew - 1, 4), NOW),
            Err(Rejection::OutsideWindow)
        );
        assert_eq!(
            receiver.open_at(&sealed(&sender, b"x", NOW + skew + 1, 5), NOW),
            Err(Rejection::OutsideWindow)
        );
        assert!(receiver
            .open_at(&sealed(&sender, b"x", NOW - skew, 6), NOW)
            .is_ok());
        assert!(receiver
            .open_at(&sealed(&sender, b"x", NOW + skew, 7), NOW)
            .is_ok());
    }

    #[test]
    fn a_replay_after_the_window_is_refused_by_its_stamp_and_the_guard_forgets() {
        let sender = Sealer::new(&keys(&[[1; 32]]));
        let mut receiver = Sealer::new(&keys(&[[1; 32]]));
        let skew = MAX_CLOCK_SKEW.as_millis() as u64;
        let d = sealed(&sender, b"x", NOW, 8);
        assert!(receiver.open_at(&d, NOW).is_ok());
        assert_eq!(receiver.open_at(&d, NOW + skew), Err(Rejection::Replayed));
        assert_eq!(
            receiver.open_at(&d, NOW + skew + 1),
            Err(Rejection::OutsideWindow)
        );
        // Another datagram later prunes the old nonce.
        assert!(receiver
            .open_at(
                &sealed(&sender, b"y", NOW + skew + 2_000, 9),
                NOW + skew + 2_000
            )
            .is_ok());
        assert_eq!(receiver.guard.seen.len(), 1);
    }

    #[test]
    fn rotation_every_configured_key_opens_only_the_primary_seals() {
        let old = Sealer::new(&keys(&[[1; 32]]));
        let mut both = Sealer::new(&keys(&[[2; 32], [1; 32]]));
        let mut new = Sealer::new(&keys(&[[2; 32]]));
        let mut old_receiver = Sealer::new(&keys(&[[1; 32]]));
        assert!(both.open_at(&sealed(&old, b"a", NOW, 10), NOW).is_ok());
        let from_both = sealed(&both, b"b", NOW, 11);
        assert!(new.open_at(&from_both, NOW).is_ok());
        assert_eq!(
            old_receiver.open_at(&from_both, NOW),
            Err(Rejection::Unauthenticated)
        );
        assert_eq!(
            new.open_at(&sealed(&old, b"c", NOW, 12), NOW),
            Err(Rejection::Unauthenticated)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut receiver = Sealer::new(&keys(&[[1; 32]]));
        // Deterministic, so a failure reproduces.
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(0x2545_f491);
        for len in 0..400usize {
            let mut bytes = vec![0u8; len];
            rand::RngCore::fill_bytes(&mut rng, &mut bytes);
            if let Some(first) = bytes.first_mut() {
                *first = SEALED_MARKER;
            }
            assert!(receiver.open_at(&bytes, NOW).is_err());
        }
    }

    #[test]
    fn a_node_answers_each_peer_with_the_key_that_peer_uses() {
        // Mid-rotation: `both` already seals with `new`, `old_only` has only `old`.
        let mut both = Sealer::new(&keys(&[[2; 32], [1; 32]]));
        let mut old_only = Sealer::new(&keys(&[[1; 32]]));
        let mut out = Vec::new();
        both.seal(b"announce", addr(7), NOW, [1; NONCE_BYTES], &mut out);
        assert_eq!(
            old_only.open(&out, addr(8), NOW),
            Err(Rejection::Unauthenticated)
        );
        // Once `old_only` has been heard from, `both` answers it with `old`.
        out.clear();
        old_only.seal(b"ping", addr(8), NOW, [2; NONCE_BYTES], &mut out);
        assert!(both.open(&out, addr(7), NOW).is_ok());
        out.clear();
        both.seal(b"ack", addr(7), NOW, [3; NONCE_BYTES], &mut out);
        assert_eq!(old_only.open(&out, addr(8), NOW), Ok(b"ack".to_vec()));
        // Other peers still get the primary key.
        out.clear();
        both.seal(b"x", addr(9), NOW, [4; NONCE_BYTES], &mut out);
        assert_eq!(
            old_only.open(&out, addr(8), NOW),
            Err(Rejection::Unauthenticated)
        );
    }
}

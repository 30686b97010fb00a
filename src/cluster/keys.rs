//! Cluster keys: the shared secrets that make a node a member (ADR 0014).
//!
//! Owns: the key file format (`--cluster-key-file`: base64 keys of 32 bytes, one a line,
//! the first one primary), the derivation of one independent sub-key per use (gossip
//! sealing, node-to-node HTTP) from each key, the allowed clock skew, and the
//! node-to-node HTTP credential (`X-Timbala-Cluster-Auth: v1 <unix ms> <tag>,<tag>..`:
//! one HMAC-SHA256 per configured key over the method, path, the stamp and the SHA-256
//! of the body, so a receiver that holds any one of the sender's keys accepts it, which
//! lets keys rotate by rolling restart). Pure apart from `load`, which
//! reads the file. Called by `membership` (gossip keys), `peer` (signs every internal
//! request) and `api::internal` (verifies them). Calls RustCrypto's `hmac`/`sha2` and
//! `base64`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Length of a cluster key, decoded.
pub const KEY_BYTES: usize = 32;
/// Most keys one file may hold: one primary plus the keys being rotated out.
pub const MAX_KEYS: usize = 8;
/// How far a sender's clock may be from the receiver's: a sealed datagram or signed
/// request stamped further away is refused. Also the replay window of gossip.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The header that carries the node-to-node HTTP credential.
pub const CLUSTER_AUTH_HEADER: &str = "x-timbala-cluster-auth";

/// Domain-separation labels: each use of a key gets its own derived key, so a value
/// produced for one use (a gossip seal) can never stand for another (an HTTP MAC).
const GOSSIP_LABEL: &[u8] = b"timbala gossip seal v1";
const HTTP_LABEL: &[u8] = b"timbala internal http v1";
/// Version tag of the HTTP credential; also the first field of the MAC input.
const HTTP_CREDENTIAL_VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// One configured key, as derived sub-keys (the key itself is not kept).
#[derive(Clone)]
pub struct ClusterKey {
    gossip: [u8; KEY_BYTES],
    http: [u8; KEY_BYTES],
}

impl ClusterKey {
    /// Derives the sub-keys of a 32-byte key.
    pub fn from_bytes(key: &[u8; KEY_BYTES]) -> ClusterKey {
        ClusterKey {
            gossip: derive(key, GOSSIP_LABEL),
            http: derive(key, HTTP_LABEL),
        }
    }

    /// The key that seals gossip datagrams (ChaCha20-Poly1305).
    pub fn gossip_key(&self) -> &[u8; KEY_BYTES] {
        &self.gossip
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// HMAC-SHA256(key, label): a one-block HKDF-Expand with the label as info.
fn derive(key: &[u8; KEY_BYTES], label: &[u8]) -> [u8; KEY_BYTES] {
    let mut mac = new_mac(key);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn new_mac(key: &[u8; KEY_BYTES]) -> HmacSha256 {
    // HMAC takes a key of any length; 32 bytes cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC key length"))
}

/// The keys of a node: the first (primary) seals and signs, all are accepted.
#[derive(Clone, Debug)]
pub struct ClusterKeys {
    keys: Vec<ClusterKey>,
}

/// A key file that cannot be used; the message names the file and the line.
#[derive(Debug)]
pub enum KeyFileError {
    Read(PathBuf, std::io::Error),
    NoKey,
    TooManyKeys(usize),
    NotBase64 { line: usize },
    WrongLength { line: usize, bytes: usize },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            KeyFileError::NoKey => f.write_str("holds no key (one base64 key a line)"),
            KeyFileError::TooManyKeys(n) => {
                write!(f, "holds {n} keys; at most {MAX_KEYS} are allowed")
            }
            KeyFileError::NotBase64 { line } => write!(f, "line {line} is not base64"),
            KeyFileError::WrongLength { line, bytes } => write!(
                f,
                "line {line} decodes to {bytes} bytes; a cluster key is {KEY_BYTES} bytes \
                 (make one with: head -c 32 /dev/urandom | base64)"
            ),
        }
    }
}

impl std::error::Error for KeyFileError {}

impl ClusterKeys {
    /// Parses a key file: one base64 key a line, first primary; blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<ClusterKeys, KeyFileError> {
        let mut keys = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| KeyFileError::NotBase64 { line: number })?;
            let key: [u8; KEY_BYTES] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyFileError::WrongLength {
                        line: number,
                        bytes: bytes.len(),
                    })?;
            keys.push(ClusterKey::from_bytes(&key));
        }
        match keys.len() {
            0 => Err(KeyFileError::NoKey),
            n if n > MAX_KEYS => Err(KeyFileError::TooManyKeys(n)),
            _ => Ok(ClusterKeys { keys }),
        }
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<ClusterKeys, KeyFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| KeyFileError::Read(path.to_path_buf(), e))?;
        ClusterKeys::parse(&text)
    }

    /// The key that seals and signs.
    pub fn primary(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// Every key, primary first: what is accepted on receipt.
    pub fn all(&self) -> &[ClusterKey] {
        &self.keys
    }

    /// The credential header value of an internal request sent at `now_ms`: one tag
    /// per configured key, primary first.
    pub fn sign_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
    ) -> String {
        let body_hash = Sha256::digest(body);
        let tags: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                let tag = request_mac(key, method, path_and_query, now_ms, &body_hash)
                    .finalize()
                    .into_bytes();
                base64::engine::general_purpose::STANDARD.encode(tag)
            })
            .collect();
        format!("{HTTP_CREDENTIAL_VERSION} {now_ms} {}", tags.join(","))
    }

    /// Checks an internal request's credential against every key.
    pub fn verify_request(
        &self,
        header: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), CredentialError> {
        let header = header.ok_or(CredentialError::Missing)?;
        let mut fields = header.split(' ');
        let (Some(HTTP_CREDENTIAL_VERSION), Some(stamp), Some(tags), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(CredentialError::Malformed);
        };
        let stamp: u64 = stamp.parse().map_err(|_| CredentialError::Malformed)?;
        let tags = tags
            .split(',')
            .take(MAX_KEYS + 1)
            .map(|tag| base64::engine::general_purpose::STANDARD.decode(tag))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CredentialError::Malformed)?;
        if tags.len() > MAX_KEYS {
            return Err(CredentialError::Malformed);
        }
        if !within_skew(stamp, now_ms) {
            return Err(CredentialError::OutsideWindow);
        }
        let body_hash = Sha256::digest(body);
        let valid = self.keys.iter().any(|key| {
            let expected = request_mac(key, method, path_and_query, stamp, &body_hash);
            tags.iter()
                .any(|tag| expected.clone().verify_slice(tag).is_ok())
        });
        if valid {
            Ok(())
        } else {
            Err(CredentialError::Invalid)
        }
    }
}

/// The MAC of one request; fields are separated by NUL, which none of them contains
/// (the method and path are HTTP tokens, the stamp is digits, the hash is last).
fn request_mac(
    key: &ClusterKey,
    method: &str,
    path_and_query: &str,
    stamp_ms: u64,
    body_hash: &[u8],
) -> HmacSha256 {
    let mut mac = new_mac(&key.http);
    for field in [
        HTTP_CREDENTIAL_VERSION.as_bytes(),
        method.as_bytes(),
        path_and_query.as_bytes(),
        stamp_ms.to_string().as_bytes(),
    ] {
        mac.update(field);
        mac.update(&[0]);
    }
    mac.update(body_hash);
    mac
}

/// True when a sender's stamp is within `MAX_CLOCK_SKEW` of the receiver's clock.
pub fn within_skew(stamp_ms: u64, now_ms: u64) -> bool {
    let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
    stamp_ms.abs_diff(now_ms) <= skew
}

/// Why an internal request's credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    Missing,
    Malformed,
    OutsideWindow,
    Invalid,
}

impl CredentialError {
    pub fn label(self) -> &'static str {
        match self {
            CredentialError::Missing => "missing",
            CredentialError::Malformed => "malformed",
            CredentialError::OutsideWindow => "outside_window",
            CredentialError::Invalid => "invalid",
        }
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialError::Missing => "no cluster credential (X-Timbala-Cluster-Auth)",
            CredentialError::Malformed => "malformed cluster credential",
            CredentialError::OutsideWindow => {
                "cluster credential timestamp outside the allowed clock skew"
            }
            CredentialError::Invalid => "cluster credential does not match any cluster key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn key_files_parse_with_a_primary_first_and_refuse_bad_lines() {
        let text = format!(
            "# rotated 2026-11\n{}\n\n  {}  \n",
            b64(&[1; 32]),
            b64(&[2; 32])
        );
        let keys = ClusterKeys::parse(&text).unwrap();
        assert_eq!(keys.all().len(), 2);
        assert_eq!(
            keys.primary().gossip_key(),
            ClusterKey::from_bytes(&[1; 32]).gossip_key()
        );
        assert!(matches!(ClusterKeys::parse(""), Err(KeyFileError::NoKey)));
        assert!(matches!(
            ClusterKeys::parse(&format!("{}\nnot base64!\n", b64(&[1; 32]))),
            Err(KeyFileError::NotBase64 { line: 2 })
        ));
        let short = ClusterKeys::parse(&b64(&[1; 16])).unwrap_err();
        assert!(matches!(
            short,
            KeyFileError::WrongLength { line: 1, bytes: 16 }
        ));
        assert!(short.to_string().contains("32 bytes"), "{short}");
        assert!(matches!(
            ClusterKeys::parse(&b64(&[1; 33])),
            Err(KeyFileError::WrongLength { bytes: 33, .. })
        ));
        let many: String = (0..=MAX_KEYS as u8).map(|i| b64(&[i; 32]) + "\n").collect();
        assert!(matches!(
            ClusterKeys::parse(&many),
            Err(KeyFileError::TooManyKeys(9))
        ));
    }

    #[test]
    fn each_use_gets_its_own_derived_key() {
        let key = ClusterKey::from_bytes(&[7; 32]);
        assert_ne!(key.gossip, key.http);
        assert_ne!(&key.gossip, &[7; 32]);
        // Stable: the derivation is part of the wire contract.
        assert_eq!(ClusterKey::from_bytes(&[7; 32]).gossip, key.gossip);
    }

    #[test]
    fn a_signed_request_verifies_only_unchanged_and_fresh() {
        let keys = ClusterKeys::parse(&b64(&[3; 32])).unwrap();
        let now = 1_800_000_000_000u64;
        let body = b"batch".to_vec();
        let header = keys.sign_request("POST", "/internal/v1/write", &body, now);
        let verify = |h: Option<&str>, method: &str, path: &str, body: &[u8], at: u64| {
            keys.verify_request(h, method, path, body, at)
        };
        let at = |when: u64| verify(Some(&header), "POST", "/internal/v1/write", &body, when);
        assert_eq!(at(now), Ok(()));
        // Clock skew within the window is fine, beyond it is not.
        assert_eq!(at(now + 59_000), Ok(()));
        assert_eq!(at(now - 59_000), Ok(()));
        assert_eq!(at(now + 61_000), Err(CredentialError::OutsideWindow));
        assert_eq!(at(now - 61_000), Err(CredentialError::OutsideWindow));
        // Another body, path or method: refused.
        assert_eq!(
            verify(Some(&header), "POST", "/internal/v1/write", b"batcH", now),
            Err(CredentialError::Invalid)
        );
        assert_eq!(
            verify(Some(&header), "POST", "/internal/v1/read-local", &body, now),
            Err(CredentialError::Invalid)
        );
        assert_eq!(
            verify(Some(&header), "PUT", "/internal/v1/write", &body, now),
            Err(CredentialError::Invalid)
        );
        // A re-stamped header without the key does not verify.
        let restamped = header.replace(&now.to_string(), &(now + 1).to_string());
        assert_eq!(
            verify(Some(&restamped), "POST", "/internal/v1/write", &body, now),
            Err(CredentialError::Invalid)
        );
        assert_eq!(
            verify(None, "POST", "/x", &body, now),
            Err(CredentialError::Missing)
        );
        for bad in [
            "",
            "v1",
            "v1 12",
            "v2 12 AAAA",
            "v1 x AAAA",
            "v1 12 !!",
            "v1 12 AA== extra",
        ] {
            assert_eq!(
                verify(Some(bad), "POST", "/x", &body, now),
                Err(CredentialError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_configured_key_is_accepted_and_only_those() {
        let old = ClusterKeys::parse(&b64(&[1; 32])).unwrap();
        let new_and_old =
            ClusterKeys::parse(&format!("{}\n{}", b64(&[2; 32]), b64(&[1; 32]))).unwrap();
        let new = ClusterKeys::parse(&b64(&[2; 32])).unwrap();
        let other = ClusterKeys::parse(&b64(&[9; 32])).unwrap();
        let now = 1_800_000_000_000u64;
        let signed_old = old.sign_request("POST", "/p", b"", now);
        let signed_new = new_and_old.sign_request("POST", "/p", b"", now);
        let accepts = |receiver: &ClusterKeys, credential: &str| {
            receiver
                .verify_request(Some(credential), "POST", "/p", b"", now)
                .is_ok()
        };
        // Mid-rotation every pair that shares a key accepts each other.
        assert!(accepts(&new_and_old, &signed_old));
        assert!(accepts(&old, &signed_new));
        assert!(accepts(&new, &signed_new));
        // Pairs that share none do not.
        assert!(!accepts(&new, &signed_old));
        assert_eq!(
            other.verify_request(Some(&signed_new), "POST", "/p", b"", now),
            Err(CredentialError::Invalid)
        );
    }
}

//! HTTP middleware of the web configuration: basic authentication with bcrypt hashes,
//! the `rate_limit` token bucket and the configured response headers, answering as
//! exporter-toolkit does (401 with `WWW-Authenticate: Basic`, 429).
//!
//! Owns: parsing `Authorization: Basic`, the cache of checked passwords (bcrypt at cost
//! 10 takes tens of milliseconds of CPU; exporter-toolkit caches too), running bcrypt one
//! at a time on a blocking thread, and the token bucket. Reads the live configuration
//! from `WebSecurity`; calls bcrypt and sha2.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::file::RateLimit;
use super::WebSecurity;

/// Checked (user, hash, password) outcomes kept; as exporter-toolkit's cache.
const PASSWORD_CACHE_ENTRIES: usize = 100;

/// A bcrypt hash (cost 10) of a password nobody has, checked for unknown users so that
/// an unknown user costs as much time as a wrong password (no user enumeration).
const UNKNOWN_USER_HASH: &str = "$2y$10$equR1jniuT6y9HlrAiFm.etQQDPzi93xHicqaD.n7LijEo7W4bEeu";

/// Public-route guard: rate limit first, then basic authentication when users are
/// configured. Internal routes never pass here (they are guarded by the cluster
/// credential, ADR 0013).
pub async fn guard_public(
    State(web): State<WebSecurity>,
    request: Request,
    next: Next,
) -> Response {
    let active = web.active();
    if let Some(bucket) = &active.rate_limiter {
        if !bucket.allow(Instant::now()) {
            return plain(StatusCode::TOO_MANY_REQUESTS);
        }
    }
    if active.config.users.is_empty() {
        return next.run(request).await;
    }
    let authorised = match basic_credentials(request.headers()) {
        Some((user, password)) => {
            let hash = active.config.users.get(&user).cloned();
            web.passwords().check(&user, hash, &password).await
        }
        None => false,
    };
    if !authorised {
        web.metrics().basic_auth_failures.inc();
        let mut response = plain(StatusCode::UNAUTHORIZED);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return response;
    }
    next.run(request).await
}

/// Adds the configured `http_server_config.headers` to every response.
pub async fn add_headers(State(web): State<WebSecurity>, request: Request, next: Next) -> Response {
    let active = web.active();
    let mut response = next.run(request).await;
    for (name, value) in &active.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The configured headers as header values (checked when the file was loaded).
pub fn header_values(headers: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::try_from(name.as_str()).ok()?,
                HeaderValue::try_from(value.as_str()).ok()?,
            ))
        })
        .collect()
}

/// Go's `http.Error` body: the status text and a newline, as plain text.
fn plain(status: StatusCode) -> Response {
    let text = format!("{}\n", status.canonical_reason().unwrap_or(""));
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// User and password of an `Authorization: Basic` header, as Go's `Request.BasicAuth`
/// reads it (scheme case-insensitive, standard base64, split at the first colon).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Outcomes of bcrypt checks by a digest of (user, hash, password): a changed hash in a
/// reloaded file is a different key, so a cached success never outlives its hash. Only
/// digests are kept, not passwords.
pub struct PasswordCache {
    outcomes: Mutex<HashMap<[u8; 32], bool>>,
    /// One bcrypt at a time, as exporter-toolkit: a flood of wrong passwords costs one
    /// core, and cached users are not slowed down by it.
    bcrypt_turn: tokio::sync::Mutex<()>,
}

impl Default for PasswordCache {
    fn default() -> Self {
        PasswordCache {
            outcomes: Mutex::new(HashMap::new()),
            bcrypt_turn: tokio::sync::Mutex::new(()),
        }
    }
}

impl PasswordCache {
    /// Whether `password` is `user`'s (`hash` None: the user is unknown, and the check
    /// fails after the same work as a wrong password).
    pub async fn check(&self, user: &str, hash: Option<String>, password: &str) -> bool {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| UNKNOWN_USER_HASH.to_string());
        let key = cache_key(user, &hash, password);
        if let Some(outcome) = self.cached(&key) {
            return outcome && known;
        }
        let _turn = self.bcrypt_turn.lock().await;
        // Another request may have checked the same password while this one waited.
        if let Some(outcome) = self.cached(&key) {
            return outcome && known;
        }
        let password = password.to_string();
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let outcome = matches && known;
        self.remember(key, outcome);
        outcome
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn remember(&self, key: [u8; 32], outcome: bool) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if outcomes.len() >= PASSWORD_CACHE_ENTRIES {
            // Drop a tenth; the map's per-process random order makes the choice arbitrary.
            let victims: Vec<[u8; 32]> = outcomes
                .keys()
                .take(PASSWORD_CACHE_ENTRIES / 10)
                .copied()
                .collect();
            for victim in victims {
                outcomes.remove(&victim);
            }
        }
        outcomes.insert(key, outcome);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.outcomes.lock().map(|o| o.len()).unwrap_or(0)
    }
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut digest = sha2::Sha256::new();
    for part in [user, hash, password] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&digest.finalize());
    key
}

/// exporter-toolkit's `rate_limit`: `burst` requests at once, refilled at one per
/// `interval`; requests beyond it get 429.
pub struct TokenBucket {
    interval: Duration,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst);
        TokenBucket {
            interval: limit.interval,
            burst,
            state: Mutex::new((burst, now)),
        }
    }

    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let refilled =
            now.saturating_duration_since(last).as_secs_f64() / self.interval.as_secs_f64();
        let tokens = (tokens + refilled).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("header"),
        );
        h
    }

    #[test]
    fn basic_credentials_as_go_reads_them() {
        // "alice:pa:ss" — the password may contain colons.
        let h = headers_with("Basic YWxpY2U6cGE6c3M=");
        assert_eq!(
            basic_credentials(&h),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert!(basic_credentials(&headers_with("basic YWxpY2U6cGE6c3M=")).is_some());
        assert_eq!(
            basic_credentials(&headers_with("Bearer YWxpY2U6cGE6c3M=")),
            None
        );
        assert_eq!(basic_credentials(&headers_with("Basic !!!")), None);
        // No colon: not credentials.
        assert_eq!(basic_credentials(&headers_with("Basic YWxpY2U=")), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn passwords_are_checked_with_bcrypt_and_cached() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let cache = PasswordCache::default();
        assert!(cache.check("alice", Some(hash.clone()), "s3cret").await);
        assert!(!cache.check("alice", Some(hash.clone()), "wrong").await);
        assert_eq!(cache.len(), 2);
        // Cached outcomes answer again without changing.
        assert!(cache.check("alice", Some(hash.clone()), "s3cret").await);
        assert!(!cache.check("alice", Some(hash.clone()), "wrong").await);
        // Another user with the same hash is another key.
        assert!(cache.check("bob", Some(hash), "s3cret").await);
        // A changed hash invalidates the old password.
        let new_hash = bcrypt::hash("n3w", 4).expect("hash");
        assert!(!cache.check("alice", Some(new_hash.clone()), "s3cret").await);
        assert!(cache.check("alice", Some(new_hash), "n3w").await);
    }

    #[tokio::test]
    async fn unknown_users_fail_even_with_the_dummy_password() {
        assert!(UNKNOWN_USER_HASH.parse::<bcrypt::HashParts>().is_ok());
        let cache = PasswordCache::default();
        assert!(!cache.check("mallory", None, "").await);
        assert!(!cache.check("mallory", None, "fakepassword").await);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let hash = bcrypt::hash("x", 4).expect("hash");
        let cache = PasswordCache::default();
        for i in 0..(PASSWORD_CACHE_ENTRIES + 25) {
            cache
                .check("alice", Some(hash.clone()), &i.to_string())
                .await;
        }
        assert!(cache.len() <= PASSWORD_CACHE_ENTRIES);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_one_per_interval() {
        let start = Instant::now();
        let bucket = TokenBucket::new(
            RateLimit {
                interval: Duration::from_secs(1),
                burst: 3,
            },
            start,
        );
        assert!((0..3).all(|_| bucket.allow(start)));
        assert!(!bucket.allow(start));
        assert!(!bucket.allow(start + Duration::from_millis(500)));
        assert!(bucket.allow(start + Duration::from_millis(1000)));
        assert!(!bucket.allow(start + Duration::from_millis(1100)));
        // Never more than the burst, however long it was idle.
        let later = start + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.allow(later)));
        assert!(!bucket.allow(later));
    }
}

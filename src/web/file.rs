//! The web configuration file, in the format of Prometheus's exporter-toolkit
//! (`docs/web-configuration.md`), so the file an operator already gives Prometheus with
//! `--web.config.file` works here unchanged.
//!
//! Owns: reading and strictly checking the file (unknown fields, unknown enum values,
//! headers outside exporter-toolkit's list and malformed bcrypt hashes are errors, as in
//! exporter-toolkit), resolving relative paths against the file's directory, and the
//! plain settings the rest of `web` builds from. Pure apart from reading the one file;
//! certificates are read by `tls`. Calls serde, the YAML parser and bcrypt's hash parser.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Why a web configuration cannot be used. The node refuses to start with one, and a
/// reload that hits one keeps the previous configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebConfigError {
    /// A file (the configuration or a file it names) cannot be read.
    Read { path: PathBuf, reason: String },
    /// The YAML does not fit the format (syntax, unknown field, wrong type).
    Syntax { path: PathBuf, reason: String },
    /// The settings parse but cannot work together, or name unknown values.
    Invalid(String),
    /// Certificates, keys or TLS parameters that the TLS library refuses.
    Tls(String),
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebConfigError::Read { path, reason } => {
                write!(f, "cannot read {}: {reason}", path.display())
            }
            WebConfigError::Syntax { path, reason } => {
                write!(f, "web config {}: {reason}", path.display())
            }
            WebConfigError::Invalid(reason) => write!(f, "web config: {reason}"),
            WebConfigError::Tls(reason) => write!(f, "web config TLS: {reason}"),
        }
    }
}

impl std::error::Error for WebConfigError {}

fn invalid(reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid(reason.into())
}

/// PEM text that is either inline in the file or in a file it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Inline(String),
}

impl PemSource {
    /// The PEM bytes (reads the file each time: a reload sees a rotated certificate).
    pub fn read(&self) -> Result<Vec<u8>, WebConfigError> {
        match self {
            PemSource::File(path) => std::fs::read(path).map_err(|e| WebConfigError::Read {
                path: path.clone(),
                reason: e.to_string(),
            }),
            PemSource::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    fn file(&self) -> Option<&Path> {
        match self {
            PemSource::File(path) => Some(path),
            PemSource::Inline(_) => None,
        }
    }
}

/// Go's `tls.ClientAuthType` values, by their names in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Asks for a certificate, accepts none, does not verify one.
    RequestClientCert,
    /// Requires a certificate, does not verify it.
    RequireAnyClientCert,
    /// Verifies a certificate when one is sent.
    VerifyClientCertIfGiven,
    /// Requires a certificate signed by the client CA: mutual TLS.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(name: &str) -> Result<ClientAuth, WebConfigError> {
        Ok(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // "RequireClientCert" is exporter-toolkit's older spelling.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            other => return Err(invalid(format!("invalid client_auth_type {other:?}"))),
        })
    }

    /// Whether client certificates are checked against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }

    /// Whether a connection without a client certificate is refused.
    pub fn requires_certificate(self) -> bool {
        matches!(
            self,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// A TLS protocol version named as in the file (`TLS10` … `TLS13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(field: &str, name: &str) -> Result<TlsVersion, WebConfigError> {
        Ok(match name {
            "TLS10" => TlsVersion::Tls10,
            "TLS11" => TlsVersion::Tls11,
            "TLS12" => TlsVersion::Tls12,
            "TLS13" => TlsVersion::Tls13,
            other => return Err(invalid(format!("{field}: unknown TLS version {other:?}"))),
        })
    }
}

/// `tls_server_config`, checked and with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PemSource,
    pub key: PemSource,
    pub client_ca: Option<PemSource>,
    pub client_auth: ClientAuth,
    /// When set, a client certificate must carry one of these subject alternative names.
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go names of TLS 1.2 cipher suites; empty: the library's defaults.
    pub cipher_suites: Vec<String>,
    pub prefer_server_cipher_suites: bool,
    /// Go names of key-exchange curves; empty: the library's defaults.
    pub curve_preferences: Vec<String>,
}

/// `rate_limit`: a token bucket in front of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// One request's worth of tokens comes back per interval.
    pub interval: Duration,
    pub burst: u32,
}

/// One parsed and checked web configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Accepted for compatibility; Timbala serves HTTP/1.1 (ADR 0013).
    pub http2: bool,
    /// Response headers to add, from exporter-toolkit's allowed list.
    pub headers: Vec<(String, String)>,
    /// User name to bcrypt hash. Empty: no basic authentication.
    pub users: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
}

impl WebConfig {
    /// Reads and checks the file at `path`. Relative paths inside it are relative to its
    /// directory, as in exporter-toolkit.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        WebConfig::parse(&text, base).map_err(|e| match e {
            WebConfigError::Syntax { reason, .. } => WebConfigError::Syntax {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Checks the text of a web configuration; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<WebConfig, WebConfigError> {
        // An empty file (or one with only comments) is valid and means "all defaults".
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            serde_yaml_ng::from_str::<Option<RawFile>>(text)
                .map_err(|e| WebConfigError::Syntax {
                    path: PathBuf::new(),
                    reason: e.to_string(),
                })?
                .unwrap_or_default()
        };
        let http = raw.http_server_config.unwrap_or_default();
        let headers = check_headers(http.headers.unwrap_or_default())?;
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_bcrypt_hash(hash)
                .map_err(|e| invalid(format!("basic_auth_users: {user}: {e}")))?;
        }
        Ok(WebConfig {
            tls: raw
                .tls_server_config
                .map(|t| t.resolve(base))
                .transpose()?
                .flatten(),
            http2: http.http2.unwrap_or(true),
            headers,
            users,
            rate_limit: raw
                .rate_limit
                .map(RawRateLimit::resolve)
                .transpose()?
                .flatten(),
        })
    }

    /// Files whose change means the configuration must be read again (the certificates
    /// and CA it names; the configuration file itself is watched by the caller).
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(PemSource::file)
            .map(Path::to_path_buf)
            .collect()
    }
}

/// The response headers exporter-toolkit lets a web config set, with the only values
/// allowed for those that have a fixed set (empty: any value).
const CONFIGURABLE_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn check_headers(
    headers: BTreeMap<String, Scalar>,
) -> Result<Vec<(String, String)>, WebConfigError> {
    headers
        .into_iter()
        .map(|(name, Scalar(value))| {
            let Some((_, allowed)) = CONFIGURABLE_HEADERS.iter().find(|(h, _)| *h == name) else {
                return Err(invalid(format!(
                    "HTTP header {name:?} can not be configured"
                )));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(invalid(format!(
                    "invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"
                )));
            }
            if axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(invalid(format!(
                    "{name}: {value:?} is not a valid header value"
                )));
            }
            Ok((name, value))
        })
        .collect()
}

/// Refuses a string that is not a bcrypt hash, as exporter-toolkit does at start-up
/// (`bcrypt.Cost`), so a typo is found before the first login fails.
fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    hash.parse::<bcrypt::HashParts>()
        .map(|_| ())
        .map_err(|e| format!("not a bcrypt hash ({e})"))
}

/// A YAML scalar read as text, as Go's YAML decoder does for a `string` target
/// (`X-XSS-Protection: 1` is the string "1").
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Scalar(match Any::deserialize(d)? {
            Any::Text(s) => s,
            Any::Int(i) => i.to_string(),
            Any::Float(x) => x.to_string(),
            Any::Bool(b) => b.to_string(),
        }))
    }
}

/// A mapping whose keys must be unique (Go's strict YAML refuses a user or header given
/// twice; a plain map would silently keep the last).
fn unique_keys<'de, D, V>(d: D) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = Option<BTreeMap<String, V>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("{key:?} is given twice")));
                }
                out.insert(key, value);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(Unique(std::marker::PhantomData))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    #[serde(default, deserialize_with = "unique_keys")]
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default, deserialize_with = "unique_keys")]
    headers: Option<BTreeMap<String, Scalar>>,
}

impl fmt::Debug for RawHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawHttp")
            .field("http2", &self.http2)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<Scalar>,
    burst: Option<i64>,
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl RawRateLimit {
    /// None when the interval is zero (exporter-toolkit: "set to 0 to disable").
    fn resolve(self) -> Result<Option<RateLimit>, WebConfigError> {
        let interval = match self.interval {
            None => return Ok(None),
            Some(Scalar(text)) => parse_go_duration(&text)
                .map_err(|e| invalid(format!("rate_limit.interval: {e}")))?,
        };
        if interval.is_zero() {
            return Ok(None);
        }
        let burst = self.burst.unwrap_or(0);
        let burst = u32::try_from(burst)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| invalid(format!("rate_limit.burst must be at least 1, not {burst}")))?;
        Ok(Some(RateLimit { interval, burst }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

/// A path or inline text from the file; the path wins when both are set (as in
/// exporter-toolkit), empty strings count as unset.
fn pem_source(file: Option<String>, inline: Option<String>, base: &Path) -> Option<PemSource> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    match (nonempty(file), nonempty(inline)) {
        (Some(path), _) => Some(PemSource::File(base.join(path))),
        (None, Some(text)) => Some(PemSource::Inline(text)),
        (None, None) => None,
    }
}

impl RawTls {
    /// None when no TLS field is set (exporter-toolkit's `IsEnabled`): plain HTTP.
    fn resolve(self, base: &Path) -> Result<Option<TlsSettings>, WebConfigError> {
        let client_auth_name = self.client_auth_type.unwrap_or_default();
        let cert = pem_source(self.cert_file, self.cert, base);
        let key = pem_source(self.key_file, self.key, base);
        let client_ca = pem_source(self.client_ca_file, self.client_ca, base);
        if cert.is_none() && key.is_none() && client_ca.is_none() && client_auth_name.is_empty() {
            return Ok(None);
        }
        let cert = cert.ok_or_else(|| invalid("missing one of cert or cert_file"))?;
        let key = key.ok_or_else(|| invalid("missing one of key or key_file"))?;
        let client_auth = ClientAuth::parse(&client_auth_name)?;
        if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
            return Err(invalid(
                "client_ca_file is set but client_auth_type is NoClientCert: \
                 set client_auth_type (e.g. RequireAndVerifyClientCert)",
            ));
        }
        if client_auth.verifies() && client_ca.is_none() {
            // Go would fall back to the system's CA pool; a cluster's clients are
            // verified against its own CA, so it must be named.
            return Err(invalid(format!(
                "client_auth_type {client_auth_name} verifies client certificates: \
                 set client_ca_file (or client_ca)"
            )));
        }
        let min_version = match self.min_version.as_deref() {
            None | Some("") => TlsVersion::Tls12,
            Some(v) => TlsVersion::parse("min_version", v)?,
        };
        let max_version = match self.max_version.as_deref() {
            None | Some("") => TlsVersion::Tls13,
            Some(v) => TlsVersion::parse("max_version", v)?,
        };
        if min_version > max_version {
            return Err(invalid("min_version is above max_version"));
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            client_ca,
            client_auth,
            client_allowed_sans: self.client_allowed_sans,
            min_version,
            max_version,
            cipher_suites: self.cipher_suites.unwrap_or_default(),
            prefer_server_cipher_suites: self.prefer_server_cipher_suites.unwrap_or(true),
            curve_preferences: self.curve_preferences.unwrap_or_default(),
        }))
    }
}

/// Parses a Go duration (`time.ParseDuration`: `1s`, `1.5h`, `300ms`, `1h30m`, `0`),
/// the format of exporter-toolkit's `rate_limit.interval`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return Err(bad());
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::parse(text, Path::new("/etc/timbala"))
    }

    #[test]
    fn empty_file_means_plain_http_without_users() {
        for text in ["", "# nothing\n", "---\n"] {
            let c = parse(text).expect("valid");
            assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
            assert!(c.http2);
        }
    }

    #[test]
    fn prometheus_style_file_with_tls_and_users() {
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n\
             basic_auth_users:\n  alice: {HASH}\n"
        ))
        .expect("valid");
        let tls = c.tls.expect("tls on");
        assert_eq!(tls.cert, PemSource::File("/etc/timbala/server.crt".into()));
        assert_eq!(tls.key, PemSource::File("/abs/server.key".into()));
        assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert!(tls.prefer_server_cipher_suites);
        assert_eq!(c.users.get("alice").map(String::as_str), Some(HASH));
    }

    #[test]
    fn unknown_fields_are_errors_as_with_strict_yaml() {
        let err = parse("tls_server_config:\n  cert_filse: server.crt\n").unwrap_err();
        assert!(matches!(err, WebConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("cert_filse"), "{err}");
        assert!(parse("basic_auth: {}\n").is_err());
        assert!(parse("http_server_config:\n  http3: true\n").is_err());
    }

    #[test]
    fn tls_needs_both_certificate_and_key() {
        let err = parse("tls_server_config:\n  cert_file: a.crt\n").unwrap_err();
        assert_eq!(err, invalid("missing one of key or key_file"));
        let err = parse("tls_server_config:\n  client_auth_type: RequireAnyClientCert\n");
        assert_eq!(
            err.unwrap_err(),
            invalid("missing one of cert or cert_file")
        );
        let inline = parse("tls_server_config:\n  cert: PEM\n  key: KEY\n").expect("inline");
        assert_eq!(
            inline.tls.expect("tls").cert,
            PemSource::Inline("PEM".into())
        );
    }

    #[test]
    fn client_auth_values_and_their_rules() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        for (name, want) in [
            ("RequestClientCert", ClientAuth::RequestClientCert),
            ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
            ("RequireClientCert", ClientAuth::RequireAnyClientCert),
        ] {
            let c = parse(&format!("{base}  client_auth_type: {name}\n")).expect(name);
            assert_eq!(c.tls.expect("tls").client_auth, want);
        }
        let mtls = parse(&format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        ))
        .expect("mtls");
        let tls = mtls.tls.expect("tls");
        assert!(tls.client_auth.verifies() && tls.client_auth.requires_certificate());
        assert_eq!(
            tls.client_ca,
            Some(PemSource::File("/etc/timbala/ca.crt".into()))
        );
        assert!(parse(&format!("{base}  client_auth_type: Sometimes\n")).is_err());
        // A CA without a policy, or a verifying policy without a CA, cannot work.
        assert!(parse(&format!("{base}  client_ca_file: ca.crt\n")).is_err());
        assert!(parse(&format!(
            "{base}  client_auth_type: VerifyClientCertIfGiven\n"
        ))
        .is_err());
    }

    #[test]
    fn tls_versions() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let c = parse(&format!("{base}  min_version: TLS13\n")).expect("valid");
        assert_eq!(c.tls.expect("tls").min_version, TlsVersion::Tls13);
        assert!(parse(&format!("{base}  min_version: TLS111\n")).is_err());
        assert!(parse(&format!(
            "{base}  min_version: TLS13\n  max_version: TLS12\n"
        ))
        .is_err());
    }

    #[test]
    fn headers_follow_exporter_toolkits_list() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
             X-XSS-Protection: 1\n    Strict-Transport-Security: max-age=31536000\n",
        )
        .expect("valid");
        assert!(c.headers.contains(&("X-XSS-Protection".into(), "1".into())));
        assert_eq!(c.headers.len(), 3);
        assert!(parse("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").is_err());
        assert!(parse("http_server_config:\n  headers:\n    Server: timbala\n").is_err());
        let c = parse("http_server_config:\n  http2: false\n").expect("valid");
        assert!(!c.http2);
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        let err = parse("basic_auth_users:\n  alice: secret\n").unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
        assert!(parse("basic_auth_users:\n  alice: $2y$10$short\n").is_err());
        assert!(parse(&format!(
            "basic_auth_users:\n  alice: {HASH}\n  alice: {HASH}\n"
        ))
        .is_err());
    }

    #[test]
    fn rate_limit() {
        let c = parse("rate_limit:\n  interval: 1s\n  burst: 20\n").expect("valid");
        let want = RateLimit {
            interval: Duration::from_secs(1),
            burst: 20,
        };
        assert_eq!(c.rate_limit, Some(want));
        let off = parse("rate_limit:\n  interval: 0\n  burst: 20\n").expect("valid");
        assert_eq!(off.rate_limit, None);
        assert!(parse("rate_limit:\n  interval: 1s\n  burst: 0\n").is_err());
        assert!(parse("rate_limit:\n  interval: soon\n  burst: 1\n").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "1d", "-1s", "s", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn referenced_files_are_the_tls_files() {
        let c = parse(
            "tls_server_config:\n  cert_file: a.crt\n  key: inline\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: /ca.crt\n",
        )
        .expect("valid");
        assert_eq!(
            c.referenced_files(),
            vec![
                PathBuf::from("/etc/timbala/a.crt"),
                PathBuf::from("/ca.crt")
            ]
        );
    }
}

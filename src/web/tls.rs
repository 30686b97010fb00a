//! TLS of the HTTP listener and of the node's own requests to its peers, built with
//! rustls (ring provider) from the web configuration's `tls_server_config`.
//!
//! Owns: turning `file::TlsSettings` into a rustls `ServerConfig` (certificate chain and
//! key, protocol versions, Go cipher-suite and curve names mapped to rustls's, Go's five
//! client-authentication policies, `client_allowed_sans`), and the peer client's
//! material: the CA that peers' certificates are verified against and the node's own
//! certificate, presented when a peer asks for one (ADR 0013). Calls rustls only.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::file::{ClientAuth, PemSource, TlsSettings, TlsVersion, WebConfigError};

/// The only application protocol served (ADR 0013: HTTP/2 is accepted in the file, not
/// offered).
const HTTP11: &[u8] = b"http/1.1";

fn tls_error(what: &str, e: impl std::fmt::Display) -> WebConfigError {
    WebConfigError::Tls(format!("{what}: {e}"))
}

/// What one load of the TLS settings produces: the listener's configuration and the
/// material the peer client uses until the next reload.
pub struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    /// The node's own certificate and key, offered to peers that ask for one.
    pub own_key: Arc<CertifiedKey>,
    /// Verifies peers' server certificates; None when no peer CA is configured.
    pub peer_verifier: Option<Arc<WebPkiServerVerifier>>,
}

/// Builds the listener's TLS configuration and the peer material. `peer_ca` is the
/// `--peer-ca-file` contents, else the client CA is used (ADR 0013).
pub fn build(
    settings: &TlsSettings,
    peer_ca: Option<&PemSource>,
) -> Result<TlsMaterial, WebConfigError> {
    let provider = Arc::new(provider_for(settings)?);
    let chain = read_certificates(&settings.cert, "cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&settings.key.read()?)
        .map_err(|e| tls_error("key_file", e))?;
    let own_key = Arc::new(
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|e| tls_error("certificate and key", e))?,
    );
    let verifier = client_verifier(settings, &provider)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(settings)?)
        .map_err(|e| tls_error("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("certificate and key", e))?;
    server.ignore_client_order = settings.prefer_server_cipher_suites;
    server.alpn_protocols = vec![HTTP11.to_vec()];
    let peer_verifier = match peer_ca.or(settings.client_ca.as_ref()) {
        None => None,
        Some(ca) => Some(
            WebPkiServerVerifier::builder_with_provider(root_store(ca, "peer CA")?, provider)
                .build()
                .map_err(|e| tls_error("peer CA", e))?,
        ),
    };
    Ok(TlsMaterial {
        server: Arc::new(server),
        own_key,
        peer_verifier,
    })
}

fn read_certificates(
    source: &PemSource,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let pem = source.read()?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(what, e))?;
    if certs.is_empty() {
        return Err(tls_error(what, "no PEM certificate found"));
    }
    Ok(certs)
}

fn root_store(source: &PemSource, what: &str) -> Result<Arc<RootCertStore>, WebConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certificates(source, what)?);
    if added == 0 {
        return Err(tls_error(what, "no usable CA certificate"));
    }
    Ok(Arc::new(roots))
}

/// rustls offers TLS 1.2 and 1.3 only: a minimum of TLS10/TLS11 (accepted for files
/// written for Go) means TLS 1.2; a maximum below TLS12 cannot be served.
fn protocol_versions(
    settings: &TlsSettings,
) -> Result<Vec<&'static SupportedProtocolVersion>, WebConfigError> {
    let versions: Vec<_> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, version)| version)
    .collect();
    if versions.is_empty() {
        return Err(WebConfigError::Tls(
            "max_version below TLS12: TLS 1.0 and 1.1 are not offered".into(),
        ));
    }
    Ok(versions)
}

/// Go's TLS 1.2 suite names that ring lacks (CBC modes, RSA key exchange). A file may list
/// them for Go; here they are skipped with a warning rather than refusing the file.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// Go's curve names and the key-exchange groups they name.
const CURVES: &[(&str, NamedGroup)] = &[
    ("CurveP256", NamedGroup::secp256r1),
    ("CurveP384", NamedGroup::secp384r1),
    ("CurveP521", NamedGroup::secp521r1),
    ("X25519", NamedGroup::X25519),
];

/// The ring provider narrowed to the configured cipher suites and curves. As in Go,
/// `cipher_suites` restricts TLS 1.2 only; TLS 1.3 suites stay enabled.
fn provider_for(settings: &TlsSettings) -> Result<CryptoProvider, WebConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        let mut tls12: Vec<SupportedCipherSuite> = Vec::new();
        for name in &settings.cipher_suites {
            let found = provider
                .cipher_suites
                .iter()
                .find(|s| s.suite().as_str() == Some(name.as_str()));
            match found {
                Some(suite) if suite.tls13().is_some() => {}
                Some(suite) => tls12.push(*suite),
                None if GO_ONLY_SUITES.contains(&name.as_str()) => {
                    tracing::warn!(suite = %name, "cipher suite not offered by Timbala's TLS library; skipped");
                }
                None => {
                    return Err(tls_error(
                        "cipher_suites",
                        format!("unknown cipher: {name}"),
                    ))
                }
            }
        }
        if tls12.is_empty() && settings.min_version <= TlsVersion::Tls12 {
            return Err(tls_error(
                "cipher_suites",
                "none of the listed TLS 1.2 cipher suites is available",
            ));
        }
        provider
            .cipher_suites
            .retain(|s| s.tls13().is_some() || tls12.contains(s));
        // Preference order is the file's order, then TLS 1.3's.
        provider
            .cipher_suites
            .sort_by_key(|s| tls12.iter().position(|t| t == s).unwrap_or(usize::MAX));
    }
    if !settings.curve_preferences.is_empty() {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &settings.curve_preferences {
            let Some((_, group_name)) = CURVES.iter().find(|(go, _)| go == name) else {
                return Err(tls_error(
                    "curve_preferences",
                    format!("unknown curve: {name}"),
                ));
            };
            let found = provider.kx_groups.iter().find(|g| g.name() == *group_name);
            match found {
                Some(group) => groups.push(*group),
                None => {
                    tracing::warn!(curve = %name, "curve not offered by Timbala's TLS library; skipped")
                }
            }
        }
        if groups.is_empty() {
            tracing::warn!("no listed curve is available; using the library's default curves");
        } else {
            provider.kx_groups = groups;
        }
    }
    Ok(provider)
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    let webpki = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
        let Some(ca) = &settings.client_ca else {
            return Err(WebConfigError::Invalid("client_ca_file is required".into()));
        };
        let builder = WebPkiClientVerifier::builder_with_provider(
            root_store(ca, "client_ca_file")?,
            provider.clone(),
        );
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder.build().map_err(|e| tls_error("client_ca_file", e))
    };
    let inner: Arc<dyn ClientCertVerifier> = match settings.client_auth {
        ClientAuth::NoClientCert => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => Arc::new(UnverifiedClientCert::new(false, provider)),
        ClientAuth::RequireAnyClientCert => Arc::new(UnverifiedClientCert::new(true, provider)),
        ClientAuth::VerifyClientCertIfGiven => webpki(true)?,
        ClientAuth::RequireAndVerifyClientCert => webpki(false)?,
    };
    match &settings.client_allowed_sans {
        None => Ok(inner),
        Some(allowed) => Ok(Arc::new(AllowedSans::new(inner, allowed)?)),
    }
}

/// Go's `RequestClientCert` and `RequireAnyClientCert`: a client certificate's chain is
/// not checked, only that the client holds its key (the handshake signature).
#[derive(Debug)]
struct UnverifiedClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl UnverifiedClientCert {
    fn new(mandatory: bool, provider: &Arc<CryptoProvider>) -> Self {
        UnverifiedClientCert {
            mandatory,
            provider: provider.clone(),
        }
    }
}

impl ClientCertVerifier for UnverifiedClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `client_allowed_sans`: after the policy's own checks, the client certificate must be
/// valid for one of the listed names. Names are DNS names or IP addresses, matched by
/// the certificate name rules (a wildcard certificate matches a name it covers); Go's
/// exporter-toolkit also accepts e-mail and URI entries, which rustls cannot match, so
/// those are refused when the file is loaded.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl AllowedSans {
    fn new(inner: Arc<dyn ClientCertVerifier>, names: &[String]) -> Result<Self, WebConfigError> {
        let allowed = names
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| {
                    WebConfigError::Invalid(format!(
                        "client_allowed_sans: {name:?} is not a DNS name or IP address \
                         (e-mail and URI names are not supported)"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowedSans { inner, allowed })
    }
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let allowed = self
            .allowed
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok());
        if allowed {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "client certificate has none of the allowed SANs".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where the peer client finds the current peer material; implemented by the live web
/// security state so that a reload reaches connections opened after it.
pub trait PeerMaterialSource: Send + Sync + std::fmt::Debug {
    fn peer_verifier(&self) -> Option<Arc<WebPkiServerVerifier>>;
    fn own_key(&self) -> Option<Arc<CertifiedKey>>;
}

/// The peer client's TLS configuration: peers are verified against the current peer CA
/// (by name: the certificate must be valid for the address the peer advertises), and the
/// node presents its own certificate when a peer asks for one.
pub fn peer_client_config(source: Arc<dyn PeerMaterialSource>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(LivePeerVerifier {
        source: source.clone(),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(LiveOwnKey { source }));
    config.alpn_protocols = vec![HTTP11.to_vec()];
    config
}

/// Delegates to the peer verifier of the moment (WebPKI chain and name checks).
#[derive(Debug)]
struct LivePeerVerifier {
    source: Arc<dyn PeerMaterialSource>,
    provider: Arc<CryptoProvider>,
}

impl LivePeerVerifier {
    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        self.source.peer_verifier().ok_or_else(|| {
            rustls::Error::General(
                "no CA to verify peers with: set --peer-ca-file (or client_ca_file)".into(),
            )
        })
    }
}

impl ServerCertVerifier for LivePeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Offers the node's current certificate to a peer that asks for a client certificate.
#[derive(Debug)]
struct LiveOwnKey {
    source: Arc<dyn PeerMaterialSource>,
}

impl ResolvesClientCert for LiveOwnKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.source.own_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

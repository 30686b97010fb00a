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
        let roots = root_store(ca, "client_ca_file")?;
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder.build().map_err(|e| tls_error("client_ca_file", e))
    };
    let client_auth = settings.client_auth;
    let chain = match client_auth {
        ClientAuth::NoClientCert => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => None,
        ClientAuth::VerifyClientCertIfGiven => Some(webpki(true)?),
        ClientAuth::RequireAndVerifyClientCert => Some(webpki(false)?),
    };
    if let (Some(chain), None) = (&chain, &settings.client_allowed_sans) {
        return Ok(chain.clone());
    }
    let allowed_sans = settings
        .client_allowed_sans
        .as_deref()
        .map(allowed_names)
        .transpose()?;
    Ok(Arc::new(ClientPolicy {
        chain,
        mandatory: client_auth.requires_certificate(),
        allowed_sans,
        signatures: Signatures(provider.clone()),
    }))
}

/// `client_allowed_sans` as names rustls can match: DNS names and IP addresses.
fn allowed_names(names: &[String]) -> Result<Vec<ServerName<'static>>, WebConfigError> {
    names
        .iter()
        .map(|name| {
            ServerName::try_from(name.clone()).map_err(|_| {
                WebConfigError::Invalid(format!(
                    "client_allowed_sans: {name:?} is not a DNS name or IP address \
                     (e-mail and URI names are not supported)"
                ))
            })
        })
        .collect()
}

/// Go's client-certificate policies that WebPKI alone does not express:
/// `RequestClientCert` and `RequireAnyClientCert` (the chain is not checked, only that
/// the client holds the certificate's key) and `client_allowed_sans` (the certificate
/// must be valid for one of the names, by the certificate name rules: a wildcard
/// certificate matches a name it covers; Go's e-mail and URI entries are refused when
/// the file is loaded).
#[derive(Debug)]
struct ClientPolicy {
    /// WebPKI chain verification against the client CA; None: not checked.
    chain: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    allowed_sans: Option<Vec<ServerName<'static>>>,
    signatures: Signatures,
}

impl ClientCertVerifier for ClientPolicy {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.chain {
            Some(chain) => chain.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            chain.verify_client_cert(end_entity, intermediates, now)?;
        }
        if let Some(allowed) = &self.allowed_sans {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            let named = allowed
                .iter()
                .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok());
            if !named {
                return Err(rustls::Error::General(
                    "client certificate has none of the allowed SANs".into(),
                ));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Handshake-signature checks with a provider's algorithms.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
/// node presents its own certificate when a peer asks for one. ALPN is left to the
/// connector (hyper-rustls sets it from the HTTP versions it enables).
pub fn peer_client_config(source: Arc<dyn PeerMaterialSource>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(LivePeerVerifier {
        source: source.clone(),
        signatures: Signatures(provider.clone()),
    });
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(LiveOwnKey { source }))
}

/// Delegates to the peer verifier of the moment (WebPKI chain and name checks).
#[derive(Debug)]
struct LivePeerVerifier {
    source: Arc<dyn PeerMaterialSource>,
    signatures: Signatures,
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
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn settings() -> TlsSettings {
        TlsSettings {
            cert: PemSource::File(PathBuf::from("node.crt")),
            key: PemSource::File(PathBuf::from("node.key")),
            client_ca: None,
            client_auth: ClientAuth::NoClientCert,
            client_allowed_sans: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            prefer_server_cipher_suites: true,
            curve_preferences: Vec::new(),
        }
    }

    fn versions(min: TlsVersion, max: TlsVersion) -> Result<Vec<u16>, WebConfigError> {
        let s = TlsSettings {
            min_version: min,
            max_version: max,
            ..settings()
        };
        protocol_versions(&s).map(|v| v.iter().map(|v| u16::from(v.version)).collect())
    }

    #[test]
    fn versions_map_to_tls12_and_tls13() {
        use TlsVersion::*;
        assert_eq!(versions(Tls12, Tls13), Ok(vec![0x0303, 0x0304]));
        assert_eq!(versions(Tls10, Tls13), Ok(vec![0x0303, 0x0304]));
        assert_eq!(versions(Tls13, Tls13), Ok(vec![0x0304]));
        assert_eq!(versions(Tls10, Tls12), Ok(vec![0x0303]));
        assert!(versions(Tls10, Tls11).is_err());
    }

    fn suites(names: &[&str]) -> Result<Vec<String>, WebConfigError> {
        let s = TlsSettings {
            cipher_suites: names.iter().map(|n| n.to_string()).collect(),
            ..settings()
        };
        provider_for(&s).map(|p| {
            p.cipher_suites
                .iter()
                .filter_map(|s| s.suite().as_str().map(String::from))
                .collect()
        })
    }

    #[test]
    fn go_cipher_suite_names_restrict_tls12_only() {
        let got = suites(&[
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ])
        .expect("valid");
        // The file's order first (the CBC suite skipped), then TLS 1.3's suites.
        assert_eq!(got[0], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(got[1], "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert!(got[2..].iter().all(|s| s.starts_with("TLS13_")), "{got:?}");
        assert!(suites(&["TLS_MADE_UP"]).is_err());
        assert!(suites(&["TLS_RSA_WITH_AES_128_CBC_SHA"]).is_err());
    }

    fn curves(names: &[&str]) -> Result<Vec<NamedGroup>, WebConfigError> {
        let s = TlsSettings {
            curve_preferences: names.iter().map(|n| n.to_string()).collect(),
            ..settings()
        };
        provider_for(&s).map(|p| p.kx_groups.iter().map(|g| g.name()).collect())
    }

    #[test]
    fn go_curve_names() {
        assert_eq!(
            curves(&["CurveP384", "X25519"]),
            Ok(vec![NamedGroup::secp384r1, NamedGroup::X25519])
        );
        // P-521 is not offered by ring: the defaults stay.
        let defaults = curves(&[]).expect("defaults");
        assert_eq!(curves(&["CurveP521"]), Ok(defaults));
        assert!(curves(&["CurveP1024"]).is_err());
    }

    #[test]
    fn allowed_sans_are_dns_names_or_addresses() {
        let names = ["node-1.example.com".to_string(), "10.0.0.1".to_string()];
        assert_eq!(allowed_names(&names).map(|n| n.len()), Ok(2));
        assert!(allowed_names(&["ops@example.com".to_string()]).is_err());
        assert!(allowed_names(&["spiffe://cluster/node".to_string()]).is_err());
    }
}

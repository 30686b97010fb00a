//! Acceptance tests of the HTTP security layer against the built binary, with
//! certificates made by the `openssl` command line in a temporary directory:
//! `--web-config-file` (Prometheus's format: TLS, bcrypt basic auth, headers), reloads on
//! change and on SIGHUP, the admin API off unless `--web-enable-admin-api`, one snapshot
//! at a time, a 3-node cluster forwarding writes over mutual TLS, Prometheus 2.42
//! writing with `basic_auth` and `tls_config`, and the README's "Securing a cluster"
//! commands run as written.

#[rustfmt::skip]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{
    cluster_credential, free_port, metric_value, prometheus_available, readme_blocks,
    start_prometheus, ts, Node,
};
use timbala::cluster::keys::ClusterKeys;
use timbala::proto;

// ---------------------------------------------------------------------------------------
// Certificates, made with the openssl command line (scripts/install-openssl.sh).

/// A directory of keys and certificates.
struct Pki {
    dir: tempfile::TempDir,
}

fn run(program: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA: `<name>.crt`, `<name>.key`.
    fn ca(&self, name: &str) -> &Self {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        run(
            "openssl",
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &crt,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        self
    }

    /// A certificate for `name` (SAN `sans`, e.g. `IP:127.0.0.1`) signed by `ca`, usable
    /// for serving and as a client certificate: `<name>.crt`, `<name>.key`.
    fn issue(&self, ca: &str, name: &str, sans: &str) -> &Self {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path(&ext),
            format!("subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .expect("write extensions");
        run(
            "openssl",
            self.dir.path(),
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        run(
            "openssl",
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}.crt"),
            ],
        );
        self
    }
}

fn bcrypt_hash(password: &str) -> String {
    // Cost 10, as `htpasswd -nBC 10` and Prometheus's documentation use.
    bcrypt::hash(password, 10).expect("bcrypt")
}

// ---------------------------------------------------------------------------------------
// An https client: trusts one CA, optionally presents a client certificate and sends
// basic-auth credentials. A fresh connection per client (a reloaded TLS configuration
// applies to connections opened after the reload).

struct Client {
    agent: ureq::Agent,
    authorization: Option<String>,
}

fn pem_certificates(path: &Path) -> Vec<ureq::tls::Certificate<'static>> {
    let pem = std::fs::read(path).expect("read PEM");
    ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item.expect("PEM") {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

impl Client {
    fn new(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Client {
        let roots = ureq::tls::RootCerts::Specific(Arc::new(pem_certificates(ca)));
        let client_cert = client_cert.map(|(crt, key)| {
            let key = ureq::tls::PrivateKey::from_pem(&std::fs::read(key).expect("read key"))
                .expect("private key");
            ureq::tls::ClientCert::new_with_certs(&pem_certificates(crt), key)
        });
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(roots)
            .client_cert(client_cert)
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .tls_config(tls)
            .build()
            .into();
        Client {
            agent,
            authorization: None,
        }
    }

    fn basic_auth(mut self, user: &str, password: &str) -> Client {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// Status, body and response headers; Err for transport (TLS) failures.
    fn get(&self, url: &str) -> Result<Answer, ureq::Error> {
        let mut req = self.agent.get(url);
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        req.call().map(Answer::read)
    }

    fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, ureq::Error> {
        let mut req = self.agent.post(url);
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send(body).map(Answer::read)
    }

    fn remote_write(&self, base: &str, request: &proto::WriteRequest) -> Answer {
        self.post(
            &format!("{base}/api/v1/write"),
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ],
            &proto::encode_snappy(request),
        )
        .expect("remote write")
    }

    /// The value of a one-series instant query.
    fn query_value(&self, base: &str, promql: &str) -> Option<f64> {
        let url = format!("{base}/api/v1/query?query={}", encode(promql));
        let answer = self.get(&url).ok()?;
        let json: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Answer {
    status: u16,
    body: String,
    headers: ureq::http::HeaderMap,
}

impl Answer {
    fn read(resp: ureq::http::Response<ureq::Body>) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().read_to_string().unwrap_or_default();
        Answer {
            status,
            body,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// ---------------------------------------------------------------------------------------
// Nodes with a web config.

/// A node on 127.0.0.1 with its own data directory, reached over https.
struct SecureNode {
    node: Node,
    https: String,
    _dir: tempfile::TempDir,
}

impl SecureNode {
    /// Starts a node bound to 127.0.0.1 at `port`, reached by clients as `host:port`.
    fn spawn(host: &str, port: u16, gossip_addr: &str, args: &[&str]) -> SecureNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let bind = format!("127.0.0.1:{port}");
        let node = Node::spawn_at(&dir.path().join("data"), &bind, gossip_addr, args);
        SecureNode {
            node,
            https: format!("https://{host}:{port}"),
            _dir: dir,
        }
    }

    fn start(args: &[&str]) -> SecureNode {
        let gossip = format!("127.0.0.1:{}", free_port());
        SecureNode::spawn("127.0.0.1", free_port(), &gossip, args)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.https)
    }
}

/// Starts three nodes on 127.0.0.1 with fast gossip, each listing the others as peers
/// and advertising `host:port` to them, and waits until `client` sees every node ready,
/// with three alive members and all three in its join order.
fn start_secure_cluster(host: &str, args: &[&str], client: &Client) -> Vec<SecureNode> {
    let addrs: Vec<(u16, String)> = (0..3)
        .map(|_| (free_port(), format!("127.0.0.1:{}", free_port())))
        .collect();
    let nodes: Vec<SecureNode> = addrs
        .iter()
        .map(|(port, gossip)| {
            let peers: Vec<&str> = addrs
                .iter()
                .filter(|(_, other)| other != gossip)
                .map(|(_, other)| other.as_str())
                .collect();
            let advertise = format!("{host}:{port}");
            let mut all = vec!["--http-advertise-addr", &advertise];
            let peers = peers.join(",");
            all.extend(["--peers", &peers, "--gossip-profile", "fast"]);
            all.extend_from_slice(args);
            SecureNode::spawn(host, *port, gossip, &all)
        })
        .collect();
    for node in &nodes {
        wait_ready(client, &node.https);
    }
    wait_for(
        Duration::from_secs(60),
        "3 members in every node's join order",
        || {
            nodes.iter().all(|node| {
                client
                    .get(&node.url("/api/v1/status/cluster"))
                    .ok()
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(&a.body).ok())
                    .and_then(|v| {
                        // Placement follows the join order: until every node has all
                        // three in it, a write may be placed on fewer owners.
                        let members = v["data"]["members"].as_array()?;
                        let alive = members.iter().filter(|m| m["state"] == "alive").count();
                        Some(alive == 3 && v["data"]["joinOrder"].as_array()?.len() == 3)
                    })
                    .unwrap_or(false)
            })
        },
    );
    nodes
}

/// The series a node holds itself (`/internal/v1/series`), as label-pair lists; signed
/// with the cluster key when the cluster has one (internal routes require it).
fn local_series(
    client: &Client,
    node: &SecureNode,
    keys: Option<&ClusterKeys>,
    metric: &str,
) -> Vec<serde_json::Value> {
    let path = "/internal/v1/series";
    let body = format!(
        r#"{{"matchers":[["__name__","=","{metric}"]],"mint":0,"maxt":9223372036854775807}}"#
    );
    let credential = keys.map(|keys| cluster_credential(keys, path, body.as_bytes()));
    let headers: Vec<(&str, &str)> = credential
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let answer = client
        .post(&node.url(path), &headers, body.as_bytes())
        .expect("local series");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str::<Vec<serde_json::Value>>(&answer.body).expect("JSON list")
}

/// Waits until `/-/ready` answers 200 to `client` at `base`.
fn wait_ready(client: &Client, base: &str) {
    wait_for(Duration::from_secs(60), &format!("{base} ready"), || {
        client
            .get(&format!("{base}/-/ready"))
            .is_ok_and(|a| a.status == 200)
    });
}

/// Polls `check` every 100 ms until it holds; panics after `limit`. Returns the time
/// it took.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn write_file(path: &Path, text: &str) {
    // Write aside and rename, as configuration management does: the node never reads a
    // half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn web_config(cert: &str, users: &[(&str, &str)], extra: &str) -> String {
    let mut text =
        format!("tls_server_config:\n  cert_file: {cert}.crt\n  key_file: {cert}.key\n{extra}");
    if !users.is_empty() {
        text.push_str("basic_auth_users:\n");
        for (user, hash) in users {
            text.push_str(&format!("  {user}: {hash}\n"));
        }
    }
    text
}

// ---------------------------------------------------------------------------------------

/// Bar 1 (one node): https with the CA and the right user answers 200; no credentials,
/// a wrong password or an unknown user 401 with `WWW-Authenticate: Basic`; plain HTTP on
/// the TLS port is refused; a client that does not trust the CA cannot connect.
#[test]
fn tls_and_basic_auth_guard_the_public_api() {
    let pki = Pki::new();
    pki.ca("ca").issue("ca", "node", "IP:127.0.0.1");
    pki.ca("other-ca");
    let config = pki.path("web.yml");
    let headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n";
    std::fs::write(
        &config,
        web_config("node", &[("alice", &bcrypt_hash("wonderland"))], headers),
    )
    .expect("write web config");
    let node = SecureNode::start(&["--web-config-file", config.to_str().expect("utf-8")]);
    let alice = Client::new(&pki.path("ca.crt"), None).basic_auth("alice", "wonderland");
    wait_ready(&alice, &node.https);

    let t = now_ms();
    let write = proto::WriteRequest {
        timeseries: vec![ts(
            &[("__name__", "secured_total"), ("job", "a")],
            &[(t, 42.0)],
        )],
        ..Default::default()
    };
    let answer = alice.remote_write(&node.https, &write);
    assert_eq!(answer.status, 204, "{}", answer.body);
    let query = node.url("/api/v1/query?query=secured_total");
    let answer = alice.get(&query).expect("query");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"42\""), "{}", answer.body);
    assert_eq!(answer.header("x-frame-options"), Some("deny"));
    // The cache makes repeated requests cheap; every one is still checked.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(alice.get(&query).expect("query").status, 200);
    }
    println!(
        "20 authenticated queries over one connection: {:?} each",
        started.elapsed() / 20
    );

    let anonymous = Client::new(&pki.path("ca.crt"), None);
    let wrong = Client::new(&pki.path("ca.crt"), None).basic_auth("alice", "looking-glass");
    let stranger = Client::new(&pki.path("ca.crt"), None).basic_auth("mallory", "wonderland");
    for (who, client) in [
        ("anonymous", &anonymous),
        ("wrong password", &wrong),
        ("unknown user", &stranger),
    ] {
        for path in [
            "/api/v1/query?query=secured_total",
            "/-/healthy",
            "/metrics",
            "/no/such/path",
        ] {
            let answer = client.get(&node.url(path)).expect("TLS works");
            assert_eq!(answer.status, 401, "{who} {path}: {}", answer.body);
            assert_eq!(
                answer.header("www-authenticate"),
                Some("Basic"),
                "{who} {path}"
            );
            assert_eq!(
                answer.header("x-frame-options"),
                Some("deny"),
                "{who} {path}"
            );
        }
        assert_eq!(
            client.remote_write(&node.https, &write).status,
            401,
            "{who} write"
        );
    }

    // Plain HTTP to the TLS port gets Go's refusal, never data.
    let (status, body) = common::try_get(&format!(
        "http://{}/api/v1/query?query=secured_total",
        node.node.http_addr
    ))
    .expect("an HTTP answer");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");
    // A client that does not trust the node's CA fails the handshake.
    let untrusting = Client::new(&pki.path("other-ca.crt"), None).basic_auth("alice", "wonderland");
    assert!(
        untrusting.get(&query).is_err(),
        "a certificate from an unknown CA was accepted"
    );

    // The internal routes are not behind users' passwords (the cluster credential guards
    // them), but they are behind TLS like everything on the port.
    let local = anonymous
        .post(
            &node.url("/internal/v1/labels"),
            &[],
            br#"{"matchers":[],"mint":0,"maxt":9223372036854775807}"#,
        )
        .expect("internal over TLS");
    assert_eq!(local.status, 200, "{}", local.body);
    assert!(local.body.contains("__name__"), "{}", local.body);

    let metrics = alice.get(&node.url("/metrics")).expect("metrics").body;
    let failures = metric_value(&metrics, "timbala_web_basic_auth_failures_total").expect("metric");
    assert!(failures >= 15.0, "auth failures counted: {failures}");
    let handshakes =
        metric_value(&metrics, "timbala_web_tls_handshake_failures_total").expect("metric");
    assert!(
        handshakes >= 2.0,
        "handshake failures counted: {handshakes}"
    );
}

/// Bar 1 (reload): a changed password hash takes effect within seconds without a restart
/// (the file is polled), a broken file keeps the previous configuration, certificates
/// are reloaded too, and with polling off SIGHUP reloads.
#[test]
fn web_config_reloads_on_change_and_on_sighup() {
    let pki = Pki::new();
    pki.ca("ca").issue("ca", "node", "IP:127.0.0.1");
    pki.ca("ca2").issue("ca2", "node2", "IP:127.0.0.1");
    let config = pki.path("web.yml");
    write_file(
        &config,
        &web_config("node", &[("alice", &bcrypt_hash("old"))], ""),
    );
    let node = SecureNode::start(&["--web-config-file", config.to_str().expect("utf-8")]);
    let ca = pki.path("ca.crt");
    let old = || Client::new(&ca, None).basic_auth("alice", "old");
    let new = || Client::new(&ca, None).basic_auth("alice", "new");
    wait_ready(&old(), &node.https);
    let ready = node.url("/-/ready");
    assert_eq!(new().get(&ready).expect("TLS").status, 401);

    write_file(
        &config,
        &web_config("node", &[("alice", &bcrypt_hash("new"))], ""),
    );
    let took = wait_for(Duration::from_secs(20), "new password accepted", || {
        new().get(&ready).is_ok_and(|a| a.status == 200)
    });
    println!("password change took effect after {took:?} (polling every 2s)");
    assert_eq!(old().get(&ready).expect("TLS").status, 401);

    // A broken file is logged and ignored: the last good configuration stays.
    write_file(&config, "basic_auth_users:\n  alice: not-a-hash\n");
    wait_for(Duration::from_secs(20), "failed reload reported", || {
        let metrics = new()
            .get(&node.url("/metrics"))
            .map(|a| a.body)
            .unwrap_or_default();
        metric_value(&metrics, "timbala_web_config_last_reload_successful") == Some(0.0)
    });
    assert_eq!(new().get(&ready).expect("TLS").status, 200);
    assert_eq!(old().get(&ready).expect("TLS").status, 401);

    // Certificate rotation: a certificate from another CA, same file names.
    std::fs::copy(pki.path("node2.crt"), pki.path("node.crt")).expect("copy cert");
    std::fs::copy(pki.path("node2.key"), pki.path("node.key")).expect("copy key");
    write_file(
        &config,
        &web_config("node", &[("alice", &bcrypt_hash("new"))], ""),
    );
    let ca2 = pki.path("ca2.crt");
    wait_for(
        Duration::from_secs(20),
        "rotated certificate served",
        || {
            Client::new(&ca2, None)
                .basic_auth("alice", "new")
                .get(&ready)
                .is_ok_and(|a| a.status == 200)
        },
    );
    assert!(
        new().get(&ready).is_err(),
        "the old CA still verifies the new certificate"
    );

    // With polling off, only SIGHUP reloads.
    let config2 = pki.path("web2.yml");
    write_file(
        &config2,
        &web_config("node", &[("bob", &bcrypt_hash("one"))], ""),
    );
    let node2 = SecureNode::start(&[
        "--web-config-file",
        config2.to_str().expect("utf-8"),
        "--web-config-reload-interval",
        "0s",
    ]);
    let bob = |password: &str| Client::new(&ca2, None).basic_auth("bob", password);
    wait_ready(&bob("one"), &node2.https);
    write_file(
        &config2,
        &web_config("node", &[("bob", &bcrypt_hash("two"))], ""),
    );
    std::thread::sleep(Duration::from_secs(3));
    let ready2 = node2.url("/-/ready");
    assert_eq!(
        bob("two").get(&ready2).expect("TLS").status,
        401,
        "reloaded without SIGHUP"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(node2.node.pid() as i32, libc::SIGHUP) };
    let took = wait_for(Duration::from_secs(10), "SIGHUP reload", || {
        bob("two").get(&ready2).is_ok_and(|a| a.status == 200)
    });
    println!("SIGHUP reload took effect after {took:?}");
    assert_eq!(bob("one").get(&ready2).expect("TLS").status, 401);
}

/// Bar 4 (admin part): the admin endpoints answer Prometheus's 503 "admin APIs disabled"
/// unless `--web-enable-admin-api`; with it they work, one snapshot at a time.
#[test]
fn admin_api_is_off_unless_enabled() {
    let node = Node::start(&[]);
    let disabled = r#"{"status":"error","errorType":"unavailable","error":"admin APIs disabled"}"#;
    for path in ["delete_series?match[]=up", "clean_tombstones", "snapshot"] {
        let url = node.url(&format!("/api/v1/admin/tsdb/{path}"));
        let (status, body) = common::post(&url, &[], b"");
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (503, disabled),
            "{path}"
        );
    }
    assert!(!node.data_dir.join("snapshots").exists());

    let node = Node::start(&["--web-enable-admin-api"]);
    let (status, body) = common::post(
        &node.url("/api/v1/admin/tsdb/delete_series?match[]=up"),
        &[],
        b"",
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    let (status, _) = common::post(&node.url("/api/v1/admin/tsdb/clean_tombstones"), &[], b"");
    assert_eq!(status, 204);

    // Enough data that a snapshot takes a while, then several at once: each either
    // succeeds or is turned away while another runs; every success is on disk.
    let t = now_ms();
    for batch in 0..20 {
        let series = (0..5_000)
            .map(|i| {
                let id = (batch * 5_000 + i).to_string();
                ts(
                    &[("__name__", "snap_load"), ("id", &id)],
                    &[(t - 60_000, 1.0), (t, 2.0)],
                )
            })
            .collect();
        let req = proto::WriteRequest {
            timeseries: series,
            ..Default::default()
        };
        let (status, body) = common::remote_write(&node, &req);
        assert_eq!(status, 204, "{body}");
    }
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let answers: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let barrier = barrier.clone();
            let url = node.url("/api/v1/admin/tsdb/snapshot");
            std::thread::spawn(move || {
                barrier.wait();
                let (status, body) = common::post(&url, &[], b"");
                (status, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("snapshot thread"))
        .collect();
    let taken = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 503 && b.contains("a snapshot is already being taken"))
        .count();
    println!("4 concurrent snapshots: {taken} taken, {refused} refused");
    assert_eq!(taken + refused, 4, "{answers:?}");
    assert!(taken >= 1 && refused >= 1, "{answers:?}");
    let on_disk = std::fs::read_dir(node.data_dir.join("snapshots"))
        .expect("snapshots")
        .count();
    assert_eq!(on_disk, taken);
}

/// Bar 1 (cluster): three nodes with mutual TLS (client_auth_type
/// RequireAndVerifyClientCert) and basic auth. Writes sent to one node reach the other
/// two over https, each node presenting its own certificate to its peers (verified
/// against the client CA, no --peer-ca-file needed); every node answers queries.
#[test]
fn cluster_forwards_writes_over_mutual_tls() {
    let pki = Pki::new();
    pki.ca("ca")
        .issue("ca", "node", "IP:127.0.0.1")
        .issue("ca", "prometheus", "DNS:prometheus");
    let config = pki.path("web.yml");
    let mtls = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";
    write_file(
        &config,
        &web_config("node", &[("grafana", &bcrypt_hash("dashboards"))], mtls),
    );
    let client = Client::new(
        &pki.path("ca.crt"),
        Some((&pki.path("prometheus.crt"), &pki.path("prometheus.key"))),
    )
    .basic_auth("grafana", "dashboards");
    let config_arg = config.to_str().expect("utf-8");
    let nodes = start_secure_cluster("127.0.0.1", &["--web-config-file", config_arg], &client);

    // Without a client certificate the handshake fails, whatever the password.
    let no_cert = Client::new(&pki.path("ca.crt"), None).basic_auth("grafana", "dashboards");
    assert!(no_cert.get(&nodes[1].url("/-/ready")).is_err());

    const SERIES: usize = 300;
    let t = now_ms();
    let write = proto::WriteRequest {
        timeseries: (0..SERIES)
            .map(|i| {
                ts(
                    &[("__name__", "mtls_series"), ("i", &i.to_string())],
                    &[(t, i as f64)],
                )
            })
            .collect(),
        ..Default::default()
    };
    let answer = client.remote_write(&nodes[0].https, &write);
    assert_eq!(answer.status, 204, "{}", answer.body);
    for node in &nodes {
        wait_for(
            Duration::from_secs(30),
            "every node answers the whole count",
            || client.query_value(&node.https, "count(mtls_series)") == Some(SERIES as f64),
        );
    }
    // With 3 nodes every series has 3 owners: the other two nodes hold all of them
    // locally, which only forwarding over TLS can have put there.
    let peer_metrics = |node: &SecureNode| -> String {
        let metrics = client.get(&node.url("/metrics")).expect("metrics").body;
        let peer_lines = metrics.lines().filter(|l| l.starts_with("timbala_peer_"));
        peer_lines.collect::<Vec<_>>().join("\n")
    };
    for node in &nodes[1..] {
        let local = local_series(&client, node, None, "mtls_series");
        let status = client
            .get(&node.url("/api/v1/status/cluster"))
            .map(|a| a.body);
        assert_eq!(
            local.len(),
            SERIES,
            "{}: {status:?}\nnode 0: {}",
            node.https,
            peer_metrics(&nodes[0])
        );
    }
    let metrics = client.get(&nodes[0].url("/metrics")).expect("metrics").body;
    let forwarded: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("timbala_peer_samples_total{") && l.contains("op=\"write\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        forwarded,
        (2 * SERIES) as f64,
        "samples forwarded by node 0"
    );
    let errors = metrics
        .lines()
        .any(|l| l.starts_with("timbala_peer_errors_total{") && !l.ends_with(" 0"));
    assert!(!errors, "peer errors: {metrics}");
}

/// Bar 1 (Prometheus): Prometheus 2.42 writes through `remote_write` with `basic_auth`
/// and `tls_config` (ca_file) into a node, and its samples are queryable.
#[test]
fn prometheus_remote_writes_over_tls_with_basic_auth() {
    if !prometheus_available() {
        return;
    }
    let pki = Pki::new();
    pki.ca("ca").issue("ca", "node", "IP:127.0.0.1");
    let config = pki.path("web.yml");
    write_file(
        &config,
        &web_config("node", &[("prometheus", &bcrypt_hash("scrape"))], ""),
    );
    let node = SecureNode::start(&["--web-config-file", config.to_str().expect("utf-8")]);
    let client = Client::new(&pki.path("ca.crt"), None).basic_auth("prometheus", "scrape");
    wait_ready(&client, &node.https);
    let remote_write = format!(
        "remote_write:\n  - url: {}/api/v1/write\n    basic_auth:\n      username: prometheus\n      \
         password: scrape\n    tls_config:\n      ca_file: ca.crt\n    queue_config:\n      \
         batch_send_deadline: 1s\n",
        node.https
    );
    let _prometheus = start_prometheus(pki.dir.path(), &remote_write);
    let took = wait_for(
        Duration::from_secs(90),
        "Prometheus's samples in Timbala",
        || {
            client.query_value(&node.https, "count(up{job=\"self\"})") == Some(1.0)
                && client
                    .query_value(&node.https, "count(prometheus_build_info)")
                    .is_some()
        },
    );
    println!("Prometheus's samples queryable after {took:?}");
}

// ---------------------------------------------------------------------------------------
// Bar 6: the README's commands, run as written.

const README_RUN_MARK: &str = "<!-- tests/web_security.rs runs this block -->";
const README_PROMETHEUS_MARK: &str =
    "<!-- tests/web_security.rs uses this block as prometheus.yml -->";
/// The README's node names; the test reaches its nodes as `localhost` instead.
const README_NODES: &str = r#"NODES="node-1.example.com node-2.example.com node-3.example.com""#;
const README_NODE_ADDR: &str = "node-1.example.com:9080";

#[test]
fn readme_securing_a_cluster_commands_work() {
    let script = readme_blocks(README_RUN_MARK).join("\n");
    assert!(
        script.contains(README_NODES),
        "the README's NODES line changed:\n{script}"
    );
    let prometheus_snippet = readme_blocks(README_PROMETHEUS_MARK);
    assert_eq!(
        prometheus_snippet.len(),
        1,
        "one prometheus.yml snippet in the README"
    );
    assert!(prometheus_snippet[0].contains(README_NODE_ADDR));
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for flag in [
        "--cluster-key-file /etc/timbala/cluster.key",
        "--web-config-file /etc/timbala/web-config.yml",
        "--peer-ca-file /etc/timbala/ca.crt",
    ] {
        assert!(readme.contains(flag), "README start command lost {flag}");
    }

    // Run the commands in a fresh directory, for one node name the test can reach.
    let work = tempfile::tempdir().expect("temp dir");
    let script = script.replace(README_NODES, r#"NODES="localhost""#);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "README commands failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etc = work.path().join("localhost");
    let password =
        std::fs::read_to_string(work.path().join("timbala-password")).expect("password file");

    // Three nodes, each started with the flags the README gives, the directory the
    // commands made standing in for /etc/timbala, reached as `localhost` (the name in
    // their certificate).
    let web_config = etc.join("web-config.yml");
    let ca = etc.join("ca.crt");
    // The cluster key, made as the README's "Cluster key" part makes it.
    let key = etc.join("cluster.key");
    let made = Command::new("bash")
        .args(["-c", "head -c 32 /dev/urandom | base64 > cluster.key"])
        .current_dir(&etc)
        .status()
        .expect("run bash");
    assert!(made.success(), "making the cluster key failed");
    let keys = ClusterKeys::load(&key).expect("the cluster key the README's command made");
    let client = Client::new(&ca, None).basic_auth("prometheus", &password);
    let flags = [
        "--cluster-key-file",
        key.to_str().expect("utf-8"),
        "--web-config-file",
        web_config.to_str().expect("utf-8"),
        "--peer-ca-file",
        ca.to_str().expect("utf-8"),
    ];
    let nodes = start_secure_cluster("localhost", &flags, &client);

    if !prometheus_available() {
        return;
    }
    // Prometheus with the README's remote_write block, pointed at the first node.
    let first = nodes[0].https.trim_start_matches("https://");
    let snippet = prometheus_snippet[0].replace(README_NODE_ADDR, first);
    let _prometheus = start_prometheus(work.path(), &snippet);
    for node in &nodes {
        let took = wait_for(
            Duration::from_secs(120),
            "Prometheus's samples on every node",
            || client.query_value(&node.https, "count(up{job=\"self\"})") == Some(1.0),
        );
        println!(
            "{}: Prometheus's samples queryable after {took:?}",
            node.https
        );
    }
    // Every node stores them (3 owners of 3 nodes): forwarded from node 1 over TLS.
    for node in &nodes[1..] {
        let local = local_series(&client, node, Some(&keys), "up");
        assert!(
            local
                .iter()
                .any(|labels| labels.to_string().contains("\"self\"")),
            "{}: {local:?}",
            node.https
        );
    }
}

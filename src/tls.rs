//! TLS and mutual TLS for the gateway's listener.
//!
//! - [`TlsSettings`] is the `server.tls` configuration table and checks itself
//!   ([`TlsSettings::validate`]) so that a bad path or key stops start-up with
//!   the key's name.
//! - [`server_config`] builds the rustls configuration: TLS 1.2 and 1.3 only,
//!   ALPN `http/1.1`, client certificates verified against `server.tls.client_ca`
//!   when `server.tls.client_auth` is `optional` or `required`.
//! - [`serve_tls`] and [`serve_plain`] run a router on a listener until shutdown.
//!   Both put the client's address into every request as
//!   [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo) and the verified
//!   client certificate's identity as an `Option<PeerIdentity>` extension
//!   (always `None` over plain HTTP), so handlers can write
//!   `peer: Option<PeerIdentity>` and `ConnectInfo(addr): ConnectInfo<SocketAddr>`.
//!
//! Client certificates follow SITHS function certificates: the subject's
//! `serialNumber` attribute (OID 2.5.4.5) carries the HSA-id of the client's
//! organisation and `CN` names the system. The certificate chain is verified by
//! rustls/webpki before [`PeerIdentity`] reads the subject; the HSA-id is handed
//! on as written in the certificate, for the auth layer to parse and bind.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    Extension, Router,
    extract::{ConnectInfo, OptionalFromRequestParts, Request},
    http::request::Parts,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;
use x509_cert::der::{Decode as _, Tag, Tagged as _, asn1::ObjectIdentifier};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Subject attribute `serialNumber` (X.520), which holds the HSA-id in SITHS certificates.
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
/// Subject attribute `commonName` (X.520).
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The `server.tls` table: the listener's certificate and the mutual-TLS policy.
///
/// Relative paths are resolved against the working directory. The defaults
/// point at the development files in `certs-example/`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Serve HTTPS (`true`) or plain HTTP (`false`).
    pub enabled: bool,
    /// PEM file with the server certificate, followed by any intermediate CA certificates.
    pub cert: PathBuf,
    /// PEM file with the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificate(s) that client certificates must chain to
    /// (for SITHS: the SITHS root and issuing CAs). Needed unless `client_auth` is
    /// `off`; an empty string means none.
    #[serde(deserialize_with = "empty_path_as_none", skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Whether clients must present a certificate: `off`, `optional` or `required`.
    pub client_auth: ClientAuth,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            enabled: true,
            cert: "certs-example/server.pem".into(),
            key: "certs-example/server.key".into(),
            client_ca: Some("certs-example/ca.pem".into()),
            client_auth: ClientAuth::Optional,
        }
    }
}

/// Mutual-TLS policy (`server.tls.client_auth`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    Off,
    /// A client certificate is asked for; without one the connection proceeds
    /// unauthenticated (tokens alone), with one it must verify.
    #[default]
    Optional,
    /// The handshake fails unless the client presents a certificate that verifies.
    Required,
}

/// A `server.tls` problem, naming the key and why; shown as `key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsSettingsError {
    /// The configuration key at fault, e.g. `server.tls.cert`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn settings_error(key: &'static str, message: impl Into<String>) -> TlsSettingsError {
    TlsSettingsError { key, message: message.into() }
}

/// Reads `client_ca = ""` (e.g. from `NARA_SERVER__TLS__CLIENT_CA=`) as no file.
fn empty_path_as_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<PathBuf>::deserialize(deserializer)?.filter(|p| !p.as_os_str().is_empty()))
}

impl TlsSettings {
    /// Checks the settings by loading every file and building the rustls
    /// configuration; does nothing when TLS is disabled. The error names the key,
    /// e.g. `server.tls.cert: file certs/x.pem cannot be read: No such file or directory`.
    pub fn validate(&self) -> Result<(), TlsSettingsError> {
        if self.enabled { self.build().map(drop) } else { Ok(()) }
    }

    fn build(&self) -> Result<Arc<ServerConfig>, TlsSettingsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = read_certificates("server.tls.cert", &self.cert)?;
        let key = read_private_key("server.tls.key", &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| settings_error("server.tls", format!("TLS 1.2/1.3 not available: {e}")))?;
        let builder = match self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                builder.with_client_cert_verifier(self.client_verifier(provider)?)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            settings_error("server.tls.key", format!("does not fit the certificate in server.tls.cert: {e}"))
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn client_verifier(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSettingsError> {
        const KEY: &str = "server.tls.client_ca";
        let path = self.client_ca.as_deref().ok_or_else(|| {
            settings_error(KEY, "must be set when server.tls.client_auth is `optional` or `required`")
        })?;
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(KEY, path)? {
            roots.add(cert).map_err(|e| {
                settings_error(KEY, format!("{} holds a certificate that cannot be a CA: {e}", path.display()))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match self.client_auth {
            ClientAuth::Optional => verifier.allow_unauthenticated(),
            _ => verifier,
        };
        verifier.build().map_err(|e| settings_error(KEY, format!("cannot verify clients with {}: {e}", path.display())))
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsSettingsError> {
    std::fs::read(path).map_err(|e| settings_error(key, format!("file {} cannot be read: {e}", path.display())))
}

/// All certificates in a PEM file; at least one.
fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| settings_error(key, format!("file {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(settings_error(key, format!("file {} holds no PEM CERTIFICATE", path.display())));
    }
    Ok(certs)
}

/// The first private key in a PEM file. Errors never quote the file's content.
fn read_private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsSettingsError> {
    let pem = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        settings_error(
            key,
            format!("file {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", path.display()),
        )
    })
}

/// Builds the rustls server configuration from enabled settings: TLS 1.2 and
/// 1.3 only, ALPN `http/1.1`, aws-lc-rs crypto, client certificates per
/// [`ClientAuth`]. Errors name the configuration key.
pub fn server_config(settings: &TlsSettings) -> anyhow::Result<Arc<ServerConfig>> {
    if !settings.enabled {
        anyhow::bail!("server.tls.enabled is false: serve plain HTTP instead");
    }
    Ok(settings.build()?)
}

/// Who the client is, according to its verified TLS client certificate.
///
/// In request extensions as `Option<PeerIdentity>`: `None` when the client
/// presented no certificate or the connection is plain HTTP. Extract it with
/// `peer: Option<PeerIdentity>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's `serialNumber` (OID 2.5.4.5): the HSA-id of the client's
    /// organisation, as written in the certificate (not yet parsed as an HSA-id).
    /// `None` when absent, repeated with different values, or not a string.
    pub organization_hsa_id: Option<String>,
    /// The subject's common name: the client system's name.
    pub subject_cn: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Never fails: a certificate that
    /// cannot be parsed gives an identity with every field `None`.
    pub fn from_certificate(der: &[u8]) -> PeerIdentity {
        let cert = match x509_cert::Certificate::from_der(der) {
            Ok(cert) => cert,
            Err(e) => {
                tracing::debug!(error = %e, "client certificate subject cannot be parsed");
                return PeerIdentity::default();
            }
        };
        let subject = &cert.tbs_certificate.subject;
        let attribute = |oid: ObjectIdentifier| {
            let mut values = subject.0.iter().flat_map(|rdn| rdn.0.iter()).filter(|atv| atv.oid == oid);
            let first = directory_string(&values.next()?.value)?;
            values.all(|other| directory_string(&other.value).as_deref() == Some(first.as_str())).then_some(first)
        };
        PeerIdentity { organization_hsa_id: attribute(OID_SERIAL_NUMBER), subject_cn: attribute(OID_COMMON_NAME) }
    }
}

/// The text of an X.520 DirectoryString-like attribute value, when it is one.
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            std::str::from_utf8(bytes).ok().map(str::to_owned)
        }
        Tag::BmpString if bytes.len().is_multiple_of(2) => {
            String::from_utf16(&bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>())
                .ok()
        }
        _ => None,
    }
}

/// `peer: Option<PeerIdentity>` in a handler: the verified client certificate's
/// identity, `None` without one (or when the router runs outside
/// [`serve_tls`]/[`serve_plain`], e.g. in `oneshot` tests).
impl<S: Send + Sync> OptionalFromRequestParts<S> for PeerIdentity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Option<PeerIdentity>>().cloned().flatten())
    }
}

/// Serves `router` over HTTPS on `listener` until `shutdown` resolves.
///
/// Each connection is handled in its own task: the TLS handshake (at most
/// 10 s) and then HTTP/1.1, so a slow client never holds up the accept loop.
/// Every request carries `ConnectInfo<SocketAddr>` and `Option<PeerIdentity>`.
/// Failed handshakes are logged at debug level and only end their connection.
///
/// On shutdown the listener is closed, handshakes in progress are dropped, idle
/// connections are closed, and in-flight requests finish before this returns.
pub async fn serve_tls(
    router: Router,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // E.g. too many open files: back off instead of spinning.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        connections.spawn(serve_tls_connection(router.clone(), acceptor.clone(), tcp, addr, stop.clone()));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Handshake, then HTTP/1.1 on one accepted connection until it closes or `stop` fires.
async fn serve_tls_connection(
    router: Router,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let tls = tokio::select! {
        () = stop.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(peer.addr = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer.addr = %addr, "TLS handshake timed out");
                return;
            }
        },
    };
    let peer: Option<PeerIdentity> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| PeerIdentity::from_certificate(cert));
    tracing::debug!(
        peer.addr = %addr,
        peer.organization = peer.as_ref().and_then(|p| p.organization_hsa_id.as_deref()),
        "TLS connection established"
    );
    let service = router.map_request(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        request.extensions_mut().insert(peer.clone());
        request
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer.addr = %addr, error = %e, "connection ended with an error");
    }
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves `router` over plain HTTP until `shutdown` resolves, letting in-flight
/// requests finish. Requests carry `ConnectInfo<SocketAddr>` and a `None`
/// `Option<PeerIdentity>`, as with [`serve_tls`].
pub async fn serve_plain(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router.layer(Extension(None::<PeerIdentity>));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use serde_json::{Value, json};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        sync::{Notify, oneshot},
    };

    use super::*;

    const LUND_HSA_ID: &str = "SE2120001231-0001";

    fn example(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example").join(file)
    }

    fn settings(client_auth: ClientAuth) -> TlsSettings {
        TlsSettings {
            enabled: true,
            cert: example("server.pem"),
            key: example("server.key"),
            client_ca: Some(example("ca.pem")),
            client_auth,
        }
    }

    /// `/whoami` reports what the handler sees; `/slow` signals `started`, then answers after 500 ms.
    fn test_router(started: Arc<Notify>) -> Router {
        async fn whoami(peer: Option<PeerIdentity>, ConnectInfo(addr): ConnectInfo<SocketAddr>) -> String {
            json!({
                "hsa": peer.as_ref().and_then(|p| p.organization_hsa_id.clone()),
                "cn": peer.as_ref().and_then(|p| p.subject_cn.clone()),
                "has_certificate": peer.is_some(),
                "ip": addr.ip().to_string(),
            })
            .to_string()
        }
        Router::new().route("/whoami", get(whoami)).route(
            "/slow",
            get(move || async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        )
    }

    struct Server {
        addr: SocketAddr,
        started: Arc<Notify>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Server {
        async fn shut_down(mut self) -> anyhow::Result<()> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(10), self.task).await??
        }
    }

    async fn spawn_tls(settings: &TlsSettings) -> Server {
        let config = server_config(settings).expect("example settings are valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Arc::new(Notify::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let router = test_router(started.clone());
        let task = tokio::spawn(serve_tls(router, listener, config, async move {
            let _ = stopped.await;
        }));
        Server { addr, started, stop: Some(stop), task }
    }

    fn pem(file: &str) -> Vec<u8> {
        std::fs::read(example(file)).unwrap()
    }

    fn client_builder() -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&pem("ca.pem")).unwrap();
        reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(5))
    }

    /// A client presenting `clients/<id>.pem` with its key.
    fn client_with_certificate(id: &str) -> reqwest::Client {
        let mut identity = pem(&format!("clients/{id}.pem"));
        identity.extend(pem(&format!("clients/{id}.key")));
        client_builder().identity(reqwest::Identity::from_pem(&identity).unwrap()).build().unwrap()
    }

    async fn whoami(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<Value> {
        client.get(format!("https://localhost:{}/whoami", addr.port())).send().await?.error_for_status()?.json().await
    }

    #[tokio::test]
    async fn serves_https_to_a_client_trusting_the_example_ca() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let client = client_builder().build().unwrap();
        let body = whoami(&client, server.addr).await.unwrap();
        assert_eq!(body["ip"], "127.0.0.1");
        assert_eq!(body["has_certificate"], false);
        assert_eq!(body["hsa"], Value::Null);
        // By IP address too: the server certificate names 127.0.0.1.
        let url = format!("https://{}/whoami", server.addr);
        assert!(client.get(url).send().await.unwrap().status().is_success());
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn client_without_the_example_ca_refuses_the_server() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let client = reqwest::Client::builder().tls_certs_only([]).build().unwrap();
        assert!(whoami(&client, server.addr).await.is_err());
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn required_client_auth_refuses_a_client_without_certificate() {
        let server = spawn_tls(&settings(ClientAuth::Required)).await;
        let err = whoami(&client_builder().build().unwrap(), server.addr).await.unwrap_err();
        assert!(err.status().is_none(), "refused in the handshake, not by HTTP status: {err}");
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn required_client_auth_gives_the_handler_lunds_hsa_id() {
        let server = spawn_tls(&settings(ClientAuth::Required)).await;
        let body = whoami(&client_with_certificate("lund-ehr"), server.addr).await.unwrap();
        assert_eq!(body["hsa"], LUND_HSA_ID);
        assert_eq!(body["cn"], "lund-ehr");
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn optional_client_auth_tells_organisations_apart() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let region = whoami(&client_with_certificate("region-skane"), server.addr).await.unwrap();
        assert_eq!(region["hsa"], "SE2321000255-0001");
        assert_eq!(region["cn"], "region-skane");
        let malmo = whoami(&client_with_certificate("malmo-ehr"), server.addr).await.unwrap();
        assert_eq!(malmo["hsa"], "SE2120000829-0001");
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn client_auth_off_ignores_client_certificates() {
        let server = spawn_tls(&settings(ClientAuth::Off)).await;
        let body = whoami(&client_with_certificate("lund-ehr"), server.addr).await.unwrap();
        assert_eq!(body["has_certificate"], false);
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_refused() {
        // The server certificate stands in for a foreign CA: Lund's issuer is not it.
        let foreign = TlsSettings { client_ca: Some(example("server.pem")), ..settings(ClientAuth::Optional) };
        let server = spawn_tls(&foreign).await;
        assert!(whoami(&client_with_certificate("lund-ehr"), server.addr).await.is_err());
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn server_certificate_is_refused_as_client_certificate() {
        // Signed by the right CA, but its extended key usage is serverAuth only.
        let server = spawn_tls(&settings(ClientAuth::Required)).await;
        let mut identity = pem("server.pem");
        identity.extend(pem("server.key"));
        let client = client_builder().identity(reqwest::Identity::from_pem(&identity).unwrap()).build().unwrap();
        assert!(whoami(&client, server.addr).await.is_err());
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn tls_1_2_and_1_3_are_both_served() {
        let server = spawn_tls(&settings(ClientAuth::Required)).await;
        for version in [reqwest::tls::Version::TLS_1_2, reqwest::tls::Version::TLS_1_3] {
            let mut identity = pem("clients/lund-ehr.pem");
            identity.extend(pem("clients/lund-ehr.key"));
            let client = client_builder()
                .identity(reqwest::Identity::from_pem(&identity).unwrap())
                .tls_version_min(version)
                .tls_version_max(version)
                .build()
                .unwrap();
            let body = whoami(&client, server.addr).await.unwrap_or_else(|e| panic!("{version:?}: {e}"));
            assert_eq!(body["hsa"], LUND_HSA_ID, "{version:?}");
        }
        server.shut_down().await.unwrap();
    }

    /// Sends `bytes` on a raw connection and returns what comes back before the server closes it.
    async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "the server should close the connection");
        reply
    }

    #[tokio::test]
    async fn tls_1_1_client_hello_gets_a_protocol_version_alert() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        // ClientHello for TLS 1.1 (0x0302): no supported_versions extension,
        // cipher suites TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA and TLS_RSA_WITH_AES_128_CBC_SHA.
        let mut body = vec![0x03, 0x02];
        body.extend([0x42; 32]); // random
        body.push(0); // session id
        body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
        body.extend([0x01, 0x00]); // compression: null
        // Extensions a TLS 1.1 client of a dual-stack library sends, so that the
        // hello fails on its version, not on a missing extension:
        // signature_algorithms, supported_groups, ec_point_formats.
        let extensions = [
            &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04][..],
            &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17],
            &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00],
        ]
        .concat();
        body.extend([0x00, u8::try_from(extensions.len()).unwrap()]);
        body.extend(extensions);
        let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x02, 0x00, u8::try_from(handshake.len()).unwrap()];
        record.extend(handshake);
        let reply = raw_exchange(server.addr, &record).await;
        assert!(reply.len() >= 7, "expected an alert, got {reply:?}");
        assert_eq!(reply[0], 0x15, "an alert record, not a ServerHello: {reply:?}");
        assert_eq!(reply[6], 70, "alert protocol_version: {reply:?}");
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn plain_http_on_the_tls_port_gets_no_http_answer() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let reply = raw_exchange(server.addr, b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(!reply.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&reply));
        let plain = reqwest::Client::new().get(format!("http://{}/whoami", server.addr)).send().await;
        assert!(plain.is_err(), "{plain:?}");
        // The server keeps serving TLS clients afterwards.
        assert!(whoami(&client_builder().build().unwrap(), server.addr).await.is_ok());
        server.shut_down().await.unwrap();
    }

    #[tokio::test]
    async fn a_stalled_handshake_does_not_hold_up_other_clients() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        let _half = {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
            tcp
        };
        let begun = Instant::now();
        whoami(&client_builder().build().unwrap(), server.addr).await.unwrap();
        assert!(begun.elapsed() < HANDSHAKE_TIMEOUT / 2, "took {:?}", begun.elapsed());
        // Shutdown does not wait for the stalled handshakes either.
        let begun = Instant::now();
        server.shut_down().await.unwrap();
        assert!(begun.elapsed() < Duration::from_secs(2), "took {:?}", begun.elapsed());
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_the_request_in_flight() {
        let server = spawn_tls(&settings(ClientAuth::Optional)).await;
        let client = client_builder().build().unwrap();
        let url = format!("https://localhost:{}/slow", server.addr.port());
        let in_flight = tokio::spawn(async move { client.get(url).send().await?.text().await });
        server.started.notified().await;
        let addr = server.addr;
        server.shut_down().await.unwrap();
        assert_eq!(in_flight.await.unwrap().unwrap(), "done");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
    }

    #[tokio::test]
    async fn plain_serving_gives_connect_info_and_no_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_plain(test_router(Arc::new(Notify::new())), listener, async move {
            let _ = stopped.await;
        }));
        let body: Value = reqwest::get(format!("http://{addr}/whoami"))
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["ip"], "127.0.0.1");
        assert_eq!(body["has_certificate"], false);
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }

    #[test]
    fn settings_default_from_an_empty_table_and_parse_lowercase_modes() {
        let empty: TlsSettings = toml::from_str("").unwrap();
        assert_eq!(empty, TlsSettings::default());
        assert_eq!(empty.client_auth, ClientAuth::Optional);
        assert_eq!(empty.client_ca.as_deref(), Some(Path::new("certs-example/ca.pem")));
        let set: TlsSettings =
            toml::from_str("enabled = false\nclient_auth = \"required\"\nclient_ca = \"\"\ncert = \"a.pem\"").unwrap();
        assert_eq!((set.enabled, set.client_auth, set.client_ca), (false, ClientAuth::Required, None));
        assert!(toml::from_str::<TlsSettings>("client_auth = \"Required\"").is_err());
        assert!(toml::from_str::<TlsSettings>("client_auth = \"sometimes\"").is_err());
        assert!(toml::from_str::<TlsSettings>("certificate = \"a.pem\"").is_err());
        // Round trip through TOML, as the configuration loader does with defaults.
        let table = toml::Table::try_from(TlsSettings::default()).unwrap();
        assert_eq!(table["client_auth"].as_str(), Some("optional"));
        assert_eq!(table.try_into::<TlsSettings>().unwrap(), TlsSettings::default());
    }

    #[test]
    fn example_settings_validate() {
        for mode in [ClientAuth::Off, ClientAuth::Optional, ClientAuth::Required] {
            settings(mode).validate().unwrap();
        }
        let disabled = TlsSettings { enabled: false, cert: "missing.pem".into(), ..settings(ClientAuth::Required) };
        disabled.validate().unwrap();
        assert!(server_config(&disabled).is_err());
    }

    #[test]
    fn validation_names_the_key_at_fault() {
        let message = |s: TlsSettings| s.validate().unwrap_err().to_string();
        let missing = message(TlsSettings { cert: "no/such/cert.pem".into(), ..settings(ClientAuth::Optional) });
        assert!(missing.starts_with("server.tls.cert: file no/such/cert.pem cannot be read: "), "{missing}");
        let not_pem = message(TlsSettings { cert: example("generate.sh"), ..settings(ClientAuth::Optional) });
        assert!(not_pem.starts_with("server.tls.cert: ") && not_pem.contains("no PEM CERTIFICATE"), "{not_pem}");
        let key_is_cert = message(TlsSettings { key: example("server.pem"), ..settings(ClientAuth::Optional) });
        assert!(key_is_cert.starts_with("server.tls.key: "), "{key_is_cert}");
        let wrong_key = message(TlsSettings { key: example("clients/lund-ehr.key"), ..settings(ClientAuth::Off) });
        assert!(wrong_key.starts_with("server.tls.key: does not fit"), "{wrong_key}");
        let no_ca = message(TlsSettings { client_ca: None, ..settings(ClientAuth::Required) });
        assert!(no_ca.starts_with("server.tls.client_ca: must be set"), "{no_ca}");
        let bad_ca = message(TlsSettings { client_ca: Some(example("ca.key")), ..settings(ClientAuth::Optional) });
        assert!(bad_ca.starts_with("server.tls.client_ca: "), "{bad_ca}");
        // With client_auth = off the CA is not needed.
        TlsSettings { client_ca: None, ..settings(ClientAuth::Off) }.validate().unwrap();
    }

    fn certificate_der(file: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(example(file)).unwrap().to_vec()
    }

    #[test]
    fn peer_identity_reads_hsa_id_and_common_name() {
        let lund = PeerIdentity::from_certificate(&certificate_der("clients/lund-ehr.pem"));
        assert_eq!(lund.organization_hsa_id.as_deref(), Some(LUND_HSA_ID));
        assert_eq!(lund.subject_cn.as_deref(), Some("lund-ehr"));
        let server = PeerIdentity::from_certificate(&certificate_der("server.pem"));
        assert_eq!(server, PeerIdentity { organization_hsa_id: None, subject_cn: Some("localhost".into()) });
    }

    #[test]
    fn peer_identity_of_a_damaged_certificate_is_empty_or_partial_never_a_panic() {
        assert_eq!(PeerIdentity::from_certificate(&[]), PeerIdentity::default());
        assert_eq!(PeerIdentity::from_certificate(b"not a certificate"), PeerIdentity::default());
        let der = certificate_der("clients/malmo-ehr.pem");
        for len in 0..der.len() {
            assert_eq!(PeerIdentity::from_certificate(&der[..len]), PeerIdentity::default(), "cut at {len}");
        }
        for at in 0..der.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = der.clone();
                damaged[at] ^= flip;
                let _ = PeerIdentity::from_certificate(&damaged);
            }
        }
    }
}

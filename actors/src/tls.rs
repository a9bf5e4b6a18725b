//! TLS for the media listeners (HTTPS-FLV, RTMPS) and, optionally, the API.
//!
//! Operators mount one certificate file, either PEM (chain and private key concatenated in
//! any order: `cat server.crt server.key > ssl.pem`) or PKCS#12 (legacy RC2/3DES or modern
//! AES). Both are mounted under any name (often `/ssl.p12`), so the kind is told apart by
//! content. The certificate is served through a [`ResolvesServerCert`] cell, so a replaced
//! file (noticed by polling, or on SIGHUP) takes effect for the next handshake without new
//! listeners; a bad replacement keeps the certificate in use.
//!
//! One [`ReloadingTls`] is meant to be shared (its `Arc` cloned) by every listener serving the
//! same file. Metrics, labelled by `file`: `iothub_tls_certificate_expiry_timestamp_seconds`
//! (the leaf's notAfter) and `iothub_tls_reload_failures_total`.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use p12_keystore::Pkcs12Archive;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A certificate file is a chain of a few certificates and one key; anything larger is not one.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// How often the watcher compares the file's identity, size and modification time.
const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The HTTP server behind the TLS listeners speaks HTTP/1.1 only.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

const EXPIRY_GAUGE: &str = "iothub_tls_certificate_expiry_timestamp_seconds";
const RELOAD_FAILURES: &str = "iothub_tls_reload_failures_total";

/// Where the certificate is and how to open it.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM (chain + key) or PKCS#12 file.
    pub certificate: PathBuf,
    /// The PKCS#12 password (empty is a valid password); unused for PEM.
    pub password: String,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("certificate", &self.certificate)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a certificate file cannot be used; every message starts with the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read the certificate file: {source}", file.display())]
    Unreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the certificate file is larger than {MAX_FILE_BYTES} bytes", file.display())]
    TooLarge { file: PathBuf },
    #[error("{}: neither PEM nor PKCS#12", file.display())]
    UnknownFormat { file: PathBuf },
    #[error("{}: malformed PEM: {reason}", file.display())]
    MalformedPem { file: PathBuf, reason: String },
    #[error("{}: the PEM private key is encrypted; give it unencrypted or as PKCS#12", file.display())]
    EncryptedPemKey { file: PathBuf },
    #[error("{}: PKCS#12 password is wrong or the file is damaged", file.display())]
    Pkcs12Password { file: PathBuf },
    #[error("{}: malformed PKCS#12: {reason}", file.display())]
    MalformedPkcs12 { file: PathBuf, reason: String },
    #[error("{}: no certificate in the file", file.display())]
    NoCertificate { file: PathBuf },
    #[error(
        "{}: no private key in the file (PEM needs the certificate and the key concatenated)",
        file.display()
    )]
    NoPrivateKey { file: PathBuf },
    #[error("{}: certificate {index} is not valid X.509: {reason}", file.display())]
    MalformedCertificate {
        file: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{}: the private key is not usable: {reason}", file.display())]
    UnusableKey { file: PathBuf, reason: String },
    #[error("{}: the private key matches none of the certificates", file.display())]
    KeyMismatch { file: PathBuf },
    #[error("{}: cannot build the TLS configuration: {reason}", file.display())]
    Config { file: PathBuf, reason: String },
    #[error("{}: cannot listen for SIGHUP to reload the certificate: {source}", file.display())]
    Signal {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl TlsError {
    /// The certificate file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            Self::Unreadable { file, .. }
            | Self::TooLarge { file }
            | Self::UnknownFormat { file }
            | Self::MalformedPem { file, .. }
            | Self::EncryptedPemKey { file }
            | Self::Pkcs12Password { file }
            | Self::MalformedPkcs12 { file, .. }
            | Self::NoCertificate { file }
            | Self::NoPrivateKey { file }
            | Self::MalformedCertificate { file, .. }
            | Self::UnusableKey { file, .. }
            | Self::KeyMismatch { file }
            | Self::Config { file, .. }
            | Self::Signal { file, .. } => file,
        }
    }
}

/// Describes the TLS metrics for the Prometheus exporter; [`ReloadingTls::start`] calls it.
pub fn describe_metrics() {
    describe_gauge!(
        EXPIRY_GAUGE,
        Unit::Seconds,
        "Unix time at which the served TLS certificate (the leaf) expires, per file"
    );
    describe_counter!(
        RELOAD_FAILURES,
        "Reloads of a TLS certificate file that failed (the previous certificate stays in use)"
    );
}

/// Loads the certificate once into a server configuration (ALPN http/1.1) and sets its
/// expiry gauge. For a certificate that follows file changes use [`ReloadingTls`].
pub fn load_server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let loaded = load_certificate(settings)?;
    loaded.record_expiry(&settings.certificate);
    let cell = Arc::new(CertificateCell {
        current: RwLock::new(loaded.key),
    });
    server_config(&settings.certificate, cell)
}

/// The current certificate, swapped in place when the file changes or on SIGHUP.
pub struct ReloadingTls {
    settings: TlsSettings,
    cell: Arc<CertificateCell>,
    config: Arc<ServerConfig>,
    stop: CancellationToken,
}

impl fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the certificate (error if bad) and starts the watcher task (must be called
    /// inside a tokio runtime); the watcher stops when the returned Arc's last clone is
    /// dropped or on `stop()`.
    pub fn start(settings: TlsSettings) -> Result<Arc<ReloadingTls>, TlsError> {
        Self::start_polling_every(settings, POLL_INTERVAL)
    }

    fn start_polling_every(
        settings: TlsSettings,
        poll_interval: Duration,
    ) -> Result<Arc<ReloadingTls>, TlsError> {
        describe_metrics();
        let file = settings.certificate.clone();
        // Registered before the first load, so a SIGHUP sent right after a replacement is
        // never lost (and never takes the default action of ending the process).
        let hangup = signal(SignalKind::hangup()).map_err(|source| TlsError::Signal {
            file: file.clone(),
            source,
        })?;
        let stamp = file_stamp(&file);
        let loaded = load_certificate(&settings)?;
        loaded.record_expiry(&file);
        let cell = Arc::new(CertificateCell {
            current: RwLock::new(loaded.key),
        });
        let config = Arc::new(server_config(&file, cell.clone())?);
        let stop = CancellationToken::new();
        let tls = Arc::new(ReloadingTls {
            settings,
            cell,
            config,
            stop: stop.clone(),
        });
        tokio::spawn(watch(
            Arc::downgrade(&tls),
            file,
            stamp,
            hangup,
            stop,
            poll_interval,
        ));
        tracing::info!(file = %tls.settings.certificate.display(), "TLS certificate loaded");
        Ok(tls)
    }

    /// An acceptor using the current certificate (cheap; call per connection).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Reads the file again and serves it from the next handshake on; on error the previous
    /// certificate stays, the error is logged and `iothub_tls_reload_failures_total` counts it.
    pub fn reload(&self) -> Result<(), TlsError> {
        let file = &self.settings.certificate;
        match load_certificate(&self.settings) {
            Ok(loaded) => {
                loaded.record_expiry(file);
                *self
                    .cell
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = loaded.key;
                tracing::info!(file = %file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(error) => {
                counter!(RELOAD_FAILURES, "file" => file.display().to_string()).increment(1);
                tracing::error!(%error, "TLS certificate reload failed; the previous certificate stays in use");
                Err(error)
            }
        }
    }

    /// Stops watching the file and SIGHUP; the current certificate keeps being served.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for ReloadingTls {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What identifies a version of the file: a replacement by rename changes the inode, an
/// in-place rewrite the size or the modification time.
type FileStamp = Option<(u64, u64, SystemTime)>;

fn file_stamp(file: &Path) -> FileStamp {
    // `metadata` follows symlinks, as a mounted Kubernetes secret swaps them.
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.ino(), metadata.len(), metadata.modified().ok()?))
}

async fn watch(
    tls: Weak<ReloadingTls>,
    file: PathBuf,
    mut seen: FileStamp,
    mut hangup: Signal,
    stop: CancellationToken,
    poll_interval: Duration,
) {
    let mut ticks = tokio::time::interval(poll_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reload = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = hangup.recv() => {
                seen = file_stamp(&file);
                true
            }
            _ = ticks.tick() => {
                let now = file_stamp(&file);
                // A file being written may be seen half-done; the finished write changes the
                // stamp again, so it is read once more.
                let changed = now != seen;
                seen = now;
                changed
            }
        };
        if !reload {
            continue;
        }
        let Some(tls) = tls.upgrade() else { return };
        // Reading and decrypting the file is blocking work; its outcome is logged and counted
        // by `reload` itself.
        let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
    }
}

/// The cell every handshake reads the certificate from.
#[derive(Debug)]
struct CertificateCell {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertificateCell {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(file: &Path, cell: Arc<CertificateCell>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config {
            file: file.to_path_buf(),
            reason: error.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(cell);
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(config)
}

struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    /// The leaf's notAfter, Unix seconds.
    not_after: i64,
}

impl LoadedCertificate {
    fn record_expiry(&self, file: &Path) {
        // Unix seconds of any certificate fit f64's 53-bit mantissa exactly.
        gauge!(EXPIRY_GAUGE, "file" => file.display().to_string()).set(self.not_after as f64);
    }
}

fn load_certificate(settings: &TlsSettings) -> Result<LoadedCertificate, TlsError> {
    let file = settings.certificate.as_path();
    let bytes = read_bounded(file)?;
    let (chain, key) = if is_pem(&bytes) {
        parse_pem(file, &bytes)?
    } else if bytes.first() == Some(&0x30) {
        // DER always starts with a SEQUENCE tag, as a PKCS#12 PFX does.
        parse_pkcs12(file, &bytes, &settings.password)?
    } else {
        return Err(TlsError::UnknownFormat {
            file: file.to_path_buf(),
        });
    };
    certified_key(file, chain, key)
}

fn read_bounded(file: &Path) -> Result<Vec<u8>, TlsError> {
    let unreadable = |source| TlsError::Unreadable {
        file: file.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(file)
        .map_err(unreadable)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::TooLarge {
            file: file.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn is_pem(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

type ChainAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn parse_pem(file: &Path, bytes: &[u8]) -> Result<ChainAndKey, TlsError> {
    let malformed = |error: rustls_pki_types::pem::Error| TlsError::MalformedPem {
        file: file.to_path_buf(),
        reason: error.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(malformed)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            // PKCS#8 "ENCRYPTED PRIVATE KEY" or a traditional key with a Proc-Type header.
            return Err(
                if contains(bytes, b"ENCRYPTED PRIVATE KEY") || contains(bytes, b"4,ENCRYPTED") {
                    TlsError::EncryptedPemKey {
                        file: file.to_path_buf(),
                    }
                } else {
                    TlsError::NoPrivateKey {
                        file: file.to_path_buf(),
                    }
                },
            );
        }
        Err(error) => return Err(malformed(error)),
    };
    Ok((chain, key))
}

fn parse_pkcs12(file: &Path, bytes: &[u8], password: &str) -> Result<ChainAndKey, TlsError> {
    let archive = Pkcs12Archive::from_pkcs12(bytes, password).map_err(|error| match error {
        // A wrong password fails the MAC or, without a MAC, the padding of the decryption.
        p12_keystore::error::Error::MacError(_) | p12_keystore::error::Error::UnpadError => {
            TlsError::Pkcs12Password {
                file: file.to_path_buf(),
            }
        }
        other => TlsError::MalformedPkcs12 {
            file: file.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let chain: Vec<CertificateDer<'static>> = archive
        .certs
        .iter()
        .map(|bag| CertificateDer::from(bag.cert.as_der().to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: file.to_path_buf(),
        });
    }
    let Some(key_bag) = archive.keys.into_iter().next() else {
        return Err(TlsError::NoPrivateKey {
            file: file.to_path_buf(),
        });
    };
    let key = PrivateKeyDer::Pkcs8(key_bag.key.as_der().to_vec().into());
    Ok((chain, key))
}

/// Puts the certificate of the key first (files list the chain in any order) and reads the
/// leaf's expiry.
fn certified_key(
    file: &Path,
    mut chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<LoadedCertificate, TlsError> {
    let signing_key: Arc<dyn SigningKey> =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|error| TlsError::UnusableKey {
                file: file.to_path_buf(),
                reason: error.to_string(),
            })?;
    let mut key_spki_matches = Vec::with_capacity(chain.len());
    let mut not_after = Vec::with_capacity(chain.len());
    let key_spki = signing_key.public_key();
    for (index, certificate) in chain.iter().enumerate() {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(certificate.as_ref()).map_err(|error| {
                TlsError::MalformedCertificate {
                    file: file.to_path_buf(),
                    index: index + 1,
                    reason: error.to_string(),
                }
            })?;
        key_spki_matches.push(
            key_spki
                .as_ref()
                .map(|spki| spki.as_ref() == parsed.public_key().raw),
        );
        not_after.push(parsed.validity().not_after.timestamp());
    }
    let leaf = match key_spki_matches.iter().position(|m| *m == Some(true)) {
        Some(leaf) => leaf,
        // A key type whose public key rustls cannot derive: trust the file's order.
        None if key_spki.is_none() => 0,
        None => {
            return Err(TlsError::KeyMismatch {
                file: file.to_path_buf(),
            })
        }
    };
    let leaf_not_after = not_after.get(leaf).copied().unwrap_or_default();
    let leaf_certificate = chain.remove(leaf);
    chain.insert(0, leaf_certificate);
    Ok(LoadedCertificate {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        not_after: leaf_not_after,
    })
}

#[cfg(test)]
mod tests {
    //! Certificates are made with the openssl CLI as the operator's guide makes them, and every
    //! file that loads serves a real TLS handshake to a rustls client.

    use super::*;
    use std::process::Command;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Runs openssl in `dir`, failing the test with openssl's own words.
    fn openssl(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "these tests need the openssl CLI on PATH (apt-get install openssl): {error}"
                )
            });
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The guide's §2.1.1: an RSA key, a request, a self-signed certificate for ten years.
    fn self_signed(dir: &Path, common_name: &str, genrsa_extra: &[&str]) {
        let mut genrsa = vec!["genrsa"];
        genrsa.extend_from_slice(genrsa_extra);
        genrsa.extend_from_slice(&["-out", "server.key", "2048"]);
        openssl(dir, &genrsa);
        sign_request(dir, common_name);
    }

    fn sign_request(dir: &Path, common_name: &str) {
        let subject = format!("/C=CN/ST=Guangdong/L=Shenzhen/O=iothub/CN={common_name}");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                &subject,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "3650",
                "-in",
                "server.csr",
                "-signkey",
                "server.key",
                "-out",
                "server.crt",
            ],
        );
    }

    fn concatenate(dir: &Path, parts: &[&str], into: &str) -> PathBuf {
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend(std::fs::read(dir.join(part)).expect("a part of the PEM file"));
        }
        let path = dir.join(into);
        std::fs::write(&path, bytes).expect("write the certificate file");
        path
    }

    fn certificate_der(dir: &Path) -> Vec<u8> {
        CertificateDer::from_pem_file(dir.join("server.crt"))
            .expect("server.crt is PEM")
            .as_ref()
            .to_vec()
    }

    fn settings(certificate: PathBuf, password: &str) -> TlsSettings {
        TlsSettings {
            certificate,
            password: password.to_owned(),
        }
    }

    /// Accepts any server certificate but checks the handshake's signature against the
    /// certificate's public key, so the test compares the presented certificate with the
    /// expected one itself. The guide's certificates are X.509 v1 without subjectAltName, which
    /// WebPKI refuses even to parse for a signature check, hence the raw public key and TLS 1.3
    /// (TLS 1.2 is checked with `openssl s_client`).
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls_pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General(
                "the test client speaks TLS 1.3 only".into(),
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|error| rustls::Error::General(error.to_string()))?;
            let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
            rustls::crypto::verify_tls13_signature_with_raw_key(
                message,
                &spki,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    struct Handshake {
        /// The end-entity certificate the server presented (DER).
        served: Vec<u8>,
        /// The certificates after it.
        chain: Vec<Vec<u8>>,
        alpn: Option<Vec<u8>>,
        reply: Vec<u8>,
    }

    /// One connection through `acceptor`: a handshake offering h2 and http/1.1, then "ping"
    /// answered with "pong".
    async fn handshake(acceptor: tokio_rustls::TlsAcceptor) -> Handshake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            let mut request = [0u8; 4];
            tls.read_exact(&mut request).await.expect("read ping");
            assert_eq!(&request, b"ping");
            tls.write_all(b"pong").await.expect("write pong");
            tls.shutdown().await.expect("close");
        });
        let provider = provider();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(address).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("iothub.test").expect("name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        tls.write_all(b"ping").await.expect("write ping");
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.expect("read pong");
        server.await.expect("server task");
        let connection = tls.get_ref().1;
        Handshake {
            served: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.as_ref().to_vec())
                .expect("the server presents a certificate"),
            chain: connection
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .skip(1)
                .map(|certificate| certificate.as_ref().to_vec())
                .collect(),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            reply,
        }
    }

    /// One connection through `acceptor` from `openssl s_client` over TLS 1.2, as OpenSSL
    /// based players and encoders connect; returns what s_client printed.
    async fn openssl_client_tls12(acceptor: tokio_rustls::TlsAcceptor) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            let mut request = [0u8; 4];
            tls.read_exact(&mut request).await.expect("read ping");
            tls.write_all(b"pong").await.expect("write pong");
            tls.shutdown().await.expect("close");
        });
        let mut client = tokio::process::Command::new("openssl")
            .args([
                "s_client", "-tls1_2", "-alpn", "http/1.1", "-ign_eof", "-connect",
            ])
            .arg(address.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("these tests need the openssl CLI on PATH (apt-get install openssl)");
        let mut stdin = client.stdin.take().expect("stdin");
        stdin.write_all(b"ping").await.expect("ping to s_client");
        drop(stdin);
        let output = tokio::time::timeout(Duration::from_secs(20), client.wait_with_output())
            .await
            .expect("s_client finishes")
            .expect("s_client output");
        server.await.expect("server task");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Loads `file` both ways and checks each serves `expected` over a working connection.
    async fn assert_serves(file: PathBuf, password: &str, expected: &[u8]) {
        let once = load_server_config(&settings(file.clone(), password))
            .unwrap_or_else(|error| panic!("load_server_config: {error}"));
        let served = handshake(tokio_rustls::TlsAcceptor::from(Arc::new(once))).await;
        assert!(
            served.served == expected,
            "load_server_config serves the file's certificate"
        );
        assert_eq!(served.reply, b"pong");
        assert_eq!(served.alpn.as_deref(), Some(ALPN_HTTP_1_1));

        let reloading = ReloadingTls::start(settings(file, password))
            .unwrap_or_else(|error| panic!("ReloadingTls::start: {error}"));
        let served = handshake(reloading.acceptor()).await;
        assert!(
            served.served == expected,
            "ReloadingTls serves the file's certificate"
        );
        assert_eq!(served.reply, b"pong");
    }

    fn file_text(path: &Path) -> String {
        String::from_utf8_lossy(&std::fs::read(path).expect("read")).into_owned()
    }

    #[tokio::test]
    async fn pem_certificate_then_key_as_the_guide_concatenates_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "guide.iothub.test", &[]);
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn openssl_clients_get_the_certificate_over_tls_1_2() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "tls12.iothub.test", &[]);
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        let tls = ReloadingTls::start(settings(file, "")).expect("loads");
        let printed = openssl_client_tls12(tls.acceptor()).await;
        let served =
            CertificateDer::from_pem_slice(printed.as_bytes()).expect("s_client prints it");
        assert!(served.as_ref() == certificate_der(dir.path()), "{printed}");
        assert!(printed.contains("Protocol  : TLSv1.2"), "{printed}");
        assert!(printed.contains("ALPN protocol: http/1.1"), "{printed}");
        assert!(printed.contains("pong"), "{printed}");
    }

    #[tokio::test]
    async fn pem_key_then_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "reversed.iothub.test", &[]);
        let file = concatenate(dir.path(), &["server.key", "server.crt"], "ssl.pem");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pem_with_a_pkcs8_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "pkcs8.iothub.test", &[]);
        assert!(file_text(&dir.path().join("server.key")).contains("-----BEGIN PRIVATE KEY-----"));
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pem_with_a_pkcs1_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "pkcs1.iothub.test", &["-traditional"]);
        assert!(
            file_text(&dir.path().join("server.key")).contains("-----BEGIN RSA PRIVATE KEY-----")
        );
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pem_with_a_sec1_ec_key_and_its_parameters() {
        let dir = tempfile::tempdir().expect("temp dir");
        openssl(
            dir.path(),
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-out",
                "server.key",
            ],
        );
        let key = file_text(&dir.path().join("server.key"));
        assert!(key.contains("-----BEGIN EC PARAMETERS-----"));
        assert!(key.contains("-----BEGIN EC PRIVATE KEY-----"));
        sign_request(dir.path(), "ec.iothub.test");
        let file = concatenate(dir.path(), &["server.key", "server.crt"], "ssl.pem");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pem_with_windows_line_endings() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "crlf.iothub.test", &[]);
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        let crlf = file_text(&file).replace('\n', "\r\n");
        std::fs::write(&file, crlf).expect("write");
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    /// A CA and a leaf it signs (X.509 v3, as a CA issues them) into ca.crt, server.key and
    /// server.crt.
    fn ca_signed(dir: &Path) {
        openssl(dir, &["genrsa", "-out", "ca.key", "2048"]);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "3650",
                "-subj",
                "/O=iothub/CN=iothub test CA",
                "-out",
                "ca.crt",
            ],
        );
        openssl(dir, &["genrsa", "-out", "server.key", "2048"]);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-subj",
                "/CN=leaf.iothub.test",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "365",
                "-out",
                "server.crt",
            ],
        );
    }

    fn der_of(dir: &Path, name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(dir.join(name))
            .expect("a PEM certificate")
            .as_ref()
            .to_vec()
    }

    #[tokio::test]
    async fn a_pem_chain_listing_the_ca_first_serves_the_leaf_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        ca_signed(dir.path());
        let file = concatenate(
            dir.path(),
            &["ca.crt", "server.key", "server.crt"],
            "ssl.pem",
        );
        let tls = ReloadingTls::start(settings(file, "")).expect("loads");
        let served = handshake(tls.acceptor()).await;
        assert!(
            served.served == der_of(dir.path(), "server.crt"),
            "the leaf first"
        );
        assert!(
            served.chain == [der_of(dir.path(), "ca.crt")],
            "then the CA"
        );
    }

    #[tokio::test]
    async fn a_pkcs12_with_its_ca_serves_the_leaf_and_the_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        ca_signed(dir.path());
        openssl(
            dir.path(),
            &[
                "pkcs12",
                "-export",
                "-in",
                "server.crt",
                "-inkey",
                "server.key",
                "-certfile",
                "ca.crt",
                "-out",
                "ssl.p12",
                "-passout",
                "pass:s3cret",
            ],
        );
        let tls =
            ReloadingTls::start(settings(dir.path().join("ssl.p12"), "s3cret")).expect("loads");
        let served = handshake(tls.acceptor()).await;
        assert!(
            served.served == der_of(dir.path(), "server.crt"),
            "the leaf first"
        );
        assert!(
            served.chain == [der_of(dir.path(), "ca.crt")],
            "then the CA"
        );
    }

    /// `openssl pkcs12 -export` into `name`, `-legacy` when asked; returns the file's path.
    fn pkcs12(dir: &Path, name: &str, password: &str, legacy: bool) -> PathBuf {
        let passout = format!("pass:{password}");
        let mut args = vec![
            "pkcs12",
            "-export",
            "-in",
            "server.crt",
            "-inkey",
            "server.key",
            "-out",
            name,
            "-passout",
            &passout,
        ];
        if legacy {
            args.push("-legacy");
        }
        openssl(dir, &args);
        dir.join(name)
    }

    /// What `openssl pkcs12 -info` says about the file's encryption.
    fn pkcs12_info(dir: &Path, name: &str, password: &str) -> String {
        let passin = format!("pass:{password}");
        let output = Command::new("openssl")
            .args([
                "pkcs12", "-info", "-noout", "-legacy", "-in", name, "-passin", &passin,
            ])
            .current_dir(dir)
            .output()
            .expect("openssl pkcs12 -info");
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout)
    }

    #[tokio::test]
    async fn pkcs12_aes_with_a_password_named_ssl_p12() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "aes.iothub.test", &[]);
        let file = pkcs12(dir.path(), "ssl.p12", "s3cret", false);
        assert!(pkcs12_info(dir.path(), "ssl.p12", "s3cret").contains("AES-256-CBC"));
        assert_serves(file, "s3cret", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pkcs12_aes_with_an_empty_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "aes-empty.iothub.test", &[]);
        let file = pkcs12(dir.path(), "ssl.p12", "", false);
        assert!(pkcs12_info(dir.path(), "ssl.p12", "").contains("AES-256-CBC"));
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pkcs12_legacy_rc2_and_3des_with_a_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "legacy.iothub.test", &[]);
        let file = pkcs12(dir.path(), "ssl.p12", "s3cret", true);
        let info = pkcs12_info(dir.path(), "ssl.p12", "s3cret");
        assert!(info.contains("pbeWithSHA1And40BitRC2-CBC"), "{info}");
        assert!(info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{info}");
        assert_serves(file, "s3cret", &certificate_der(dir.path())).await;
    }

    #[tokio::test]
    async fn pkcs12_legacy_with_an_empty_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "legacy-empty.iothub.test", &[]);
        let file = pkcs12(dir.path(), "ssl.p12", "", true);
        assert!(pkcs12_info(dir.path(), "ssl.p12", "").contains("pbeWithSHA1And40BitRC2-CBC"));
        assert_serves(file, "", &certificate_der(dir.path())).await;
    }

    #[test]
    fn pkcs12_with_a_wrong_password_names_the_file_and_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "wrong.iothub.test", &[]);
        for legacy in [false, true] {
            let file = pkcs12(dir.path(), "ssl.p12", "s3cret", legacy);
            let error =
                load_server_config(&settings(file.clone(), "guess")).expect_err("wrong password");
            assert!(
                matches!(error, TlsError::Pkcs12Password { .. }),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!(
                    "{}: PKCS#12 password is wrong or the file is damaged",
                    file.display()
                )
            );
        }
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.p12");
        let error = load_server_config(&settings(file.clone(), "")).expect_err("missing");
        assert!(matches!(error, TlsError::Unreadable { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: cannot read", file.display())),
            "{error}"
        );
        assert_eq!(error.file(), file);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "keyless.iothub.test", &[]);
        let file = dir.path().join("server.crt");
        let error = load_server_config(&settings(file.clone(), "")).expect_err("no key");
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(error
            .to_string()
            .starts_with(&format!("{}: no private key", file.display())));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "mismatch.iothub.test", &[]);
        openssl(dir.path(), &["genrsa", "-out", "other.key", "2048"]);
        let file = concatenate(dir.path(), &["server.crt", "other.key"], "ssl.pem");
        let error = load_server_config(&settings(file.clone(), "")).expect_err("mismatch");
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        assert!(error.to_string().starts_with(&file.display().to_string()));
    }

    #[test]
    fn a_file_of_neither_kind_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.p12");
        std::fs::write(&file, b"not a certificate\n").expect("write");
        let error = load_server_config(&settings(file.clone(), "")).expect_err("garbage");
        assert_eq!(
            error.to_string(),
            format!("{}: neither PEM nor PKCS#12", file.display())
        );
    }

    #[test]
    fn an_encrypted_pem_key_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "encrypted.iothub.test", &[]);
        openssl(
            dir.path(),
            &[
                "pkcs8",
                "-topk8",
                "-in",
                "server.key",
                "-out",
                "encrypted.key",
                "-passout",
                "pass:s3cret",
            ],
        );
        let file = concatenate(dir.path(), &["server.crt", "encrypted.key"], "ssl.pem");
        let error = load_server_config(&settings(file, "s3cret")).expect_err("encrypted");
        assert!(
            matches!(error, TlsError::EncryptedPemKey { .. }),
            "{error:?}"
        );
    }

    /// The gauge's value for `file` in the Prometheus text.
    fn gauge_value(rendered: &str, file: &Path) -> Option<f64> {
        let prefix = format!("{EXPIRY_GAUGE}{{file=\"{}\"}} ", file.display());
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
    }

    fn openssl_not_after(dir: &Path) -> i64 {
        let printed = openssl(dir, &["x509", "-enddate", "-noout", "-in", "server.crt"]);
        // "notAfter=Dec  4 23:22:18 2036 GMT"
        let date = printed.trim().trim_start_matches("notAfter=");
        let date = date.split_whitespace().collect::<Vec<_>>().join(" ");
        chrono::NaiveDateTime::parse_from_str(&date, "%b %d %H:%M:%S %Y GMT")
            .unwrap_or_else(|error| panic!("openssl printed {printed:?}: {error}"))
            .and_utc()
            .timestamp()
    }

    #[test]
    fn the_expiry_gauge_is_the_leafs_not_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        self_signed(dir.path(), "expiry.iothub.test", &[]);
        let file = concatenate(dir.path(), &["server.crt", "server.key"], "ssl.pem");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            load_server_config(&settings(file.clone(), "")).expect("loads")
        });
        let rendered = metrics.render();
        assert_eq!(
            gauge_value(&rendered, &file),
            Some(openssl_not_after(dir.path()) as f64),
            "{rendered}"
        );
    }

    /// Replaces the certificate file in place with a new key and certificate for `common_name`
    /// and returns the new certificate.
    fn replace(dir: &Path, common_name: &str, file: &Path) -> Vec<u8> {
        self_signed(dir, common_name, &[]);
        let mut bytes = std::fs::read(dir.join("server.crt")).expect("crt");
        bytes.extend(std::fs::read(dir.join("server.key")).expect("key"));
        std::fs::write(file, bytes).expect("replace the certificate file");
        certificate_der(dir)
    }

    #[tokio::test]
    async fn reload_serves_the_replacement_and_keeps_it_when_the_next_is_bad() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.pem");
        let first = replace(dir.path(), "first.iothub.test", &file);
        // No poll and no SIGHUP of other tests comes in between: only `reload` is exercised.
        let tls = ReloadingTls::start_polling_every(
            settings(file.clone(), ""),
            Duration::from_secs(3600),
        )
        .expect("first certificate");
        assert!(
            handshake(tls.acceptor()).await.served == first,
            "the first certificate"
        );

        let second = replace(dir.path(), "second.iothub.test", &file);
        assert!(second != first);
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        metrics::with_local_recorder(&recorder, || tls.reload()).expect("the second loads");
        assert_eq!(
            gauge_value(&metrics.render(), &file),
            Some(openssl_not_after(dir.path()) as f64),
            "the expiry gauge follows the reload"
        );
        assert!(
            handshake(tls.acceptor()).await.served == second,
            "the second certificate"
        );

        std::fs::copy(dir.path().join("server.crt"), &file).expect("a certificate without key");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let error = metrics::with_local_recorder(&recorder, || tls.reload())
            .expect_err("a key-less replacement fails");
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(
            handshake(tls.acceptor()).await.served == second,
            "the bad replacement keeps the second certificate"
        );
        let failures = format!("{RELOAD_FAILURES}{{file=\"{}\"}} 1", file.display());
        assert!(metrics.render().contains(&failures), "{}", metrics.render());
    }

    /// Handshakes until the served certificate is `expected`, for at most ten seconds.
    async fn wait_until_served(tls: &ReloadingTls, expected: &[u8], what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while handshake(tls.acceptor()).await.served != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within ten seconds"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_changed_file_is_picked_up_by_the_watcher() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.pem");
        let first = replace(dir.path(), "before.iothub.test", &file);
        let tls = ReloadingTls::start_polling_every(
            settings(file.clone(), ""),
            Duration::from_millis(100),
        )
        .expect("first certificate");
        assert!(handshake(tls.acceptor()).await.served == first);
        let second = replace(dir.path(), "after.iothub.test", &file);
        wait_until_served(&tls, &second, "the changed file is served").await;
    }

    #[tokio::test]
    async fn sighup_reloads_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.pem");
        let first = replace(dir.path(), "before-hup.iothub.test", &file);
        // An hour between polls: only the signal can make the change seen in time.
        let tls = ReloadingTls::start_polling_every(
            settings(file.clone(), ""),
            Duration::from_secs(3600),
        )
        .expect("first certificate");
        assert!(handshake(tls.acceptor()).await.served == first);
        let second = replace(dir.path(), "after-hup.iothub.test", &file);
        let status = Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill(1) to send SIGHUP");
        assert!(status.success());
        wait_until_served(&tls, &second, "SIGHUP reloads the file").await;
    }

    /// Tasks alive on this test's own runtime, after letting finished ones be reaped.
    async fn alive_tasks() -> usize {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    #[tokio::test]
    async fn the_watcher_ends_with_the_last_handle() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.pem");
        replace(dir.path(), "dropped.iothub.test", &file);
        let before = alive_tasks().await;
        let tls = ReloadingTls::start_polling_every(settings(file, ""), Duration::from_millis(10))
            .expect("certificate");
        let handle = tls.clone();
        assert_eq!(alive_tasks().await, before + 1, "the watcher runs");
        drop(tls);
        assert_eq!(alive_tasks().await, before + 1, "a clone keeps it running");
        let acceptor = handle.acceptor();
        drop(handle);
        assert_eq!(
            alive_tasks().await,
            before,
            "the watcher ended with the last clone"
        );
        // An acceptor outlives the handle and keeps serving the last certificate.
        assert_eq!(handshake(acceptor).await.reply, b"pong");
    }

    #[tokio::test]
    async fn stop_ends_the_watcher_and_keeps_serving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("ssl.pem");
        let served = replace(dir.path(), "stopped.iothub.test", &file);
        let before = alive_tasks().await;
        let tls = ReloadingTls::start_polling_every(settings(file, ""), Duration::from_millis(10))
            .expect("certificate");
        tls.stop();
        assert_eq!(alive_tasks().await, before, "the watcher ended on stop");
        assert!(handshake(tls.acceptor()).await.served == served);
    }
}

//! Connections, below the protocols: accepting them within a limit, terminating TLS, and closing
//! the ones that stall. Both ports share this; the HTTP port then runs hyper's HTTP/1.1 on each
//! connection (for its header timeout) and the gRPC port hands the stream to tonic.
//!
//! What a hostile or broken client can hold is bounded here: a place under
//! [`TransportConfig::max_connections`] (a connection beyond it is closed at once, so the
//! kernel's backlog never fills), a TLS handshake of at most the header timeout, and a
//! connection on which no byte moves either way for [`TransportConfig::idle_timeout`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How connections are accepted and when they are closed, on both ports.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Certificate and key for TLS on both ports; plain TCP without.
    pub tls: Option<TlsFiles>,
    /// Open connections per port; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time for a TLS handshake and, on HTTP, for each request head (hyper also applies it to
    /// a keep-alive connection waiting for its next request).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed.
    pub idle_timeout: Duration,
    /// gRPC: how often an otherwise quiet HTTP/2 connection is pinged, and how long the pong may
    /// take before the connection is dropped.
    pub http2_keepalive_interval: Duration,
    /// See `http2_keepalive_interval`.
    pub http2_keepalive_timeout: Duration,
    /// gRPC: calls open at once on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for TransportConfig {
    /// Production proxies' figures: Kestrel's 30 s for request heads, an idle limit near
    /// nginx's and Kestrel's keep-alive (75 s, 130 s), grpc-go's 20 s ping timeout and nginx's
    /// 128 streams per HTTP/2 connection.
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 128,
        }
    }
}

/// PEM files for TLS. They are read again when they change, so a renewed certificate is used
/// by new connections without a restart.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Clients must present a certificate signed by one of these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("TLS: {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS: {0}")]
    Config(#[from] rustls::Error),
    /// The client CAs cannot verify certificates.
    #[error("TLS: --tls-client-ca: {0}")]
    ClientCa(String),
}

/// The protocol a port speaks, as TLS negotiates it (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: TF Serving REST, v2 REST, metrics, pages.
    Http1,
    /// HTTP/2: gRPC.
    Http2,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::Http2 => "grpc",
        }
    }
}

/// One port's listening socket with its limit and TLS.
pub struct Listener {
    tcp: TcpListener,
    protocol: Protocol,
    tls: Option<tokio_rustls::TlsAcceptor>,
    places: Arc<Semaphore>,
    config: TransportConfig,
}

impl Listener {
    /// Wraps a bound socket. TLS files are read now, so a bad certificate stops the start.
    pub fn new(
        tcp: TcpListener,
        protocol: Protocol,
        config: &TransportConfig,
    ) -> Result<Self, TlsError> {
        let tls = match &config.tls {
            Some(files) => Some(acceptor(files, protocol)?),
            None => None,
        };
        Ok(Self {
            tcp,
            protocol,
            tls,
            places: Arc::new(Semaphore::new(config.max_connections)),
            config: config.clone(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepted connections, TLS already terminated, each holding its place under the limit.
    /// Handshakes run in tasks of their own, so a slow one does not hold up the others.
    pub fn incoming(self) -> impl Stream<Item = io::Result<Connection>> + Send + 'static {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Connection>(64);
        tokio::spawn(self.accept_into(sender));
        futures::stream::unfold(receiver, |mut receiver| async move {
            let connection = receiver.recv().await?;
            Some((Ok(connection), receiver))
        })
    }

    async fn accept_into(self, sender: tokio::sync::mpsc::Sender<Connection>) {
        let label = self.protocol.label();
        let open = metrics::gauge!(format!("{}_connections_open", crate::metrics::PREFIX), "listener" => label);
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin, as
                        // hyper's and axum's accept loops do.
                        tracing::warn!(listener = label, error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = sender.closed() => return,
            };
            let Ok(place) = self.places.clone().try_acquire_owned() else {
                refused(label, "limit");
                tracing::debug!(listener = label, client = %remote, "connection limit reached: closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().ok();
            let tls = self.tls.clone();
            let sender = sender.clone();
            let config = self.config.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let io = match tls {
                    None => Io::Plain(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(config.header_read_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(stream)) => Io::Tls(Box::new(stream)),
                            Ok(Err(e)) => {
                                refused(label, "tls");
                                tracing::debug!(listener = label, client = %remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                refused(label, "handshake_timeout");
                                tracing::debug!(listener = label, client = %remote, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                open.increment(1.0);
                let connection = Connection {
                    io,
                    idle: Box::pin(tokio::time::sleep(config.idle_timeout)),
                    idle_timeout: config.idle_timeout,
                    remote,
                    local,
                    _place: Place {
                        _permit: place,
                        open,
                    },
                };
                let _ = sender.send(connection).await;
            });
        }
    }
}

fn refused(listener: &'static str, reason: &'static str) {
    metrics::counter!(
        format!("{}_connections_refused_total", crate::metrics::PREFIX),
        "listener" => listener,
        "reason" => reason
    )
    .increment(1);
}

/// A connection's place under the limit, and in the open-connections gauge.
struct Place {
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: plain or TLS, closed with `TimedOut` once idle for too long.
pub struct Connection {
    io: Io,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    _place: Place,
}

impl Connection {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// After progress either way, the idle clock starts again.
    fn moved(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// After a write: bytes out restart the idle clock; a client that stops reading its
    /// responses is as idle as one that stops writing.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }

    /// Called when the transport has nothing to give: has the connection been idle too long?
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.idle.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no byte moved on the connection for {} s",
                self.idle_timeout.as_secs_f64()
            ),
        ))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        };
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

fn acceptor(files: &TlsFiles, protocol: Protocol) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = ReloadingCertificate::new(files, provider.clone())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(certificate));
    config.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
    }];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certificates.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certificates)
}

/// How often the certificate files' modification times are looked at, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The server's certificate, read again from its files when they change (checked at a new
/// handshake, at most once per [`RELOAD_CHECK`]). A pair that cannot be loaded (say, the
/// certificate is renewed and the key is not written yet) keeps the previous one in use and is
/// tried again.
#[derive(Debug)]
struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    loaded: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    modified: [Option<SystemTime>; 2],
    checked: Instant,
    key: Arc<CertifiedKey>,
}

impl ReloadingCertificate {
    fn new(
        files: &TlsFiles,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let modified = modified(&files.cert, &files.key);
        let key = load_certified_key(&files.cert, &files.key, &provider)?;
        Ok(Self {
            cert: files.cert.clone(),
            key: files.key.clone(),
            provider,
            loaded: RwLock::new(Loaded {
                modified,
                checked: Instant::now(),
                key: Arc::new(key),
            }),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stale = {
            let loaded = self.loaded.read().ok()?;
            if loaded.checked.elapsed() < RELOAD_CHECK {
                return Some(loaded.key.clone());
            }
            modified(&self.cert, &self.key) != loaded.modified
        };
        let mut loaded = self.loaded.write().ok()?;
        loaded.checked = Instant::now();
        if stale {
            let now = modified(&self.cert, &self.key);
            match load_certified_key(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    loaded.key = Arc::new(key);
                    loaded.modified = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the previous one")
                }
            }
        }
        Some(loaded.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn modified(cert: &Path, key: &Path) -> [Option<SystemTime>; 2] {
    [cert, key].map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        reason: format!("no PEM private key: {e}"),
    })?;
    Ok(CertifiedKey::from_der(chain, private, provider)?)
}

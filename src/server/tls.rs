//! HTTPS for the REST listener (`server.tls_cert_path`, `server.tls_key_path`, PEM), with
//! rustls on the aws-lc-rs provider the Graph client already uses.
//!
//! Handshakes run in tasks of their own (at most [`MAX_HANDSHAKES`] at once, each within
//! [`HANDSHAKE_TIMEOUT`]), so a client that connects and says nothing holds up no one;
//! axum is handed only connections whose handshake completed. A plain-HTTP request to the
//! port fails its handshake and is closed.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsPem;

/// Handshakes under way at once, at most.
pub const MAX_HANDSHAKES: usize = 64;
/// Time a client has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key could not be used. Messages name the setting and the file,
/// never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read, or holds no certificate or key in PEM ([`TlsPem::read`]'s
    /// messages, one per file).
    #[error("{}", .0.join("; "))]
    Files(Vec<String>),
    #[error("server.tls_key_path: the key in {} cannot serve the certificate in {}: {reason}", key.display(), cert.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A server TLS configuration, read from PEM files.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig(..)")
    }
}

impl TlsConfig {
    /// The certificate chain (leaf first) in `cert` and its private key (PKCS#8, PKCS#1 or
    /// SEC1) in `key`; TLS 1.3 and 1.2, HTTP/1.1.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&TlsPem::read(cert, key).map_err(TlsError::Files)?)
    }

    /// [`from_pem_files`](Self::from_pem_files) from files already read (as the settings'
    /// validation read them).
    pub fn from_pem(pem: &TlsPem) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let unusable = |reason: String| TlsError::Unusable {
            cert: pem.cert_path.clone(),
            key: pem.key_path.clone(),
            reason,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(pem.chain.clone(), pem.key.clone_key())
            .map_err(|e| unusable(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(Arc::new(config)))
    }
}

/// Aborts the accept loop when the listener goes (axum drops it at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener whose connections are TLS, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: &TlsConfig) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config.0.clone());
        let accepting = AbortOnDrop(tokio::spawn(accept_loop(tcp, acceptor, tx)));
        Ok(TlsListener {
            ready,
            local,
            _accepting: accepting,
        })
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "REST listener: accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "REST listener: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "REST listener: TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop never ends by itself; should it, accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_file_not_the_contents() {
        let dir = std::env::temp_dir().join(format!("graph-cdc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA\n",
        )
        .unwrap();
        let missing = dir.join("missing.pem");
        let e = TlsConfig::from_pem_files(&missing, &junk)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("server.tls_cert_path: cannot read "), "{e}");
        let e = TlsConfig::from_pem_files(&junk, &junk)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server.tls_cert_path: ") && e.contains("holds no certificate"),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

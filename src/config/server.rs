//! `[server]`: a listen address that parses, a token before the REST API is reachable from
//! other hosts, and TLS files that are there. The token and TLS files are read and parsed
//! once, here ([`ServerFiles`]); the REST listener starts from what was read.
//!
//! # Safe by default
//!
//! The REST API can stop the connector, rewrite or delete its offsets and resync everything.
//! So a `listen` address other hosts can reach (`0.0.0.0`, `::`, a host's own address, a
//! host name other than `localhost`) needs `auth_token` or `auth_token_file`, or an explicit
//! `allow_unauthenticated = true`; the built-in default listens on `127.0.0.1:8083`, which
//! needs neither.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ConfigError, Secret, ServerSettings};

/// Where `server.listen` points: an IP address or a host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenHost {
    /// `127.0.0.1`, `0.0.0.0`, `[::1]`…
    Ip(IpAddr),
    /// A host name, resolved when the listener binds.
    Name(String),
}

impl ListenHost {
    /// Only this host can connect: a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            ListenHost::Ip(ip) => ip.to_canonical().is_loopback(),
            ListenHost::Name(n) => {
                let n = n.trim_end_matches('.');
                n.eq_ignore_ascii_case("localhost")
                    || n.to_ascii_lowercase().ends_with(".localhost")
            }
        }
    }
}

/// Parses `host:port` (`127.0.0.1:8083`, `[::]:8083`, `localhost:8083`; port 0: any free port).
pub fn parse_listen(s: &str) -> Result<(ListenHost, u16), String> {
    const EXAMPLE: &str = "write host:port, e.g. \"127.0.0.1:8083\" or \"[::1]:8083\"";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("must not be empty ({EXAMPLE})"));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((ListenHost::Ip(a.ip()), a.port()));
    }
    if s.contains("://") || s.contains('/') {
        return Err(format!(
            "'{s}' is not an address: no scheme or path ({EXAMPLE})"
        ));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{s}': no closing ']' ({EXAMPLE})"))?;
        let ip: std::net::Ipv6Addr = h
            .parse()
            .map_err(|_| format!("'{h}' is not an IPv6 address"))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| format!("'{s}': missing port ({EXAMPLE})"))?;
        (ListenHost::Ip(IpAddr::V6(ip)), p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}': missing port ({EXAMPLE})"))?;
        if h.contains(':') {
            return Err(format!(
                "'{s}': an IPv6 address goes in brackets, e.g. \"[::]:8083\""
            ));
        }
        let host = if let Ok(ip) = h.parse::<IpAddr>() {
            ListenHost::Ip(ip)
        } else if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("'{h}' is not an IP address"));
        } else if is_host_name(h) {
            ListenHost::Name(h.to_string())
        } else {
            return Err(format!(
                "'{h}' is neither an IP address nor a host name ({EXAMPLE})"
            ));
        };
        (host, p)
    };
    if port.is_empty() {
        return Err(format!("'{s}': missing port ({EXAMPLE})"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}': port '{port}' is not a number"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{s}': port {port} is out of range (0 to 65535)"))?;
    Ok((host, port))
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`.
fn is_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What `[server]` names on disk, read once: by validation when the settings are loaded
/// ([`ServerSettings::files`] hands it to the start), so the start reads no file again.
#[derive(Debug, Default)]
pub struct ServerFiles {
    /// The REST API's bearer token: `auth_token`, or the contents of `auth_token_file`
    /// (trimmed); `None` without either.
    pub token: Option<Secret>,
    /// The certificate chain and key, when `tls_cert_path` and `tls_key_path` are set.
    pub tls: Option<TlsPem>,
}

/// The REST listener's certificate chain (leaf first) and private key (PKCS#8, PKCS#1 or
/// SEC1), parsed from `tls_cert_path` and `tls_key_path`.
pub struct TlsPem {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsPem {
    /// Reads and parses both files. Each problem names its setting and file, never what the
    /// file holds (a PEM parser's error may quote a line of it, of a private key too).
    pub fn read(cert: &Path, key: &Path) -> Result<Self, Vec<String>> {
        let read = |p: &Path, setting: &str| {
            std::fs::read(p)
                .map_err(|e| format!("server.{setting}: cannot read {}: {e}", p.display()))
        };
        let chain = read(cert, "tls_cert_path").and_then(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    format!(
                        "server.tls_cert_path: {} holds no certificate in PEM",
                        cert.display()
                    )
                })
        });
        let private = read(key, "tls_key_path").and_then(|pem| {
            PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
                format!(
                    "server.tls_key_path: {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1, unencrypted)",
                    key.display()
                )
            })
        });
        match (chain, private) {
            (Ok(chain), Ok(private)) => Ok(TlsPem {
                cert_path: cert.to_path_buf(),
                key_path: key.to_path_buf(),
                chain,
                key: private,
            }),
            (chain, private) => Err([chain.err(), private.err()].into_iter().flatten().collect()),
        }
    }
}

impl ServerSettings {
    /// The token and the TLS material: as validation read them when these settings were
    /// loaded ([`super::Settings::load`]), else (settings built in code) read now.
    pub fn files(&self) -> Result<Arc<ServerFiles>, ConfigError> {
        if let Some(f) = &self.files {
            return Ok(f.clone());
        }
        let mut errs = Vec::new();
        let files = read_files(&mut errs, self);
        if errs.is_empty() {
            Ok(Arc::new(files))
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// `[server]`: the address, the token rule, the token and TLS files (read here, once);
/// answers what the files hold.
pub(super) fn check(errs: &mut Vec<String>, s: &ServerSettings) -> ServerFiles {
    match parse_listen(&s.listen) {
        Err(e) => errs.push(format!("server.listen: {e}")),
        // A token set but unusable is reported by `read_files`, not again as missing.
        Ok((host, _))
            if s.auth_token.is_none()
                && s.auth_token_file.is_none()
                && !host.is_loopback()
                && !s.allow_unauthenticated =>
        {
            errs.push(format!(
                "server.auth_token: required because server.listen = \"{}\" accepts connections from other hosts, and without a token anyone who reaches it can stop the connector, rewrite its offsets or resync everything. Set server.auth_token_file (or server.auth_token, e.g. GRAPH_CDC__SERVER__AUTH_TOKEN), or listen on this host only (server.listen = \"127.0.0.1:8083\"), or set server.allow_unauthenticated = true to run the REST API without a token on purpose",
                s.listen
            ))
        }
        Ok(_) => {}
    }
    if let Some(u) = &s.advertised_url {
        if let Err(e) = check_advertised(u) {
            errs.push(format!("server.advertised_url: {e}"));
        }
    }
    read_files(errs, s)
}

/// An absolute `http` or `https` URL with a host, and no path beyond `/`.
fn check_advertised(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("'{u}' is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{u}': the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{u}' names no host"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "'{u}': only scheme, host and port (the API's paths are added to it)"
        ));
    }
    Ok(())
}

/// The token (`auth_token` or `auth_token_file`, one of them, not empty) and the TLS files
/// (both or neither, PEM). Errors name the key, never the token.
fn read_files(errs: &mut Vec<String>, s: &ServerSettings) -> ServerFiles {
    let token = match (&s.auth_token, &s.auth_token_file) {
        (Some(_), Some(_)) => {
            Err("server.auth_token: set one of server.auth_token and server.auth_token_file".into())
        }
        (Some(t), None) if t.expose().trim().is_empty() => {
            Err("server.auth_token: must not be empty (set a token, or remove the key)".into())
        }
        (Some(t), None) => Ok(Some(Secret::new(t.expose().trim()))),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Err(e) => Err(format!(
                "server.auth_token_file: cannot read {}: {e}",
                f.display()
            )),
            Ok(t) if t.trim().is_empty() => {
                Err(format!("server.auth_token_file: {} is empty", f.display()))
            }
            Ok(t) => Ok(Some(Secret::new(t.trim()))),
        },
        (None, None) => Ok(None),
    };
    let tls = match (&s.tls_cert_path, &s.tls_key_path) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(vec![
            "server.tls_key_path: required with server.tls_cert_path".to_string(),
        ]),
        (None, Some(_)) => Err(vec![
            "server.tls_cert_path: required with server.tls_key_path".to_string(),
        ]),
        (Some(c), Some(k)) => TlsPem::read(c, k).map(Some),
    };
    ServerFiles {
        token: token.unwrap_or_else(|e| {
            errs.push(e);
            None
        }),
        tls: tls.unwrap_or_else(|e| {
            errs.extend(e);
            None
        }),
    }
}

#[cfg(test)]
mod advertised_tests {
    use super::check_advertised;

    #[test]
    fn an_advertised_url_is_scheme_host_and_port() {
        assert!(check_advertised("http://10.0.3.7:8083").is_ok());
        assert!(check_advertised("https://graph-cdc-0.graph-cdc:8083/").is_ok());
        assert!(check_advertised("10.0.3.7:8083").is_err());
        assert!(check_advertised("ftp://h:1").is_err());
        assert!(check_advertised("http://h:1/api").is_err());
    }
}

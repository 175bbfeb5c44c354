//! `[server]`: a listen address that parses, a token before the REST API is reachable from
//! other hosts, and TLS files that are there.
//!
//! # Safe by default
//!
//! The REST API can stop the connector, rewrite or delete its offsets and resync everything.
//! So a `listen` address other hosts can reach (`0.0.0.0`, `::`, a host's own address, a
//! host name other than `localhost`) needs `auth_token` or `auth_token_file`, or an explicit
//! `allow_unauthenticated = true`; the built-in default listens on `127.0.0.1:8083`, which
//! needs neither.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Secret, ServerSettings};

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

impl ServerSettings {
    /// The REST API's bearer token: `auth_token`, or the contents of `auth_token_file`
    /// (trimmed); `None` without either. Errors name the key, never the token.
    pub fn token(&self) -> Result<Option<Secret>, String> {
        match (&self.auth_token, &self.auth_token_file) {
            (Some(_), Some(_)) => Err(
                "server.auth_token: set one of server.auth_token and server.auth_token_file".into(),
            ),
            (Some(t), None) if t.expose().trim().is_empty() => {
                Err("server.auth_token: must not be empty (set a token, or remove the key)".into())
            }
            (Some(t), None) => Ok(Some(Secret::new(t.expose().trim()))),
            (None, Some(f)) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    format!("server.auth_token_file: cannot read {}: {e}", f.display())
                })?;
                let s = s.trim();
                if s.is_empty() {
                    return Err(format!("server.auth_token_file: {} is empty", f.display()));
                }
                Ok(Some(Secret::new(s)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// `[server]`: the address, the token rule, the TLS files.
pub(super) fn check(errs: &mut Vec<String>, s: &ServerSettings) {
    let host = match parse_listen(&s.listen) {
        Ok((host, _)) => Some(host),
        Err(e) => {
            errs.push(format!("server.listen: {e}"));
            None
        }
    };
    let token = s.token().unwrap_or_else(|e| {
        errs.push(e);
        // Set but unusable: reported above, not again as missing.
        Some(Secret::new(""))
    });
    if let Some(h) = host {
        if token.is_none() && !h.is_loopback() && !s.allow_unauthenticated {
            errs.push(format!(
                "server.auth_token: required because server.listen = \"{}\" accepts connections from other hosts, and without a token anyone who reaches it can stop the connector, rewrite its offsets or resync everything. Set server.auth_token_file (or server.auth_token, e.g. GRAPH_CDC__SERVER__AUTH_TOKEN), or listen on this host only (server.listen = \"127.0.0.1:8083\"), or set server.allow_unauthenticated = true to run the REST API without a token on purpose",
                s.listen
            ));
        }
    }
    tls(errs, s);
}

/// `tls_cert_path` and `tls_key_path`: both or neither, readable, PEM.
fn tls(errs: &mut Vec<String>, s: &ServerSettings) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (cert, key) = match (&s.tls_cert_path, &s.tls_key_path) {
        (None, None) => return,
        (Some(_), None) => {
            return errs.push("server.tls_key_path: required with server.tls_cert_path".into())
        }
        (None, Some(_)) => {
            return errs.push("server.tls_cert_path: required with server.tls_key_path".into())
        }
        (Some(c), Some(k)) => (c, k),
    };
    let read = |p: &Path, key: &str| {
        std::fs::read(p).map_err(|e| format!("server.{key}: cannot read {}: {e}", p.display()))
    };
    match read(cert, "tls_cert_path") {
        Err(e) => errs.push(e),
        Ok(pem) => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            match certs {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => errs.push(format!(
                    "server.tls_cert_path: {} holds no PEM certificate",
                    cert.display()
                )),
                Err(e) => errs.push(format!(
                    "server.tls_cert_path: {} is not a PEM certificate chain ({e})",
                    cert.display()
                )),
            }
        }
    }
    match read(key, "tls_key_path") {
        Err(e) => errs.push(e),
        // The parser's error may quote the file: not shown, it is a private key.
        Ok(pem) => {
            if PrivateKeyDer::from_pem_slice(&pem).is_err() {
                errs.push(format!(
                    "server.tls_key_path: {} is not a PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted)",
                    key.display()
                ));
            }
        }
    }
}

//! Certificates for the test broker's TLS listeners, made with the `openssl` CLI.
//!
//! One CA signs the broker's certificate (SAN `IP:127.0.0.1,DNS:localhost`, so clients keep
//! hostname verification on) and a client certificate for mTLS; a second, unrelated CA is
//! there for "untrusted CA" tests. Keys are EC P-256 (RSA keys take a second or more each to
//! make) in PKCS#8 PEM (`openssl genpkey` writes nothing else), which Kafka's PEM key store
//! needs. An explicit config file keeps the extensions independent of the machine's
//! `openssl.cnf`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::broker::BrokerError;

/// The subject CN of the mTLS client certificate; the broker maps it to `User:<CN>`.
pub const CLIENT_CN: &str = "graph-cdc-client";

/// The files [`generate`] wrote (all PEM).
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA that signed the broker's and the client's certificates.
    pub ca: PathBuf,
    /// The broker's key followed by its certificate and the CA (Kafka's PEM key store).
    pub broker_keystore: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the broker uses.
    pub untrusted_ca: PathBuf,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// Writes a fresh CA, broker and client certificates and an unrelated CA into `dir`.
pub fn generate(dir: &Path) -> Result<Certs, BrokerError> {
    fs::create_dir_all(dir)?;
    let cnf = dir.join("openssl.cnf");
    fs::write(&cnf, OPENSSL_CNF)?;
    let p = |name: &str| dir.join(name);

    self_signed_ca(&cnf, &p("ca.key"), &p("ca.pem"), "graph-cdc-test-ca")?;
    self_signed_ca(
        &cnf,
        &p("untrusted-ca.key"),
        &p("untrusted-ca.pem"),
        "graph-cdc-untrusted-ca",
    )?;
    signed(&cnf, &p("ca"), &p("broker"), "localhost", "server")?;
    signed(&cnf, &p("ca"), &p("client"), CLIENT_CN, "client")?;

    // Kafka's PEM key store: the PKCS#8 key, then the chain.
    let keystore = p("broker-keystore.pem");
    fs::write(
        &keystore,
        [
            fs::read_to_string(p("broker.key"))?,
            fs::read_to_string(p("broker.pem"))?,
            fs::read_to_string(p("ca.pem"))?,
        ]
        .concat(),
    )?;
    Ok(Certs {
        ca: p("ca.pem"),
        broker_keystore: keystore,
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        untrusted_ca: p("untrusted-ca.pem"),
    })
}

fn new_key(key: &Path) -> Result<(), BrokerError> {
    openssl(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .arg("-out")
            .arg(key),
    )
}

fn self_signed_ca(cnf: &Path, key: &Path, cert: &Path, cn: &str) -> Result<(), BrokerError> {
    new_key(key)?;
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-sha256", "-days", "3650"])
            .arg("-config")
            .arg(cnf)
            .args(["-extensions", "ca", "-subj", &format!("/CN={cn}")])
            .arg("-key")
            .arg(key)
            .arg("-out")
            .arg(cert),
    )
}

/// `<stem>.key` and `<stem>.pem`, signed by `<ca>.key`/`<ca>.pem` with the `section` extensions.
fn signed(cnf: &Path, ca: &Path, stem: &Path, cn: &str, section: &str) -> Result<(), BrokerError> {
    let (key, csr, cert) = (
        stem.with_extension("key"),
        stem.with_extension("csr"),
        stem.with_extension("pem"),
    );
    new_key(&key)?;
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-sha256"])
            .arg("-config")
            .arg(cnf)
            .args(["-subj", &format!("/CN={cn}")])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    )?;
    // A random serial: two certificates with the same issuer and serial confuse verifiers.
    let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
    openssl(
        Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-sha256",
                "-days",
                "3650",
                "-set_serial",
                &serial,
            ])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(ca.with_extension("pem"))
            .arg("-CAkey")
            .arg(ca.with_extension("key"))
            .arg("-extfile")
            .arg(cnf)
            .args(["-extensions", section])
            .arg("-out")
            .arg(&cert),
    )?;
    let _ = fs::remove_file(csr);
    Ok(())
}

fn openssl(cmd: &mut Command) -> Result<(), BrokerError> {
    let out = cmd.output().map_err(|e| {
        BrokerError::Certs(format!(
            "running openssl: {e} (install it: apt-get install openssl)"
        ))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BrokerError::Certs(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

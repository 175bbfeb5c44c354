//! A fixed client certificate for the Graph certificate credential (`fixtures/`): an RSA
//! key, its self-signed certificate and public key, shared by the product's and the
//! simulator's tests.

/// The client's private key (PKCS#8 PEM).
pub const CLIENT_KEY_PEM: &str = include_str!("../fixtures/test-client.key");
/// The client's self-signed certificate (PEM).
pub const CLIENT_CERT_PEM: &str = include_str!("../fixtures/test-client.crt");
/// The certificate's public key (PEM), as the simulator checks assertions with it.
pub const CLIENT_PUBLIC_KEY_PEM: &str = include_str!("../fixtures/test-client.pub.pem");

//! HTTPS: rustls with the certificate chain and private key of `--tls-cert`/`--tls-key`
//! (PEM), on ring's cryptography (already in the build for object storage; no second
//! provider, no process-wide default installed).

use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;

use crate::server::TlsFiles;

pub fn load(files: &TlsFiles) -> Result<RustlsConfig, String> {
    let cert_pem = std::fs::read(&files.cert).map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let key_pem = std::fs::read(&files.key).map_err(|e| format!("cannot read {}: {e}", files.key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?
        .ok_or_else(|| format!("{} holds no private key", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {} do not make a TLS identity: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

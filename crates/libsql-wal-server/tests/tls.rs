//! `--tls-cert`/`--tls-key`: the server speaks HTTPS, and a client that trusts the
//! certificate runs a pipeline through it; plain HTTP on that port gets nowhere.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;

use libsql_wal_server::TlsFiles;
use support::start;

#[test]
fn https_with_the_given_certificate() {
    let scratch = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = scratch.path().join("cert.pem");
    let key_path = scratch.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let files = TlsFiles { cert: cert_path, key: key_path };
    let server = start(move |c| c.tls = Some(files));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(server.addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = br#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"select 40 + 2"}},{"type":"close"}]}"#;
    let head = format!(
        "POST /v2/pipeline HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(body).unwrap();
    let mut reply = Vec::new();
    // The server may end TLS without close_notify after Connection: close; what came is enough.
    let _ = tls.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""value":"42""#), "{reply}");

    // Plain HTTP to the TLS port is not served.
    let mut plain = std::net::TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP was served on the TLS port");
}

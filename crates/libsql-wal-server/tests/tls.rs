//! `--tls-cert`/`--tls-key`: the server speaks HTTPS, and a client that trusts the
//! certificate runs a pipeline through it; plain HTTP on that port gets nowhere; and
//! `--idle-connection-timeout` closes quiet TLS connections as it does plain ones.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libsql_wal_server::{ServerConfig, TlsFiles};
use support::{Running, start};

/// A server with a fresh self-signed certificate for `localhost`, and a client
/// configuration that trusts it.
fn start_tls(configure: impl FnOnce(&mut ServerConfig)) -> (Running, Arc<rustls::ClientConfig>) {
    let scratch = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = scratch.path().join("cert.pem");
    let key_path = scratch.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let files = TlsFiles { cert: cert_path, key: key_path };
    // The files are read at bind, inside `start`.
    let server = start(move |c| {
        c.tls = Some(files);
        configure(c);
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(config))
}

fn client(config: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(config.clone(), name).unwrap()
}

#[test]
fn https_with_the_given_certificate() {
    let (server, config) = start_tls(|_| {});
    let conn = client(&config);
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

/// How long the server took to end `read`'s connection (EOF, reset, or a TLS error on
/// it), reading for at most `within`; `None` if it stayed open.
fn closed_within(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>, within: Duration) -> Option<Duration> {
    let began = Instant::now();
    let mut buf = [0u8; 4096];
    while began.elapsed() < within {
        match read(&mut buf) {
            Ok(0) => return Some(began.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(began.elapsed()),
        }
    }
    None
}

/// `--idle-connection-timeout` under TLS: a client that connects and never starts the
/// handshake, one that sends its hello and stops, and one that goes quiet after a request
/// on a kept-alive connection are each closed after the idle timeout, well before the TLS
/// acceptor's own 10 s handshake bound.
#[test]
fn quiet_tls_connections_are_closed() {
    let (server, config) = start_tls(|c| c.limits.idle_connection_timeout = Duration::from_millis(300));
    let bound = Duration::from_secs(5);

    let silent = std::net::TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let took = closed_within(|buf| (&silent).read(buf), Duration::from_secs(15));
    assert!(took.is_some_and(|t| t < bound), "a connection with no handshake: closed after {took:?}");

    // The client's hello, then nothing: the server answers it and waits for the client's
    // next flight, which never comes.
    let mut hello_only = client(&config);
    let stalled = std::net::TcpStream::connect(server.addr).unwrap();
    stalled.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while hello_only.wants_write() {
        hello_only.write_tls(&mut &stalled).unwrap();
    }
    let took = closed_within(|buf| (&stalled).read(buf), Duration::from_secs(15));
    assert!(took.is_some_and(|t| t < bound), "a handshake left half done: closed after {took:?}");

    // A request answered on a kept-alive connection, then quiet.
    let tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut tls = rustls::StreamOwned::new(client(&config), tcp);
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let began = Instant::now();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(began.elapsed() < Duration::from_secs(10), "no answer: {}", String::from_utf8_lossy(&answer));
        match tls.read(&mut buf) {
            Ok(0) => panic!("closed before the answer: {}", String::from_utf8_lossy(&answer)),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-length: 0"), "{answer}");
    let took = closed_within(|buf| tls.read(buf), Duration::from_secs(15));
    assert!(took.is_some_and(|t| t < bound), "a quiet kept-alive TLS connection: closed after {took:?}");
}

//! Auth: a request without a valid credential gets 401, a namespace the token does not grant
//! 403, a read-only token reads but cannot write; tokens never appear in what is sent back.

mod support;

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libsql_wal_server::auth::Auth;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use support::{close, error_code, execute, rows, start};

struct Keys {
    encoding: EncodingKey,
    public_b64: String,
}

fn new_keys() -> Keys {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    Keys { encoding: EncodingKey::from_ed_der(pkcs8.as_ref()), public_b64 }
}

fn token(keys: &Keys, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &keys.encoding).unwrap()
}

fn key_file(dir: &std::path::Path, text: &str) -> Auth {
    let path = dir.join("key");
    std::fs::write(&path, text).unwrap();
    Auth::jwt_key_file(&path).unwrap()
}

#[test]
fn jwts_are_checked_and_their_claims_honoured() {
    let keys = new_keys();
    let other = new_keys();
    let scratch = tempfile::tempdir().unwrap();
    let auth = Arc::new(key_file(scratch.path(), &keys.public_b64));
    let server = start(move |c| c.auth = auth);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let rw = token(&keys, json!({ "a": "rw" }));
    let ro = token(&keys, json!({ "a": "ro" }));
    let expired = token(&keys, json!({ "a": "rw", "exp": now - 60 }));
    let only_b = token(&keys, json!({ "a": "rw", "id": "b" }));
    let p_claim = token(&keys, json!({ "p": { "ro": { "ns": ["default"] }, "rw": { "ns": ["c"] } } }));
    let forged = token(&other, json!({ "a": "rw" }));
    let call = |token: Option<&str>, ns: &str, sql: Value| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("x-namespace", ns)];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        server.pipeline_at("/v2/pipeline", &headers, None, sql)
    };
    let (status, r) =
        call(Some(&rw), "default", json!([execute("create table t(x)"), execute("insert into t values (1)"), close()]));
    assert_eq!(status, 200, "{r}");
    for (what, t) in [("no token", None), ("expired", Some(&expired)), ("signed by another key", Some(&forged))] {
        let (status, body) = call(t.map(String::as_str), "default", json!([execute("select 1"), close()]));
        assert_eq!(status, 401, "{what}: {body}");
        if let Some(t) = t {
            assert!(!body.to_string().contains(t.as_str()), "{what}: the token is echoed back");
        }
    }
    let (status, _) = call(Some("garbage"), "default", json!([execute("select 1"), close()]));
    assert_eq!(status, 401);
    // Read-only: reads work, writes are refused by SQLite, and the next stream writes again.
    let (status, r) = call(
        Some(&ro),
        "default",
        json!([execute("select count(*) from t"), execute("insert into t values (2)"), close()]),
    );
    assert_eq!(status, 200);
    assert_eq!(rows(&r, 0), vec![vec![json!("1")]]);
    assert_eq!(error_code(&r, 1), "SQLITE_READONLY");
    // ... and cannot be undone: before, `PRAGMA query_only=0` let read-only credentials write.
    let undo = ["pragma query_only=0", "PRAGMA main.query_only = false", "pragma query_only(0)"];
    for sql in undo {
        let (_, r) = call(Some(&ro), "default", json!([execute(sql), execute("insert into t values (666)"), close()]));
        assert_eq!(error_code(&r, 0), "SQLITE_AUTH", "{sql}: {r}");
        assert_eq!(error_code(&r, 1), "SQLITE_READONLY", "{sql}: {r}");
    }
    let (_, r) = call(Some(&ro), "default", json!([execute("select count(*) from t where x = 666"), close()]));
    assert_eq!(rows(&r, 0), vec![vec![json!("0")]]);
    let (_, r) = call(Some(&rw), "default", json!([execute("insert into t values (3)"), close()]));
    assert_eq!(r["results"][0]["type"], "ok", "{r}");
    // `id` limits a token to one namespace; `p` grants per namespace.
    let (status, _) = call(Some(&only_b), "default", json!([execute("select 1"), close()]));
    assert_eq!(status, 403);
    let (status, _) = call(Some(&only_b), "b", json!([execute("select 1"), close()]));
    assert_eq!(status, 200);
    let (_, r) = call(Some(&p_claim), "default", json!([execute("insert into t values (4)"), close()]));
    assert_eq!(error_code(&r, 0), "SQLITE_READONLY");
    let (_, r) = call(Some(&p_claim), "c", json!([execute("create table u(x)"), close()]));
    assert_eq!(r["results"][0]["type"], "ok", "{r}");
    let (status, _) = call(Some(&p_claim), "d", json!([execute("select 1"), close()]));
    assert_eq!(status, 403);
}

#[test]
fn a_baton_cannot_be_taken_over_with_weaker_credentials() {
    let keys = new_keys();
    let scratch = tempfile::tempdir().unwrap();
    let auth = Arc::new(key_file(scratch.path(), &keys.public_b64));
    let server = start(move |c| c.auth = auth);
    let rw = format!("Bearer {}", token(&keys, json!({ "a": "rw" })));
    let ro = format!("Bearer {}", token(&keys, json!({ "a": "ro" })));
    let (_, r) = server.pipeline_at("/v2/pipeline", &[("authorization", &rw)], None, json!([execute("begin")]));
    let baton = r["baton"].as_str().unwrap().to_string();
    let (status, _) =
        server.pipeline_at("/v2/pipeline", &[("authorization", &ro)], Some(&baton), json!([execute("select 1")]));
    assert_eq!(status, 403);
    let (status, _) = server.pipeline_at("/v2/pipeline", &[], Some(&baton), json!([execute("select 1")]));
    assert_eq!(status, 401);
}

#[test]
fn a_shared_token() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("token");
    std::fs::write(&path, "s3cret-token\n").unwrap();
    let auth = Arc::new(Auth::shared_token_file(&path).unwrap());
    let server = start(move |c| c.auth = auth);
    let (status, _) =
        server.pipeline_at("/v2/pipeline", &[("authorization", "Bearer s3cret-tokem")], None, json!([close()]));
    assert_eq!(status, 401);
    let (status, _) =
        server.pipeline_at("/v2/pipeline", &[("authorization", "Bearer s3cret-token")], None, json!([close()]));
    assert_eq!(status, 200);
    // Health stays open (load balancers probe it without credentials).
    assert_eq!(server.request("GET", "/health", &[], b"").0, 200);
}

#[test]
fn key_files_in_either_of_libsql_servers_forms() {
    let scratch = tempfile::tempdir().unwrap();
    let keys = new_keys();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&keys.public_b64).unwrap();
    // SubjectPublicKeyInfo of an Ed25519 key: a fixed 12-byte prefix, then the 32 bytes.
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(&raw);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let auth = key_file(scratch.path(), &pem);
    let good = token(&keys, json!({ "a": "rw" }));
    assert!(auth.check(Some(format!("Bearer {good}").as_bytes()), "default").is_ok());
    for bad in ["", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "AAAA"] {
        let path = scratch.path().join("bad");
        std::fs::write(&path, bad).unwrap();
        assert!(Auth::jwt_key_file(&path).is_err(), "{bad:?} was taken for a key");
    }
}

/// With JWTs, `--max-batons-per-client` counts by token, not by address: two tokens from
/// one address each have their own quota, and one token however its header is spelled
/// has one.
#[test]
fn with_jwts_the_stream_quota_is_per_token() {
    let keys = new_keys();
    let scratch = tempfile::tempdir().unwrap();
    let auth = Arc::new(key_file(scratch.path(), &keys.public_b64));
    let server = start(move |c| {
        c.auth = auth;
        c.limits.batons_per_client_max = 1;
    });
    let first = token(&keys, json!({ "a": "rw", "sub": "first" }));
    let second = token(&keys, json!({ "a": "rw", "sub": "second" }));
    let open = |authorization: &str| {
        server.pipeline_at("/v2/pipeline", &[("authorization", authorization)], None, json!([execute("select 1")]))
    };
    let (status, r) = open(&format!("Bearer {first}"));
    assert_eq!(status, 200, "{r}");
    let (status, r) = open(&format!("bearer  {first} "));
    assert_eq!(status, 429, "{r}");
    assert_eq!(r["code"], "CLIENT_STREAMS_EXHAUSTED", "{r}");
    let (status, r) = open(&format!("Bearer {second}"));
    assert_eq!(status, 200, "{r}");
}

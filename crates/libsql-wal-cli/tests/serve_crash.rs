//! kill -9 of `libsql-wal serve`: every acknowledged write is there after a restart (FULL
//! commits), and with `--ack durable` storage alone holds every acknowledged write.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libsql_wal_testkit::http::http;

/// Starts `serve` on a port of its own choosing (`--listen 127.0.0.1:0`) and returns it with
/// the port its "serving … on http://ADDR" line names. A port picked by the test and
/// released before `serve` binds it could be taken meanwhile by another test's server, which
/// then answered this test's requests until it was killed (a flake in CI).
fn serve(dir: &Path, extra: &[&str]) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_libsql-wal"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" on http://") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve did not say where it listens within 20 s");
    };
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(addr, "GET", "/health", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "serve did not answer /health within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr.port())
}

fn pipeline(port: u16, sql: &str) -> serde_json::Value {
    let body = serde_json::json!({ "baton": null, "requests": [
        { "type": "execute", "stmt": { "sql": sql } }, { "type": "close" }] });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, reply) = http(addr, "POST", "/v2/pipeline", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["results"][0]["type"], "ok", "{reply}");
    reply
}

fn kill9(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

/// `n` acknowledged inserts, one commit each, then SIGKILL.
fn write_then_kill(child: Child, port: u16, n: u64) {
    pipeline(port, "create table t(id integer primary key, v)");
    for i in 1..=n {
        pipeline(port, &format!("insert into t values ({i}, randomblob(300))"));
    }
    kill9(child);
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = serve(dir.path(), &[]);
    write_then_kill(child, port, 300);
    let (child, port) = serve(dir.path(), &[]);
    let reply = pipeline(port, "select count(*), max(id) from t");
    let row = &reply["results"][0]["response"]["result"]["rows"][0];
    assert_eq!((row[0]["value"].as_str(), row[1]["value"].as_str()), (Some("300"), Some("300")));
    kill9(child);
}

#[test]
fn with_ack_durable_storage_alone_holds_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());
    let dbs = dir.path().join("dbs");
    let (child, port) = serve(&dbs, &["--storage", &url, "--ack", "durable"]);
    write_then_kill(child, port, 100);
    // The local files are gone (a lost machine): restore from storage alone.
    std::fs::remove_dir_all(&dbs).unwrap();
    let out = dir.path().join("restored.db");
    let status = Command::new(env!("CARGO_BIN_EXE_libsql-wal"))
        .args(["restore", "--storage", &url, "--namespace", "default"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let conn = libsql_wal::open_sqlite_connection(&out).unwrap();
    let (count, max): (i64, i64) =
        conn.query_row("select count(*), max(id) from t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((count, max), (100, 100));
}

//! kill -9 of `libsql-wal serve`: every acknowledged write is there after a restart (FULL
//! commits), and with `--ack durable` storage alone holds every acknowledged write.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libsql_wal_testkit::http::http;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_libsql-wal"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() && http(addr, "GET", "/health", &[], b"").0 == 200 {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not answer /health within 20 s");
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
    let port = free_port();
    write_then_kill(serve(dir.path(), port, &[]), port, 300);
    let port = free_port();
    let child = serve(dir.path(), port, &[]);
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
    let port = free_port();
    write_then_kill(serve(&dbs, port, &["--storage", &url, "--ack", "durable"]), port, 100);
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

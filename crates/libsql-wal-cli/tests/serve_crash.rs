//! kill -9 of `libsql-wal serve`: every acknowledged write is there after a restart (FULL
//! commits), and with `--ack durable` storage alone holds every acknowledged write.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use libsql_wal_testkit::http::http;
use libsql_wal_testkit::serve_process::ServeProcess;

/// `serve` on a port of its own choosing (see `ServeProcess`: a port picked by the test and
/// released before `serve` bound it was once taken by another test's server).
fn serve(dir: &Path, extra: &[&str]) -> ServeProcess {
    ServeProcess::start(env!("CARGO_BIN_EXE_libsql-wal"), dir, extra)
}

fn pipeline(addr: SocketAddr, sql: &str) -> serde_json::Value {
    let body = serde_json::json!({ "baton": null, "requests": [
        { "type": "execute", "stmt": { "sql": sql } }, { "type": "close" }] });
    let (status, reply) = http(addr, "POST", "/v2/pipeline", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["results"][0]["type"], "ok", "{reply}");
    reply
}

/// `n` acknowledged inserts, one commit each, then SIGKILL.
fn write_then_kill(server: ServeProcess, n: u64) {
    pipeline(server.addr, "create table t(id integer primary key, v)");
    for i in 1..=n {
        pipeline(server.addr, &format!("insert into t values ({i}, randomblob(300))"));
    }
    server.kill9();
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    write_then_kill(serve(dir.path(), &[]), 300);
    let server = serve(dir.path(), &[]);
    let reply = pipeline(server.addr, "select count(*), max(id) from t");
    let row = &reply["results"][0]["response"]["result"]["rows"][0];
    assert_eq!((row[0]["value"].as_str(), row[1]["value"].as_str()), (Some("300"), Some("300")));
    server.kill9();
}

#[test]
fn with_ack_durable_storage_alone_holds_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());
    let dbs = dir.path().join("dbs");
    write_then_kill(serve(&dbs, &["--storage", &url, "--ack", "durable"]), 100);
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

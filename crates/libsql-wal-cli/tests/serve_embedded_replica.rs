//! libSQL's embedded replica (npm `@libsql/client` 0.18.0 with `syncUrl`, unchanged) follows
//! `libsql-wal serve` over GET /info, /export/{generation}, /sync/{generation}/{start}/{end}
//! (`tests/clients/replica.mjs`): rows written on the primary appear after `sync()`; also
//! after the primary checkpointed (frames kept for replicas, or gone); after the primary
//! restarted; and a primary restored to another history is a new generation whose image
//! replaces the replica's state, never mixed with it. A push (POST /sync/...) is refused.
//!
//! Needs `npm ci` in tests/clients (as serve_clients.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use libsql_wal_testkit::http::http;
use libsql_wal_testkit::serve_process::ServeProcess;
use serde_json::{Value, json};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

struct Server(ServeProcess);

impl Server {
    fn start(db_dir: &Path, extra: &[&str]) -> Server {
        Server(ServeProcess::start(BIN, db_dir, extra))
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn generation(&self) -> u64 {
        let (status, body) = http(self.0.addr, "GET", "/info", &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body).unwrap()["current_generation"].as_u64().unwrap()
    }

    fn stop(self) {
        self.0.stop()
    }
}

/// Runs replica.mjs (npm): the rows of each step.
fn run(url: &str, replica: &Path, steps: Value) -> Vec<Value> {
    run_with("node", "replica.mjs", url, replica, steps)
}

fn run_with(program: &str, script: &str, url: &str, replica: &Path, steps: Value) -> Vec<Value> {
    let out = Command::new(program)
        .arg(script)
        .arg(url)
        .arg(replica)
        .arg(steps.to_string())
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {script} (.ci/test installs the clients): {e}"));
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["steps"].as_array().unwrap().iter().map(|s| s["rows"].clone()).collect()
}

const ROWS_300: &str = "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 300) \
                        INSERT INTO t SELECT 100 + v, hex(randomblob(512)) FROM n";

#[test]
fn embedded_replica_follows_writes_checkpoints_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("dbs");
    let replica = dir.path().join("replica.db");
    let server = Server::start(&db_dir, &[]);

    // Writes, then sync: the same rows; nothing new, sync changes nothing.
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"primary": "CREATE TABLE t(x INTEGER, y TEXT)"},
            {"primary": "INSERT INTO t VALUES (1, 'a'), (2, 'b')"},
            {"sync": "SELECT x, y FROM t ORDER BY x"},
            {"primary": "INSERT INTO t VALUES (3, 'c')"},
            {"sync": "SELECT count(*) FROM t"},
            {"sync": "SELECT count(*) FROM t"},
        ]),
    );
    assert_eq!(rows[2], json!([[1, "a"], [2, "b"]]));
    assert_eq!(rows[4], json!([[3]]));
    assert_eq!(rows[5], json!([[3]]));
    let first = server.generation();

    // The primary checkpoints and writes more: its log keeps the frames after the
    // generation's image for replicas, so the replica catches up from them, in the same
    // generation (no new image).
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"primary": "INSERT INTO t VALUES (4, 'd')"},
            {"primary": "PRAGMA wal_checkpoint(TRUNCATE)"},
            {"primary": ROWS_300},
            {"primary": "PRAGMA wal_checkpoint(TRUNCATE)"},
            {"sync": "SELECT count(*), sum(x) FROM t"},
        ]),
    );
    let sum = 1 + 2 + 3 + 4 + (101..=400).sum::<i64>();
    assert_eq!(rows[4], json!([[304, sum]]));
    assert_eq!(server.generation(), first, "caught up from the log, not a new image");

    // A restart: sync goes on. With nothing kept for replicas, a checkpoint takes the
    // frames the replica lacks out of the log: it catches up from a new generation's image.
    server.stop();
    let server = Server::start(&db_dir, &["--sync-log-keep-bytes", "0"]);
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"sync": "SELECT count(*) FROM t"},
            {"primary": "DELETE FROM t WHERE x > 200"},
            {"sync": "SELECT count(*) FROM t"},
            {"primary": "INSERT INTO t VALUES (5, 'e')"},
            {"primary": "PRAGMA wal_checkpoint(TRUNCATE)"},
            {"primary": "INSERT INTO t VALUES (6, 'f')"},
            {"primary": "PRAGMA wal_checkpoint(TRUNCATE)"},
            {"sync": "SELECT count(*), max(x) FROM t WHERE x < 100"},
        ]),
    );
    assert_eq!(rows[0], json!([[304]]));
    assert_eq!(rows[2], json!([[104]]));
    assert_eq!(rows[7], json!([[6, 6]]));
    assert!(server.generation() > first, "frames gone from the log: a new image");

    // A push is refused, clearly.
    let (status, body) = http(server.0.addr, "POST", "/sync/1/1/2", &[], b"");
    assert_eq!(status, 405, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("SYNC_PUSH_UNSUPPORTED"));
    server.stop();
}

#[test]
fn a_primary_replaced_by_another_history_is_a_new_generation_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("dbs");
    let replica = dir.path().join("replica.db");
    let server = Server::start(&db_dir, &[]);
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"primary": "CREATE TABLE t(x INTEGER, y TEXT)"},
            {"primary": ROWS_300},
            {"sync": "SELECT count(*) FROM t"},
        ]),
    );
    assert_eq!(rows[2], json!([[300]]));
    let first = server.generation();
    server.stop();

    // Another database takes the namespace's place (its generations record stays): a new
    // history, whose frame numbers run past the replica's own.
    let other = dir.path().join("other");
    let server = Server::start(&other, &[]);
    run(
        &server.url(),
        &dir.path().join("unused.db"),
        json!([
            {"primary": "CREATE TABLE t(x INTEGER, y TEXT)"},
            {"primary": "CREATE TABLE u(z)"},
            {"primary": "INSERT INTO t VALUES (-1, 'other')"},
            {"primary": ROWS_300},
            {"primary": ROWS_300},
            {"primary": "DELETE FROM t WHERE x > 0"},
        ]),
    );
    server.stop();
    std::fs::copy(other.join("default.db"), db_dir.join("default.db")).unwrap();

    let server = Server::start(&db_dir, &[]);
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"sync": "SELECT x, y FROM t ORDER BY x"},
            {"sync": "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name"},
        ]),
    );
    assert_eq!(rows[0], json!([[-1, "other"]]));
    assert_eq!(rows[1], json!([["t"], ["u"]]));
    assert!(server.generation() > first);
    server.stop();
}

/// The same through PyPI `libsql` (`sync_url`), on a namespace of its own (`/dev/<ns>/`).
#[test]
fn the_python_embedded_replica_follows_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("dbs"), &[]);
    let url = format!("{}/dev/py", server.url());
    let replica = dir.path().join("py-replica.db");
    let rows = run_with(
        "python3",
        "replica.py",
        &url,
        &replica,
        json!([
            {"primary": "CREATE TABLE t(x INTEGER, y TEXT)"},
            {"primary": "INSERT INTO t VALUES (1, 'a'), (2, 'b')"},
            {"sync": "SELECT x, y FROM t ORDER BY x"},
            {"primary": ROWS_300},
            {"primary": "DELETE FROM t WHERE x > 150"},
            {"sync": "SELECT count(*), sum(x) FROM t"},
        ]),
    );
    assert_eq!(rows[2], json!([[1, "a"], [2, "b"]]));
    assert_eq!(rows[5], json!([[52, 3 + (101..=150).sum::<i64>()]]));
    server.stop();
}

/// The frame_no a write's response names (`x-libsql-wal-frame-no`).
fn write_at(server: &Server, sql: &str) -> u64 {
    let body =
        json!({ "baton": null, "requests": [{ "type": "execute", "stmt": { "sql": sql } }, { "type": "close" }] });
    let (status, head, reply) = libsql_wal_testkit::http::http_with_head(
        server.0.addr,
        "POST",
        "/v2/pipeline",
        &[],
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    libsql_wal_testkit::http::header_value(&head, "x-libsql-wal-frame-no").unwrap().parse().unwrap()
}

/// `libsql-wal restore` to an earlier point puts the namespace on another branch of its
/// history (the same lineage, other frames after that point); written since, past the
/// frames the replica holds: the replica syncs to the new branch whole, never the old
/// branch's rows with the new one's on top.
#[test]
fn a_primary_restored_to_an_earlier_point_is_never_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("dbs");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());
    let replica = dir.path().join("replica.db");
    let server = Server::start(&db_dir, &["--storage", &url]);
    write_at(&server, "CREATE TABLE t(x INTEGER, y TEXT)");
    let point = write_at(&server, "INSERT INTO t VALUES (1, 'kept')");
    // Pages only the dropped branch writes (the schema's page 1, the new table's root): a
    // replica continued from the other branch would keep them.
    write_at(&server, "CREATE TABLE d(z)");
    write_at(&server, "INSERT INTO d VALUES ('dropped by the restore')");
    let rows = run(&server.url(), &replica, json!([{"sync": "SELECT (SELECT count(*) FROM t), (SELECT z FROM d)"}]));
    assert_eq!(rows[0], json!([[1, "dropped by the restore"]]));
    server.stop(); // flushes every commit to storage

    let restored = dir.path().join("restored.db");
    let out = std::process::Command::new(BIN)
        .args(["restore", "--storage", &url, "--namespace", "default", "--frame-no", &point.to_string()])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&restored, db_dir.join("default.db")).unwrap();
    // Without --storage: a copy restored at an earlier point would fork the stored history.
    let server = Server::start(&db_dir, &[]);
    // Asked first (as a new replica would), the primary makes a generation of the restored
    // state and keeps its log from there: the new branch's frames stay in the log.
    server.generation();
    for i in 0..20 {
        write_at(&server, &format!("INSERT INTO t VALUES ({}, 'new branch')", 100 + i));
    }
    let rows = run(
        &server.url(),
        &replica,
        json!([
            {"sync": "SELECT count(*), min(x), max(x) FROM t"},
            {"sync": "SELECT count(*) FROM sqlite_schema WHERE name = 'd'"},
            {"sync": "PRAGMA integrity_check"},
        ]),
    );
    assert_eq!(rows[0], json!([[21, 1, 119]]), "the new branch's rows");
    assert_eq!(rows[1], json!([[0]]), "nothing of the dropped branch");
    assert_eq!(rows[2], json!([["ok"]]));
    server.stop();
}

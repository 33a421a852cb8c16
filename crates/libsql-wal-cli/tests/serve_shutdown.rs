//! `libsql-wal serve` through the real binary: SIGTERM's ordered shutdown (open transactions
//! rolled back, requests in flight finished, new connections refused, the last commits
//! flushed to storage, plain SQLite files left, exit 0), the warning of a server without auth
//! off loopback, and the limit flags reaching the server.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libsql_wal_testkit::http::http;
use serde_json::{Value, json};

/// A running `serve`, its stderr collected as it comes.
struct Serve {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

/// Starts `serve --db-dir dir <args>` and waits for its "serving … on http://ADDR" line.
fn serve(dir: &Path, args: &[&str]) -> Serve {
    let (child, stderr, line) = spawn(dir, args, " on http");
    let line = line.unwrap_or_else(|| panic!("serve did not start: {}", stderr.lock().unwrap()));
    let addr = line.rsplit_once("://").expect("an address").1.trim().parse().unwrap();
    Serve { child, addr, stderr }
}

/// Spawns `serve`, waits (20 s at most) for a stderr line containing `wanted` or for its exit.
fn spawn(dir: &Path, args: &[&str], wanted: &str) -> (Child, Arc<Mutex<String>>, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_libsql-wal"))
        .args(["serve", "--db-dir"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let collected = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = collected.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let found = stderr.lock().unwrap().lines().find(|l| l.contains(wanted)).map(str::to_string);
        if found.is_some() {
            return (child, stderr, found);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stderr, None)
}

fn pipeline(addr: SocketAddr, baton: Option<&str>, requests: Value) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({ "baton": baton, "requests": requests })).unwrap();
    let (status, reply) = http(addr, "POST", "/v2/pipeline", &[], &body);
    (status, serde_json::from_slice(&reply).unwrap_or(Value::Null))
}

impl Serve {
    fn pipeline(&self, baton: Option<&str>, requests: Value) -> (u16, Value) {
        pipeline(self.addr, baton, requests)
    }

    /// SIGTERM, then the exit code (within 60 s).
    fn terminate(mut self) -> (Option<i32>, String) {
        sigterm(&self.child);
        let code = wait(&mut self.child, Duration::from_secs(60));
        let stderr = self.stderr.lock().unwrap().clone();
        (code, stderr)
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("serve did not exit within {limit:?} of SIGTERM");
}

fn execute(sql: &str) -> Value {
    json!({ "type": "execute", "stmt": { "sql": sql } })
}

fn close() -> Value {
    json!({ "type": "close" })
}

fn ok(reply: &(u16, Value)) {
    assert_eq!(reply.0, 200, "{}", reply.1);
    for result in reply.1["results"].as_array().unwrap() {
        assert_eq!(result["type"], "ok", "{}", reply.1);
    }
}

/// Runs `sql` with the stock `sqlite3` shell on `db`, which must open it as a plain file.
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().expect("the sqlite3 shell");
    assert!(out.status.success(), "sqlite3 {}: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn sigterm_rolls_back_an_open_transaction_and_leaves_a_plain_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--listen", "127.0.0.1:0"]);
    ok(&server.pipeline(None, json!([execute("create table t(x)"), execute("insert into t values (1)"), close()])));
    // An interactive transaction left open behind its baton, holding the writer lock.
    let open = server.pipeline(
        None,
        json!([execute("begin immediate"), execute("insert into t values (2)"), execute("insert into t values (3)")]),
    );
    ok(&open);
    assert!(open.1["baton"].is_string());
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let db = dir.path().join("default.db");
    assert_eq!(sqlite3(&db, "pragma integrity_check"), "ok");
    assert_eq!(sqlite3(&db, "select group_concat(x) from t"), "1", "the open transaction was not rolled back");
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--listen", "127.0.0.1:0"]);
    ok(&server.pipeline(None, json!([execute("create table t(n)"), close()])));
    let Serve { mut child, addr, stderr } = server;
    let finished = AtomicBool::new(false);
    let (slow, refused_while_running, code) = std::thread::scope(|s| {
        let slow = s.spawn(|| {
            // A commit whose statement runs for a second or more.
            let started = Instant::now();
            let reply = pipeline(
                addr,
                None,
                json!([execute("insert into t with recursive c(i) as (select 1 union all select i+1 from c where i < 10000000) select count(*) from c"), close()]),
            );
            finished.store(true, Ordering::SeqCst);
            (reply, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!finished.load(Ordering::SeqCst), "the slow commit was too fast to be in flight at SIGTERM");
        sigterm(&child);
        // Stops accepting at once: a new connection is refused while the commit still runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut refused = None;
        while Instant::now() < deadline {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused = Some(!finished.load(Ordering::SeqCst));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let slow = slow.join().unwrap();
        let code = wait(&mut child, Duration::from_secs(60));
        (slow, refused, code)
    });
    let ((reply, took), stderr) = (slow, stderr.lock().unwrap().clone());
    assert_eq!(refused_while_running, Some(true), "no connection refused while the commit ran: {stderr}");
    eprintln!("the commit in flight took {took:?}");
    assert!(took > Duration::from_millis(300), "{took:?}");
    ok(&reply);
    assert_eq!(code, Some(0), "{stderr}");
    let db = dir.path().join("default.db");
    assert_eq!(sqlite3(&db, "pragma integrity_check"), "ok");
    assert_eq!(sqlite3(&db, "select n from t"), "10000000", "the commit in flight at SIGTERM is missing");
}

#[test]
fn sigterm_flushes_the_last_commits_to_storage() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());
    let dbs = dir.path().join("dbs");
    // Acknowledged locally only (--ack local): nothing but the shutdown ships the last ones.
    let server = serve(&dbs, &["--listen", "127.0.0.1:0", "--storage", &url]);
    ok(&server.pipeline(None, json!([execute("create table t(id integer primary key, v)"), close()])));
    for i in 1..=50 {
        ok(&server.pipeline(None, json!([execute(&format!("insert into t values ({i}, randomblob(100))")), close()])));
    }
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    // The local files are gone (a lost machine): storage alone has every commit.
    std::fs::remove_dir_all(&dbs).unwrap();
    let out = dir.path().join("restored.db");
    let status = Command::new(env!("CARGO_BIN_EXE_libsql-wal"))
        .args(["restore", "--storage", &url, "--namespace", "default"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(sqlite3(&out, "pragma integrity_check"), "ok");
    assert_eq!(sqlite3(&out, "select count(*), max(id) from t"), "50|50");
}

#[test]
fn without_auth_it_listens_on_loopback_and_warns_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    // Off loopback without auth: served, with a warning.
    let server = serve(&dir.path().join("a"), &["--listen", "0.0.0.0:0"]);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("warning:") && l.contains("without authentication")),
        "no warning: {stderr}"
    );
    // With auth: no warning.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-of-enough-length").unwrap();
    let server = serve(&dir.path().join("b"), &["--listen", "0.0.0.0:0", "--auth-token-file", token.to_str().unwrap()]);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    // No --listen: 127.0.0.1:8080, without a warning (if the port is taken, the error names it).
    let (mut child, stderr, _) = spawn(&dir.path().join("c"), &[], "127.0.0.1:8080");
    let text = stderr.lock().unwrap().clone();
    sigterm(&child);
    let _ = wait(&mut child, Duration::from_secs(60));
    assert!(text.contains("on http://127.0.0.1:8080") || text.contains("cannot listen on 127.0.0.1:8080"), "{text}");
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn the_limit_flags_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--max-body-bytes", "2000", "--max-stored-sql", "1", "--max-batons", "1"],
    );
    let store = |id: i32| json!({ "type": "store_sql", "sql_id": id, "sql": "select 1" });
    let (status, r) = server.pipeline(None, json!([store(1), store(2), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][1]["error"]["code"], "SQL_STORE_TOO_MANY", "{r}");
    let (status, r) = server.pipeline(None, json!([execute(&format!("select '{}'", "x".repeat(3000)))]));
    assert_eq!(status, 413, "{r}");
    assert_eq!(r["code"], "BODY_TOO_LARGE");
    let (status, r) = server.pipeline(None, json!([execute("select 1")]));
    assert_eq!(status, 200, "{r}");
    let (status, r) = server.pipeline(None, json!([execute("select 1")]));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["code"], "STREAMS_EXHAUSTED");
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

//! libSQL's official clients, unchanged, against `libsql-wal serve`: the npm package
//! `@libsql/client` (Hrana over HTTP, `/v2/pipeline`) and the PyPI package `libsql`
//! (`/v3/pipeline`, `/v3/cursor`) each run one workload (`tests/clients/workload.mjs`,
//! `workload.py`: DDL, positional and named parameters, an atomic batch with a failing
//! statement, interactive transactions that commit and roll back, blobs, 64-bit integers,
//! floats, a 100,000-row result, SQL errors) on the server and then, as the reference, in
//! process on SQLite's own WAL through the same package. The two transcripts must be equal,
//! but for what each workload puts under a step's `tolerated` key (error codes and full texts,
//! counts of statements that change no rows, and the steps where the in-process client or
//! JSON itself differ for a stated reason): those are printed, not compared.
//!
//! The clients are installed by `.ci/test` (`npm ci` in tests/clients, `pip install -r
//! tests/clients/requirements.txt`); without them this test fails, naming that script.
//!
//! ```text
//! cargo test -p libsql-wal-cli --test serve_clients -- --nocapture   # shows what was tolerated
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
const NPM_CLIENT_VERSION: &str = "0.18.0";
const PYPI_CLIENT_VERSION: &str = "0.1.11";
/// Far more than a workload takes (a few seconds in a debug build): a hung client fails the
/// test instead of hanging CI.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn missing(what: &str) -> ! {
    panic!(
        "{what}. `.ci/test` installs libSQL's clients for this test (npm ci in {dir}, pip install -r \
         {dir}/requirements.txt); run it once, or those two commands",
        dir = clients_dir().display()
    )
}

/// The npm client, installed at the pinned version: else the test fails (never skips).
fn require_node_client() {
    let dir = clients_dir();
    let installed = dir.join("node_modules/@libsql/client/package.json");
    let Ok(text) = std::fs::read_to_string(&installed) else {
        missing(&format!("@libsql/client is not installed ({} is missing)", installed.display()))
    };
    let manifest: Value = serde_json::from_str(&text).unwrap();
    if manifest["version"] != NPM_CLIENT_VERSION {
        missing(&format!("@libsql/client is {}, not the pinned {NPM_CLIENT_VERSION}", manifest["version"]));
    }
    if !Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()) {
        missing("`node` does not run");
    }
}

/// The PyPI client, importable at the pinned version.
fn require_python_client() {
    let check = "import importlib.metadata, libsql; print(importlib.metadata.version('libsql'))";
    let out = Command::new("python3").args(["-c", check]).output();
    let Ok(out) = out else { missing("`python3` does not run") };
    if !out.status.success() {
        missing(&format!(
            "the Python package libsql cannot be imported: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version != PYPI_CLIENT_VERSION {
        missing(&format!("the Python package libsql is {version}, not the pinned {PYPI_CLIENT_VERSION}"));
    }
}

fn require_sqlite3() {
    if !Command::new("sqlite3").arg("-version").output().is_ok_and(|o| o.status.success()) {
        panic!("stock `sqlite3` does not run; `.ci/test` installs it (Debian's sqlite3)");
    }
}

/// `libsql-wal serve` on a free loopback port; stderr kept for a failure's message.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Server {
    fn start(db_dir: &Path) -> Server {
        // A port of its own choosing, read from its "serving … on http://ADDR" line: a port
        // the test picked and released could be taken by another test's server meanwhile.
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db-dir"])
            .arg(db_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start libsql-wal serve");
        let pipe = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(" on http://") {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let Ok(addr) = addr_rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve never said where it listens: {}", stderr.join().unwrap_or_default());
        };
        let addr: SocketAddr = addr.parse().expect("an address");
        let mut server = Server { child, addr, stderr: Some(stderr) };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited before it was healthy ({status}): {}", self.stderr_text());
            }
            if http_get(self.addr, "/health").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "serve on {} never answered GET /health with 200", self.addr);
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and everything it wrote to stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("serve did not exit within 60 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        };
        (status, self.stderr_text())
    }

    /// All the server wrote to stderr (once it exited).
    fn stderr_text(&mut self) -> String {
        self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only on a failure (stop() reaps it first): never leave the server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: the status and the body, or None if nothing answered.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
    Some((status, body))
}

/// Runs a client within the deadline: its output, whatever became of it.
fn run_client(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(clients_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let stderr = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {CLIENT_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A workload's transcript on `target` (a URL or a path).
fn transcript(program: &str, script: &str, target: &str) -> Value {
    let started = Instant::now();
    let out = run_client(program, &[script, target]);
    assert!(
        out.status.success(),
        "{program} {script} {target} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{program} {script} {target}: {:.1} s", started.elapsed().as_secs_f64());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{script} printed no JSON transcript ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
    })
}

/// `value` without any `tolerated` key, at any depth.
fn compared(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| *k != "tolerated").map(|(k, v)| (k.clone(), compared(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(compared).collect()),
        other => other.clone(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Asserts the server's transcript equals the reference's, step by step, but for what is
/// tolerated; prints the tolerated differences. A failure shows each differing step whole,
/// from both sides.
fn assert_same(client: &str, served: &Value, reference: &Value) {
    let (a, b) = (served["steps"].as_array().unwrap(), reference["steps"].as_array().unwrap());
    let mut report = String::new();
    let mut tolerated = String::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).unwrap_or(&Value::Null), b.get(i).unwrap_or(&Value::Null));
        let name = x["step"].as_str().or(y["step"].as_str()).unwrap_or("?");
        if compared(x) != compared(y) {
            report += &format!(
                "\n--- step {i} `{name}` differs\nserver:\n{}\nin process (reference):\n{}\n",
                pretty(x),
                pretty(y)
            );
        } else if x != y {
            tolerated += &format!("  {name}: server {} | in process {}\n", tolerated_part(x), tolerated_part(y));
        }
    }
    if !tolerated.is_empty() {
        eprintln!("{client}: tolerated differences (not compared):\n{tolerated}");
    }
    assert!(report.is_empty(), "{client}: the server's results differ from SQLite's own in process:{report}");
}

/// The tolerated parts of a step, for the record.
fn tolerated_part(step: &Value) -> String {
    fn collect(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "tolerated" {
                        out.push(v.clone());
                    } else {
                        collect(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut parts = Vec::new();
    collect(step, &mut parts);
    serde_json::to_string(&parts).unwrap()
}

/// The rows a step returned, as stock sqlite3 prints them in `-json` mode (plain numbers and
/// strings: kv holds only integers and text).
fn rows_as_sqlite3_json(step: &Value, columns: &[&str]) -> Value {
    let rows = step["rows"].as_array().unwrap_or_else(|| panic!("step has no rows: {}", pretty(step)));
    Value::Array(
        rows.iter()
            .map(|row| {
                let cells = row.as_array().unwrap().iter().zip(columns).map(|(cell, name)| {
                    let value = if let Some(int) = cell.get("int") {
                        Value::from(int.as_str().unwrap().parse::<i64>().unwrap())
                    } else if let Some(text) = cell.get("text") {
                        text.clone()
                    } else {
                        panic!("kv holds only integers and text, not {cell}")
                    };
                    (name.to_string(), value)
                });
                Value::Object(cells.collect())
            })
            .collect(),
    )
}

fn step<'a>(transcript: &'a Value, name: &str) -> &'a Value {
    transcript["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in the transcript"))
}

fn sqlite3_json(db: &Path, sql: &str) -> Value {
    let out = Command::new("sqlite3").arg("-json").arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {}: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

/// After the server stopped, stock sqlite3 reads what the client left: a sound file whose
/// `kv` is the workload's final one and whose `big` holds the 100,000 rows.
fn check_with_sqlite3(db: &Path, transcript: &Value) {
    assert_eq!(sqlite3_json(db, "PRAGMA integrity_check"), serde_json::json!([{"integrity_check": "ok"}]));
    let final_kv = rows_as_sqlite3_json(step(transcript, "final kv"), &["id", "k", "v"]);
    assert_eq!(sqlite3_json(db, "SELECT id, k, v FROM kv ORDER BY id"), final_kv, "{}: kv", db.display());
    assert_eq!(
        sqlite3_json(db, "SELECT count(*) AS n, sum(x) AS s FROM big"),
        serde_json::json!([{"n": 100000, "s": 5000050000_i64}]),
        "{}: big",
        db.display()
    );
}

#[test]
fn official_clients_get_what_sqlite_gives_in_process() {
    require_node_client();
    require_python_client();
    require_sqlite3();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (db_dir, reference_dir) = (dir.path().join("served"), dir.path().join("reference"));
    std::fs::create_dir_all(&db_dir).unwrap();
    std::fs::create_dir_all(&reference_dir).unwrap();
    let server = Server::start(&db_dir);
    let base = format!("http://{}", server.addr);

    // npm @libsql/client on the default namespace (the URL as a user gives it).
    let node_ref = reference_dir.join("node.db");
    let node_served = transcript("node", "workload.mjs", &base);
    let node_reference = transcript("node", "workload.mjs", &format!("file:{}", node_ref.display()));
    assert_same("@libsql/client", &node_served, &node_reference);

    // PyPI libsql on namespace `python`, by the server's /dev/<namespace>/ path.
    let py_ref = reference_dir.join("python.db");
    let py_served = transcript("python3", "workload.py", &format!("{base}/dev/python"));
    let py_reference = transcript("python3", "workload.py", py_ref.to_str().unwrap());
    assert_same("libsql (PyPI)", &py_served, &py_reference);

    let (status, stderr) = server.stop();
    assert!(status.success(), "serve exited with {status} after SIGTERM:\n{stderr}");
    check_with_sqlite3(&db_dir.join("default.db"), &node_served);
    check_with_sqlite3(&db_dir.join("python.db"), &py_served);
    // And the references hold the same (their own WAL checkpointed by sqlite3 on open/close).
    check_with_sqlite3(&node_ref, &node_reference);
    check_with_sqlite3(&py_ref, &py_reference);
    eprintln!("official clients against serve: {:.1} s in all", started.elapsed().as_secs_f64());
}

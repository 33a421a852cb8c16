//! Replication under faults, with real `libsql-wal serve` processes on loopback that the
//! tests start, SIGKILL and restart, and a TCP proxy between replica and primary that the
//! tests stall, cut and point at a closed port (`libsql_wal_testkit::proxy`).
//!
//! The workload is the bank of tests/replication.rs (libsql-wal-server): 100 accounts whose
//! balances always sum to 10 000, and a counter incremented by each transfer's transaction.
//! A watcher reads the replica all along and records any read that breaks the invariant or
//! sees the counter go back; at the end the replica's accounts and counter equal the
//! primary's (no transaction lost, none applied twice).
//!
//! - a primary SIGKILLed mid-stream and restarted on its files and port: the replica goes on
//!   from where it was (no new image);
//! - a replica SIGKILLed while the primary writes and restarted on its files: it resumes from
//!   its own position (the primary's image route was not asked again);
//! - a stalled stream (longer than the replica's 8 s silence limit): the replica reconnects,
//!   and catches up once bytes flow again;
//! - connections cut every 300 ms while the primary writes;
//! - a primary unreachable for 5 s: reconnection attempts are spaced (backoff, not a busy
//!   loop), then the replica catches up;
//! - a client that asks for frames and never reads: the primary's commits stay fast and its
//!   memory (VmRSS) bounded while it writes 50 MB.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libsql_wal_testkit::http::request;
use libsql_wal_testkit::proxy::Proxy;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
/// Longest a request to a live server may take before the test calls it stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The replica's silence limit (`SILENCE_MAX` in libsql-wal-server's replication.rs).
const SILENCE_MAX: Duration = Duration::from_secs(8);
const ACCOUNTS: i64 = 100;
const TOTAL: i64 = 10_000;

/// One `libsql-wal serve` child process, SIGKILLed when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
    /// Its stderr, line by line (the replica logs at `info`).
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `serve` on `listen` and waits until it answers `/health`. The address is the
    /// one its "serving … on http://ADDR" line names (so `127.0.0.1:0` needs no free port
    /// picked by the test). An error if it exits or stays silent first (a port in use).
    fn try_start(dir: &Path, listen: &str, extra: &[&str]) -> Result<Serve, String> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--db-dir"])
            .arg(dir)
            .args(extra)
            .env("LIBSQL_WAL_LOG", "warn,libsql_wal_server::replication=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {BIN}: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(" on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if child.try_wait().ok().flatten().is_none() {
                        continue;
                    }
                }
                Err(_) => {}
            }
            let _ = child.kill();
            let _ = child.wait();
            // The reader thread may still be copying its last lines.
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!("serve --listen {listen} did not start: {}", log.lock().unwrap().join("\n")));
        };
        let serve = Serve { child, addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(request(serve.addr, "GET", "/health", &[], b"", Some(REQUEST_TIMEOUT)), Ok((200, _))) {
            if Instant::now() > deadline {
                return Err(format!("serve on {} did not answer /health within 30 s", serve.addr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(serve)
    }

    fn start(dir: &Path, extra: &[&str]) -> Serve {
        Serve::try_start(dir, "127.0.0.1:0", extra).unwrap()
    }

    /// Starts `serve` on exactly `addr` (a restart on the port it had), retrying a few times
    /// while the port is not free yet.
    fn start_on(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Serve {
        let mut tries = 0;
        loop {
            match Serve::try_start(dir, &addr.to_string(), extra) {
                Ok(serve) => return serve,
                Err(e) if tries < 10 => {
                    tries += 1;
                    eprintln!("restarting on {addr} (try {tries}): {e}");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps it.
    fn kill9(self) {
        drop(self);
    }

    fn log_lines_with(&self, what: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|line| line.contains(what)).count()
    }

    /// VmRSS of the process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Requests answered on `route` (the primary's `/metrics` counter).
    fn requests_on(&self, route: &str) -> u64 {
        let (status, body) = request(self.addr, "GET", "/metrics", &[], b"", Some(REQUEST_TIMEOUT)).unwrap();
        assert_eq!(status, 200);
        let label = format!("route=\"{route}\"");
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("libsql_wal_http_requests_total{") && line.contains(&label))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs statements in one pipeline; an error if the server is unreachable, answers anything
/// but 200, or any statement failed.
fn try_sql(addr: SocketAddr, statements: &[&str]) -> Result<Value, String> {
    let mut requests: Vec<Value> =
        statements.iter().map(|sql| json!({ "type": "execute", "stmt": { "sql": sql } })).collect();
    requests.push(json!({ "type": "close" }));
    let body = serde_json::to_vec(&json!({ "baton": null, "requests": requests })).unwrap();
    let (status, reply) =
        request(addr, "POST", "/v2/pipeline", &[], &body, Some(REQUEST_TIMEOUT)).map_err(|e| format!("{addr}: {e}"))?;
    let reply: Value = serde_json::from_slice(&reply).map_err(|e| format!("{addr}: {status}: {e}"))?;
    if status != 200 {
        return Err(format!("{addr}: {status}: {reply}"));
    }
    match reply["results"].as_array() {
        Some(results) if results.iter().all(|r| r["type"] == "ok") => Ok(reply),
        _ => Err(format!("{addr}: {reply}")),
    }
}

fn sql(addr: SocketAddr, statements: &[&str]) -> Value {
    try_sql(addr, statements).unwrap()
}

fn rows(reply: &Value, index: usize) -> Value {
    reply["results"][index]["response"]["result"]["rows"].clone()
}

fn setup_bank(primary: &Serve) {
    sql(
        primary.addr,
        &[
            "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)",
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) \
             INSERT INTO acct SELECT i, 100 FROM c",
            "CREATE TABLE seq(n INTEGER)",
            "INSERT INTO seq VALUES (0)",
        ],
    );
}

/// Transfer `i`: 5 from one account to another and the counter incremented, one transaction.
fn transfer(addr: SocketAddr, i: u64) -> Result<(), String> {
    let (a, b) = (i * 7 % 100 + 1, i * 13 % 100 + 1);
    try_sql(
        addr,
        &[
            "BEGIN",
            &format!("UPDATE acct SET bal = bal - 5 WHERE id = {a}"),
            &format!("UPDATE acct SET bal = bal + 5 WHERE id = {b}"),
            "UPDATE seq SET n = n + 1",
            "COMMIT",
        ],
    )
    .map(drop)
}

/// (sum of balances, accounts, transfers) in one read, if the server answers with them.
fn bank(addr: SocketAddr) -> Option<(i64, i64, i64)> {
    let reply =
        try_sql(addr, &["SELECT (SELECT sum(bal) FROM acct), (SELECT count(*) FROM acct), (SELECT n FROM seq)"])
            .ok()?;
    let row = &rows(&reply, 0)[0];
    let int = |v: &Value| v["value"].as_str().and_then(|s| s.parse().ok());
    Some((int(&row[0])?, int(&row[1])?, int(&row[2])?))
}

fn transfers(addr: SocketAddr) -> Option<i64> {
    bank(addr).map(|(_, _, n)| n)
}

/// Every account and the counter, as the server shows them.
fn dump(addr: SocketAddr) -> (Value, Value) {
    let reply = sql(addr, &["SELECT * FROM acct ORDER BY id", "SELECT n FROM seq"]);
    (rows(&reply, 0), rows(&reply, 1))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the replica has every transfer the primary has, then compares all their rows.
fn assert_replica_equals_primary(replica: &Serve, primary: &Serve) {
    let expected = transfers(primary.addr).expect("the primary answers");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = transfers(replica.addr);
        if seen == Some(expected) {
            break;
        }
        if Instant::now() > deadline {
            let log = replica.log.lock().unwrap();
            let tail = log[log.len().saturating_sub(30)..].join("\n");
            panic!("the replica did not catch up: {seen:?} of {expected} transfers; its log ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dump(replica.addr), dump(primary.addr), "the replica's rows are the primary's");
    let reply = sql(replica.addr, &["PRAGMA integrity_check"]);
    assert_eq!(rows(&reply, 0)[0][0]["value"], "ok", "{reply}");
}

/// Reads the bank on a replica (wherever it is now) every few milliseconds until stopped;
/// any read that breaks the invariant or sees fewer transfers than an earlier read is kept.
struct Watcher {
    target: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>)>,
}

impl Watcher {
    fn start(replica: SocketAddr) -> Watcher {
        let target = Arc::new(Mutex::new(Some(replica)));
        let stop = Arc::new(AtomicBool::new(false));
        let (watched, stopped) = (target.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut reads, mut broken, mut last) = (0u64, Vec::new(), 0i64);
            while !stopped.load(Ordering::SeqCst) {
                let addr = *watched.lock().unwrap();
                if let Some((sum, accounts, n)) = addr.and_then(bank) {
                    reads += 1;
                    if (sum, accounts) != (TOTAL, ACCOUNTS) {
                        broken.push(format!("after {n} transfers: sum {sum} over {accounts} accounts"));
                    }
                    if n < last {
                        broken.push(format!("{n} transfers after {last}"));
                    }
                    last = n;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (reads, broken)
        });
        Watcher { target, stop, thread }
    }

    fn retarget(&self, replica: Option<SocketAddr>) {
        *self.target.lock().unwrap() = replica;
    }

    /// Stops it and asserts every read held the invariant.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (reads, broken) = self.thread.join().unwrap();
        eprintln!("{reads} reads of the replica, {} broke the invariant", broken.len());
        assert!(broken.is_empty(), "replica reads broke the bank invariant: {broken:?}");
        assert!(reads > 10, "the replica was read only {reads} times");
        reads
    }
}

/// Commits transfers on the primary one after another until stopped (or `limit`), each
/// retried while the primary is down (a transfer whose answer was lost may have committed:
/// retrying it is one more transfer, which the invariant does not mind).
struct Writer {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Writer {
    fn start(primary: SocketAddr, from: u64, limit: u64) -> Writer {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (done.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            for i in from..from + limit {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                while let Err(e) = transfer(primary, i) {
                    assert!(Instant::now() < deadline, "the writer gave up at transfer {i}: {e}");
                    // Refused connections while the primary is down are expected; an error
                    // from SQL is not.
                    assert!(!e.contains("\"results\""), "transfer {i} failed: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        Writer { done, stop, thread }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    fn wait_for(&self, n: u64) {
        wait_until(&format!("the writer reaching {n} transfers"), Duration::from_secs(60), || self.done() >= n);
    }

    /// Waits until it has done its `limit`, or stops it first with `stop`.
    fn finish(self, stop: bool) -> u64 {
        if stop {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.thread.join().unwrap();
        self.done.load(Ordering::SeqCst)
    }
}

/// A primary with the bank and a replica following it at `primary_url` (the primary's own, or
/// a proxy's), both in `dir`, once the replica shows the bank.
fn primary_and_replica(dir: &Path, primary_url: impl FnOnce(&Serve) -> String) -> (Serve, Serve) {
    let primary = Serve::start(&dir.join("primary"), PRIMARY);
    setup_bank(&primary);
    let url = primary_url(&primary);
    let replica = Serve::start(&dir.join("replica"), &["--replica-of", &url]);
    wait_until("the replica showing the bank", Duration::from_secs(30), || {
        bank(replica.addr) == Some((TOTAL, ACCOUNTS, 0))
    });
    (primary, replica)
}

const IMAGE_LOG: &str = "replica: started from an image";

/// A primary's options: a stream left open stays open (for [`pin_log`]).
const PRIMARY: &[&str] = &["--baton-timeout", "10m"];

/// Leaves a read transaction open on the primary, so its checkpoints keep every frame
/// committed after now in its log, as they do for any reader.
///
/// Why: a replica away (disconnected) while the primary seals and checkpoints the frames
/// after its position is refused when it comes back (409 `REPLICA_POSITION_UNSERVABLE`)
/// and, until a refused replica starts again from an image by itself (SERVE.md, *Not yet*),
/// stays where it is. A segment is sealed after 10 s, so an outage of a few seconds on a
/// slow machine can meet a checkpoint. The tests that use this are about reconnecting and
/// resuming; the refusal itself is [`a_replica_away_while_the_primary_checkpoints_starts_again_from_an_image`].
fn pin_log(primary: &Serve) {
    let body = json!({ "baton": null, "requests": [
        { "type": "execute", "stmt": { "sql": "BEGIN" } },
        { "type": "execute", "stmt": { "sql": "SELECT count(*) FROM acct" } }] });
    let (status, reply) =
        request(primary.addr, "POST", "/v2/pipeline", &[], &serde_json::to_vec(&body).unwrap(), Some(REQUEST_TIMEOUT))
            .unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(status, 200, "{reply}");
    assert!(reply["baton"].is_string() && reply["results"][1]["type"] == "ok", "{reply}");
}

/// A loopback port nothing listens on: bound by the system's choice, then closed.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn a_primary_killed_mid_stream_and_restarted_is_followed_on_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = primary_and_replica(dir.path(), Serve::url);
    let primary_addr = primary.addr;
    pin_log(&primary);
    let watcher = Watcher::start(replica.addr);
    let writer = Writer::start(primary_addr, 0, 500);
    let mut primary = Some(primary);
    for kill_at in [120, 300] {
        writer.wait_for(kill_at);
        // The replica is streaming: it has some of the transfers already.
        wait_until("the replica following", Duration::from_secs(30), || {
            transfers(replica.addr).is_some_and(|n| n > kill_at as i64 / 2)
        });
        primary.take().unwrap().kill9();
        let restarted = Serve::start_on(&dir.path().join("primary"), primary_addr, PRIMARY);
        pin_log(&restarted);
        primary = Some(restarted);
    }
    let written = writer.finish(false);
    assert_eq!(written, 500);
    let primary = primary.unwrap();
    assert!(transfers(primary.addr).unwrap() >= 500);
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
    assert_eq!(replica.log_lines_with(IMAGE_LOG), 1, "the replica went on from its position, no new image");
    assert_eq!(primary.requests_on("/replication/v1/image"), 0);
}

#[test]
fn a_replica_killed_while_the_primary_writes_resumes_from_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = primary_and_replica(dir.path(), Serve::url);
    assert_eq!(primary.requests_on("/replication/v1/image"), 1);
    assert_eq!(replica.log_lines_with(IMAGE_LOG), 1);
    pin_log(&primary);
    let watcher = Watcher::start(replica.addr);
    let writer = Writer::start(primary.addr, 0, 400);
    wait_until("the replica following", Duration::from_secs(30), || transfers(replica.addr).is_some_and(|n| n >= 80));
    watcher.retarget(None);
    replica.kill9();
    // The primary goes on writing while its replica is away.
    let down_at = writer.done();
    writer.wait_for(down_at + 100);
    let replica = Serve::start(&dir.path().join("replica"), &["--replica-of", &primary.url()]);
    watcher.retarget(Some(replica.addr));
    assert_eq!(writer.finish(false), 400);
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
    assert_eq!(primary.requests_on("/replication/v1/image"), 1, "the restarted replica asked for no image");
    assert_eq!(replica.log_lines_with(IMAGE_LOG), 0, "{:?}", replica.log.lock().unwrap());
}

/// A replica following its primary through a proxy the test controls.
fn behind_a_proxy(dir: &Path) -> (Serve, Proxy, Serve) {
    let mut proxy = None;
    let (primary, replica) = primary_and_replica(dir, |primary| {
        let started = Proxy::start(primary.addr).unwrap();
        let url = started.url();
        proxy = Some(started);
        url
    });
    (primary, proxy.unwrap(), replica)
}

#[test]
fn a_stalled_stream_is_reconnected_and_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, proxy, replica) = behind_a_proxy(dir.path());
    pin_log(&primary);
    let watcher = Watcher::start(replica.addr);
    for i in 0..20 {
        transfer(primary.addr, i).unwrap();
    }
    wait_until("the replica following", Duration::from_secs(30), || transfers(replica.addr) == Some(20));
    let before = proxy.accepted();
    proxy.stall();
    let stalled = Instant::now();
    // The primary commits as usual meanwhile.
    for i in 20..60 {
        transfer(primary.addr, i).unwrap();
    }
    wait_until("the replica reconnecting a silent stream", SILENCE_MAX * 3, || proxy.accepted() > before);
    let reconnected = stalled.elapsed();
    eprintln!("stalled: the replica reconnected after {reconnected:?}");
    assert!(
        reconnected >= SILENCE_MAX - Duration::from_secs(3),
        "the replica reconnected after {reconnected:?}, before its silence limit"
    );
    // The new connection's request is stalled too: no answer is silence as well, and the
    // replica tries again rather than waiting for good on a connection that says nothing.
    let first = proxy.accepted();
    wait_until("the replica reconnecting a silent request", SILENCE_MAX * 2, || proxy.accepted() > first);
    eprintln!("stalled: and again after {:?}", stalled.elapsed());
    assert_eq!(transfers(replica.addr), Some(20), "nothing crossed the stalled proxy");
    proxy.resume();
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
}

#[test]
fn connections_cut_again_and_again_while_the_primary_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, proxy, replica) = behind_a_proxy(dir.path());
    pin_log(&primary);
    let watcher = Watcher::start(replica.addr);
    let writer = Writer::start(primary.addr, 0, u64::MAX / 2);
    let before = proxy.accepted();
    let cutting = Instant::now();
    while cutting.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(300));
        proxy.cut();
    }
    let written = writer.finish(true);
    eprintln!("{written} transfers while cutting; {} connections accepted", proxy.accepted() - before);
    assert!(written > 20, "the writer did only {written} transfers");
    assert!(proxy.accepted() > before + 2, "the replica reconnected {} times", proxy.accepted() - before);
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
}

#[test]
fn an_unreachable_primary_is_retried_with_backoff_then_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, proxy, replica) = behind_a_proxy(dir.path());
    pin_log(&primary);
    let watcher = Watcher::start(replica.addr);
    proxy.set_target(closed_port());
    proxy.cut();
    let (accepted, forwarded) = (proxy.accepted(), proxy.forwarded());
    for i in 0..30 {
        transfer(primary.addr, i).unwrap();
    }
    // The outage: a fixed span, since what is measured is how often the replica tries in it.
    std::thread::sleep(Duration::from_secs(5));
    let attempts = proxy.accepted() - accepted;
    assert_eq!(proxy.forwarded(), forwarded, "nothing reached the primary");
    eprintln!("primary unreachable for 5 s: {attempts} connection attempts");
    assert!(attempts >= 2, "the replica tried to reconnect {attempts} times in 5 s");
    assert!(attempts < 40, "the replica tried to reconnect {attempts} times in 5 s: not backing off");
    assert_eq!(transfers(replica.addr), Some(0));
    proxy.set_target(primary.addr);
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
}

/// The backoff is per outage: a replica that streams again after a long one reconnects at
/// once (50 ms, SERVE.md) after the next break, not after the longest delay.
#[test]
fn after_an_outage_and_a_healthy_stream_a_break_is_reconnected_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, proxy, replica) = behind_a_proxy(dir.path());
    pin_log(&primary);
    proxy.set_target(closed_port());
    proxy.cut();
    // Failed attempts until the delay between them is at its longest (2 s).
    let failed = proxy.accepted();
    wait_until("the replica failing to reconnect", Duration::from_secs(30), || proxy.accepted() >= failed + 7);
    proxy.set_target(primary.addr);
    for i in 0..20 {
        transfer(primary.addr, i).unwrap();
    }
    wait_until("the replica following again", Duration::from_secs(30), || transfers(replica.addr) == Some(20));
    // It streams (keep-alives included) for a moment, then one break.
    std::thread::sleep(Duration::from_secs(3));
    let before = proxy.accepted();
    proxy.cut();
    let cut = Instant::now();
    wait_until("the replica reconnecting", Duration::from_secs(10), || proxy.accepted() > before);
    let reconnected = cut.elapsed();
    eprintln!("after an outage, a break was reconnected in {reconnected:?}");
    assert!(reconnected < Duration::from_secs(1), "a break after a healthy stream waited {reconnected:?}");
    transfer(primary.addr, 20).unwrap();
    assert_replica_equals_primary(&replica, &primary);
}

#[test]
fn a_replica_away_while_the_primary_checkpoints_starts_again_from_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, proxy, replica) = behind_a_proxy(dir.path());
    let watcher = Watcher::start(replica.addr);
    // The replica shows the bank and nothing since: it is where the primary's image is.
    let position = image_position(&primary);
    proxy.set_target(closed_port());
    proxy.cut();
    sql(primary.addr, &["CREATE TABLE big(v BLOB)"]);
    for i in 0..30 {
        transfer(primary.addr, i).unwrap();
    }
    // A full segment is sealed, and checkpointed since no reader nor follower holds it.
    wait_until("the primary checkpointing the replica's position away", Duration::from_secs(60), || {
        sql(primary.addr, &["INSERT INTO big VALUES (randomblob(262144))"]);
        frames_status(primary.addr, &position) == 409
    });
    let images = primary.requests_on("/replication/v1/image");
    proxy.set_target(primary.addr);
    assert_replica_equals_primary(&replica, &primary);
    watcher.finish();
    assert_eq!(primary.requests_on("/replication/v1/image"), images + 1, "the replica started again from an image");
}

/// The status the primary answers a frames request after `position` with (the stream, if
/// any, is dropped unread).
fn frames_status(primary: SocketAddr, position: &str) -> u16 {
    let mut stream = TcpStream::connect(primary).unwrap();
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET /replication/v1/frames?position={position} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// The position of an image: its page 1's checkpoint mark (docs/FORMAT.md, *Replication*).
fn image_position(primary: &Serve) -> String {
    let (status, image) =
        request(primary.addr, "GET", "/replication/v1/image", &[], b"", Some(REQUEST_TIMEOUT)).unwrap();
    assert_eq!(status, 200);
    let mark = &image[72..92];
    let frame_no = u64::from_le_bytes([mark[0], mark[1], mark[2], mark[3], mark[4], mark[5], 0, 0]);
    let lineage = u32::from_le_bytes(mark[10..14].try_into().unwrap());
    let chain = u32::from_le_bytes(mark[14..18].try_into().unwrap());
    format!("{lineage:08x}-{frame_no}-{chain:08x}")
}

#[test]
fn a_replica_that_never_reads_holds_neither_commits_nor_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica) = primary_and_replica(dir.path(), Serve::url);
    sql(primary.addr, &["CREATE TABLE big(v BLOB)"]);
    const BLOB: usize = 256 * 1024;
    let insert = format!("INSERT INTO big VALUES (randomblob({BLOB}))");
    // Warm up (caches, threads, the allocator's arenas) before the baseline.
    for _ in 0..20 {
        sql(primary.addr, &[&insert]);
    }
    let position = image_position(&primary);
    let mut stalled = TcpStream::connect(primary.addr).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        format!("GET /replication/v1/frames?position={position} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let baseline = primary.rss();
    let (mut slowest, mut peak) = (Duration::ZERO, baseline);
    let commits = 50 * 1024 * 1024 / BLOB;
    for _ in 0..commits {
        let started = Instant::now();
        sql(primary.addr, &[&insert]);
        slowest = slowest.max(started.elapsed());
        peak = peak.max(primary.rss());
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{commits} commits of {BLOB} bytes: slowest {slowest:?}; VmRSS {:.1} MiB at the start, peak {:.1} MiB",
        mib(baseline),
        mib(peak)
    );
    assert!(slowest < Duration::from_secs(2), "a commit took {slowest:?} while a replica did not read");
    assert!(
        peak < baseline + 64 * 1024 * 1024,
        "the primary's VmRSS grew from {:.1} MiB to {:.1} MiB",
        mib(baseline),
        mib(peak)
    );
    // The replica that reads has everything, and the one that does not is still connected:
    // the primary answered it and kept its stream open.
    let expected = (20 + commits).to_string();
    wait_until("the reading replica following", Duration::from_secs(60), || {
        try_sql(replica.addr, &["SELECT count(*) FROM big"])
            .is_ok_and(|reply| rows(&reply, 0)[0][0]["value"].as_str() == Some(&expected))
    });
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stalled, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Its stream was held up, not sent: the primary keeps the frames it was not sent in its
    // log (SERVE.md) while the connection stays open.
    let log: u64 = std::fs::read_dir(dir.path().join("primary/default.db-wal"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!("the primary's log: {:.1} MiB", mib(log));
    assert!(log > 25 * 1024 * 1024, "the primary's log holds {log} bytes: was the stream held up at all?");
}

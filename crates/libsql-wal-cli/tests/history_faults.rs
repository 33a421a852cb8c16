//! Stored history under faults, through the real binary: `storage compact` killed (SIGKILL)
//! at random moments while garbage collection deletes early history, restores racing
//! compaction, `restore` and `storage branch` killed mid-way, and a retention window whose
//! start falls inside a stored object. Each runs against a `file://` store and against an S3
//! server on loopback (`s3s-fs`, which `.ci/test` installs; as in the testkit's
//! `storage_s3.rs`, a missing `s3s-fs` fails the test with the command to install it).
//!
//! The history is written in this process with the library (small segments, several commits
//! each, so that points fall inside segments and packs), recording after every commit its
//! frame_no, when it was made and a digest of the whole table; the binary compacts, restores
//! and branches. A restore is checked against the digest recorded for the frame_no it says it
//! landed on, and with `PRAGMA integrity_check`.
//!
//! `HISTORY_FAULTS_SEED=<seed>` replays a run (the seed is printed; `--nocapture` shows it).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libsql_sys::rusqlite::{Connection, OpenFlags};
use libsql_wal::io::StdIo;
use libsql_wal::storage::compaction::CompactionConfig;
use libsql_wal::{LibsqlWal, LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage, inspect};
use libsql_wal_testkit::bench::loopback_s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
const NS: &str = "hist";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn seed() -> u64 {
    let seed = match std::env::var("HISTORY_FAULTS_SEED") {
        Ok(s) => s.trim().parse().expect("HISTORY_FAULTS_SEED is a number"),
        Err(_) => fastrand::u64(..),
    };
    println!("seed {seed} (replay with HISTORY_FAULTS_SEED={seed})");
    seed
}

/// Where the binary and this process find the history.
struct Store {
    name: &'static str,
    /// For the binary (an S3 URL carries the endpoint and credentials in its query).
    url: String,
    /// For the writer in this process.
    storage: Storage,
    /// The directory where the objects are files named by their keys.
    objects_dir: PathBuf,
    _server: Option<S3Server>,
}

fn writer_config() -> StorageConfig {
    StorageConfig {
        retry_delay_min: Duration::from_millis(20),
        retry_delay_max: Duration::from_millis(300),
        request_timeout: Duration::from_secs(10),
        // Only the binary compacts.
        compaction: CompactionConfig { online: false, ..CompactionConfig::default() },
        ..StorageConfig::default()
    }
}

fn file_store(dir: &Path) -> Store {
    let url = format!("file://{}", dir.join("store").display());
    let storage = Storage::open_with(&url, &[], writer_config()).unwrap();
    Store { name: "file", url, storage, objects_dir: dir.join("store"), _server: None }
}

fn s3_store(dir: &Path) -> Store {
    let server = S3Server::start(&dir.join("s3"))
        .expect("s3s-fs starts (`cargo install s3s-fs@0.14.1 --features binary --locked`, .ci/test does it)");
    let prefix = "history";
    let storage = server.storage(prefix, writer_config()).unwrap();
    let url = format!(
        "s3://{BUCKET}/{prefix}?aws_endpoint=http://127.0.0.1:{}&aws_allow_http=true&aws_access_key_id={ACCESS_KEY}\
         &aws_secret_access_key={SECRET_KEY}&aws_region=us-east-1",
        server.port()
    );
    let objects_dir = dir.join("s3").join(BUCKET).join(prefix);
    Store { name: "s3", url, storage, objects_dir, _server: Some(server) }
}

/// Both stores, each in its own directory under `dir` (`HISTORY_FAULTS_STORES=file` or `s3`
/// runs one of them, to look into a failure).
fn stores(dir: &Path) -> Vec<Store> {
    let only = std::env::var("HISTORY_FAULTS_STORES").unwrap_or_default();
    let mut stores = Vec::new();
    for (name, open) in [("file", file_store as fn(&Path) -> Store), ("s3", s3_store)] {
        if only.is_empty() || only.split(',').any(|n| n == name) {
            let store_dir = dir.join(name);
            std::fs::create_dir_all(&store_dir).unwrap();
            stores.push(open(&store_dir));
        }
    }
    stores
}

/// One commit of the history.
#[derive(Clone, Debug)]
struct Step {
    frame_no: u64,
    digest: u64,
    /// Just before the commit started and once it returned (ms since the epoch): its
    /// recorded commit time lies between.
    before_ms: u64,
    after_ms: u64,
}

/// Rows of `t`, in order, and the schema: equal digests, equal content.
fn digest_of(conn: &libsql_sys::rusqlite::Connection) -> libsql_sys::rusqlite::Result<u64> {
    let mut hasher = DefaultHasher::new();
    let mut schema = conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")?;
    let mut rows = schema.query([])?;
    while let Some(row) = rows.next()? {
        (row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, Option<String>>(2)?).hash(&mut hasher);
    }
    let has_t: i64 = conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 't'", [], |r| r.get(0))?;
    if has_t == 1 {
        let mut stmt = conn.prepare("SELECT i, v FROM t ORDER BY i")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            (row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?).hash(&mut hasher);
        }
    }
    Ok(hasher.finish())
}

/// The digest and `PRAGMA integrity_check` of a restored file, read without changing it.
fn read_restored(path: &Path) -> Result<(u64, String), String> {
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let digest = digest_of(&conn).map_err(|e| format!("read {}: {e}", path.display()))?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    Ok((digest, integrity))
}

/// The database this process writes, shipped to a store.
struct Writer {
    db: PathBuf,
    manager: LibsqlWalManager,
    conn: libsql_sys::Connection<LibsqlWal>,
    next_id: i64,
    rng: fastrand::Rng,
}

impl Writer {
    fn new(dir: &Path, storage: &Storage, segment_frames_max: u32, seed: u64) -> Writer {
        let db = dir.join("writer.db");
        let config = WalConfig { segment_frames_max, segment_age_max: None, ..WalConfig::default() };
        let manager =
            LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace(NS).unwrap();
        let conn = libsql_wal::open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, v BLOB)").unwrap();
        Writer { db, manager, conn, next_id: 0, rng: fastrand::Rng::with_seed(seed) }
    }

    /// One transaction: a few inserts, maybe an update and a delete, of blobs up to `size_max`.
    fn commit(&mut self, size_max: usize) -> Step {
        self.transaction(size_max, false)
    }

    /// One transaction that mostly rewrites rows (blobs up to `size_max`): the history
    /// grows, the database hardly.
    fn churn(&mut self, size_max: usize) -> Step {
        self.transaction(size_max, true)
    }

    fn transaction(&mut self, size_max: usize, churn: bool) -> Step {
        let mut sql = String::from("BEGIN;");
        if churn && self.next_id > 3 {
            for _ in 0..self.rng.usize(2..5) {
                let i = self.rng.i64(1..self.next_id);
                sql.push_str(&format!("UPDATE t SET v = randomblob({}) WHERE i = {i};", self.rng.usize(1..size_max)));
            }
        }
        for _ in 0..self.rng.usize(1..4) {
            self.next_id += 1;
            sql.push_str(&format!(
                "INSERT INTO t VALUES ({}, randomblob({}));",
                self.next_id,
                self.rng.usize(1..size_max)
            ));
        }
        if self.next_id > 3 && self.rng.bool() {
            let i = self.rng.i64(1..self.next_id);
            sql.push_str(&format!("UPDATE t SET v = randomblob({}) WHERE i = {i};", self.rng.usize(1..size_max)));
        }
        if self.next_id > 3 && self.rng.u8(..4) == 0 {
            sql.push_str(&format!("DELETE FROM t WHERE i = {};", self.rng.i64(1..self.next_id)));
        }
        sql.push_str("COMMIT;");
        let before_ms = now_ms();
        self.conn.execute_batch(&sql).unwrap();
        let after_ms = now_ms();
        let frame_no = inspect(&self.db, &self.manager).unwrap().last_frame_no;
        Step { frame_no, digest: digest_of(&self.conn).unwrap(), before_ms, after_ms }
    }

    /// Seals the current segment and waits until every commit is in storage.
    fn flush(&self) {
        let durable = flush_to_storage(&self.db, Some(Duration::from_secs(60)), &self.manager).unwrap();
        assert!(durable.is_some(), "the writer's commits became durable");
    }
}

fn cli(args: &[&str], tmp: &Path) -> Command {
    let mut command = Command::new(BIN);
    // Compaction's and branch's scratch directories go under the test's own directory.
    command.args(args).env("TMPDIR", tmp).env_remove("LIBSQL_WAL_LOG");
    command
}

fn run(args: &[&str], tmp: &Path) -> Output {
    cli(args, tmp).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn compact_args<'a>(url: &'a str, retention: &'a str) -> Vec<&'a str> {
    vec!["storage", "compact", url, NS, "--pack-bytes-min", "1", "--snapshot-bytes-min", "1", "--retention", retention]
}

/// A failed command must say why, and no more than that: an `Error:` line, no panic.
fn assert_clear_failure(what: &str, output: &Output) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{what} succeeded");
    assert_eq!(output.status.code(), Some(1), "{what}: exit status {:?}; stderr: {stderr}", output.status);
    assert!(stderr.contains("Error: "), "{what}: no clear message: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
}

/// What a restore did: landed on the commit at this frame_no, or failed (the output).
enum Restored {
    Landed(u64),
    Failed(Output),
}

/// Restores that found an object gone (deleted by compaction) and listed again.
static RELISTED: AtomicUsize = AtomicUsize::new(0);

/// `restore` of the latest state (`point` None) or of `--frame-no N` to `out`.
fn restore(url: &str, point: Option<u64>, out: &Path, tmp: &Path) -> Restored {
    let frame_no = point.map(|n| n.to_string());
    let mut args = vec!["restore", "--storage", url, "--namespace", NS];
    if let Some(n) = &frame_no {
        args.extend(["--frame-no", n.as_str()]);
    }
    args.push(out.to_str().unwrap());
    // At info, restore says when an object vanished under it and it listed again.
    let output = cli(&args, tmp).env("LIBSQL_WAL_LOG", "libsql_wal=info").output().unwrap();
    let relisted = text(&output.stderr).matches("an object was replaced while restoring").count();
    RELISTED.fetch_add(relisted, Ordering::Relaxed);
    if !output.status.success() {
        return Restored::Failed(output);
    }
    let stdout = text(&output.stdout);
    let landed = stdout
        .split("at the commit at frame_no ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("restore printed no landing frame_no: {stdout}"));
    Restored::Landed(landed)
}

/// The step a restore to `point` must land on: the last commit at or before it.
fn expected_at(steps: &[Step], point: Option<u64>) -> Option<&Step> {
    match point {
        None => steps.last(),
        Some(n) => steps.iter().rev().find(|s| s.frame_no <= n),
    }
}

/// Nothing at `out`: no database, no log directory (a failed restore leaves nothing).
fn assert_nothing_at(out: &Path, what: &str) {
    let mut log_dir = out.as_os_str().to_owned();
    log_dir.push("-wal");
    assert!(!out.exists(), "{what}: a file was left at {}", out.display());
    assert!(!Path::new(&log_dir).exists(), "{what}: a log directory was left beside {}", out.display());
}

/// Checks a restored file against the step it landed on, then removes it.
fn check_landed(steps: &[Step], point: Option<u64>, landed: u64, out: &Path, what: &str) {
    let expected = expected_at(steps, point).unwrap_or_else(|| panic!("{what}: landed on {landed}, no such commit"));
    assert_eq!(
        landed, expected.frame_no,
        "{what}: landed on frame_no {landed}, not the commit at {}",
        expected.frame_no
    );
    let (digest, integrity) = read_restored(out).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(integrity, "ok", "{what}: integrity_check");
    assert_eq!(digest, expected.digest, "{what}: the restored content is not the content at frame_no {landed}");
    std::fs::remove_file(out).unwrap();
}

/// The latest state restores exactly, and so do the commits made after `promised_after_ms`
/// (inside the retention window of every compaction so far: at most `promised_max` of them,
/// the oldest always among them); `sample` older commits restore exactly or are refused
/// clearly as before the window. Returns (restores done, older commits refused).
fn check_history(
    store: &Store,
    steps: &[Step],
    promised_after_ms: u64,
    rng: &mut fastrand::Rng,
    (promised_max, sample): (usize, usize),
    dir: &Path,
    what: &str,
) -> (usize, usize) {
    let out = dir.join("check.db");
    let mut restores = 0;
    let mut refused = 0;
    match restore(&store.url, None, &out, dir) {
        Restored::Landed(landed) => check_landed(steps, None, landed, &out, &format!("{what}: latest")),
        Restored::Failed(output) => panic!("{what}: the latest state does not restore: {}", text(&output.stderr)),
    }
    restores += 1;
    let promised: Vec<&Step> = steps.iter().filter(|s| s.before_ms > promised_after_ms).collect();
    let older: Vec<&Step> = steps.iter().filter(|s| s.before_ms <= promised_after_ms).collect();
    let mut points: Vec<(&Step, bool)> = promised.iter().map(|s| (*s, true)).collect();
    // At most `promised_max` of them, always the oldest (the first the window would lose).
    while points.len() > promised_max.max(1) {
        points.remove(1 + rng.usize(..points.len() - 1));
    }
    for _ in 0..sample.min(older.len()) {
        points.push((older[rng.usize(..older.len())], false));
    }
    for (step, must) in points {
        let what = format!("{what}: --frame-no {}", step.frame_no);
        restores += 1;
        match restore(&store.url, Some(step.frame_no), &out, dir) {
            Restored::Landed(landed) => check_landed(steps, Some(step.frame_no), landed, &out, &what),
            Restored::Failed(output) if !must => {
                assert_clear_failure(&what, &output);
                let stderr = text(&output.stderr);
                // Older than the promise: refused before the window, or in a gap when garbage
                // collection kept an older snapshot as a later window's base (it may).
                assert!(
                    stderr.contains("before the window") || stderr.contains("is in a gap"),
                    "{what}: refused for another reason: {stderr}"
                );
                assert_nothing_at(&out, &what);
                refused += 1;
            }
            Restored::Failed(output) => {
                panic!("{what}: a commit inside the retention window does not restore: {}", text(&output.stderr))
            }
        }
    }
    (restores, refused)
}

/// `storage ls --json` of the namespace.
fn listing(store: &Store, tmp: &Path) -> serde_json::Value {
    let output = run(&["storage", "ls", &store.url, NS, "--json"], tmp);
    assert!(output.status.success(), "storage ls: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn object_keys(listing: &serde_json::Value) -> Vec<String> {
    listing["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap().to_string()).collect()
}

/// Runs `args` and SIGKILLs it after `delay` unless it finished first; whether it was killed.
fn run_killed(args: &[&str], tmp: &Path, delay: Duration) -> (bool, Output) {
    let child = cli(args, tmp).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut child = child;
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return (false, child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap();
    }
    (killed, child.wait_with_output().unwrap())
}

const RETENTION_MS: u64 = 2000;

/// `storage compact` with a short retention, SIGKILLed at random moments (new commits between
/// the runs, so there is always something to snapshot, pack and delete): after every kill the
/// latest state, and every commit inside the retention window, restore exactly; a final run
/// completes, and early history is gone.
#[test]
fn kill_9_during_compaction_loses_nothing() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    let retention = format!("{RETENTION_MS}ms");
    for store in stores(dir.path()) {
        let started = Instant::now();
        let work = dir.path().join(store.name);
        let mut writer = Writer::new(&work, &store.storage, 16, rng.u64(..));
        let mut steps = Vec::new();
        // Some MiB first (so that a compaction, which rebuilds and uploads the latest state,
        // takes long enough to be killed in the middle), then many small segments, several
        // commits each, spread over time.
        for i in 0..24 {
            steps.push(writer.commit(if i < 12 { 100_000 } else { 3000 }));
            if rng.u8(..3) == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        writer.flush();
        // Every request to the loopback S3 server costs ~40 ms (its replies wait for a
        // delayed ACK): fewer checks there.
        let checks = if store.name == "s3" { (3, 1) } else { (6, 2) };
        let output = run(&compact_args(&store.url, &retention), &work);
        assert!(output.status.success(), "the first compaction: {}", text(&output.stderr));
        let (mut kills, mut finished, mut restores, mut refused) = (0, 0, 0, 0);
        let mut typical = Duration::from_millis(300);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..15 {
            // A segment of a few commits spread over ~200 ms, so the window's start falls
            // inside segments and packs as often as between them.
            let round_started = Instant::now();
            // Rows rewritten: enough history for a snapshot to be due at every run.
            for _ in 0..4 {
                steps.push(writer.churn(60_000));
                std::thread::sleep(Duration::from_millis(50));
            }
            writer.flush();
            let spawned_ms = now_ms();
            // Killed at a random moment of a run (about as long as the last one that finished).
            let delay = typical.mul_f64(rng.f64() * 1.1);
            let spawned = Instant::now();
            let (killed, output) = run_killed(&compact_args(&store.url, &retention), &work, delay);
            if killed {
                kills += 1;
                // Some runs must finish too (or packs never replace segments).
                typical = typical.mul_f64(1.3).min(Duration::from_secs(3));
            } else {
                assert!(output.status.success(), "compaction failed: {}", text(&output.stderr));
                typical = spawned.elapsed();
                finished += 1;
            }
            let what = format!("{} round {round} (compaction killed after {delay:?}: {killed})", store.name);
            // Commits made after the window's start of any compaction so far are promised.
            let promised_after = now_ms().saturating_sub(RETENTION_MS).max(spawned_ms.saturating_sub(RETENTION_MS));
            let checked = Instant::now();
            let (r, f) = check_history(&store, &steps, promised_after, &mut rng, checks, &work, &what);
            restores += r;
            refused += f;
            seen.extend(object_keys(&listing(&store, &work)));
            if round % 4 == 3 {
                // Now and then a run completes, as the next one after a crash would: the
                // history killed runs left uncompacted does not pile up.
                let completed = Instant::now();
                let output = run(&compact_args(&store.url, &retention), &work);
                assert!(output.status.success(), "compaction failed: {}", text(&output.stderr));
                typical = completed.elapsed();
            }
            println!("{what}: {r} restores in {:?}, round {:?}", checked.elapsed(), round_started.elapsed());
        }
        let output = run(&compact_args(&store.url, &retention), &work);
        assert!(output.status.success(), "the final compaction: {}", text(&output.stderr));
        let promised_after = now_ms().saturating_sub(RETENTION_MS);
        let (r, f) = check_history(
            &store,
            &steps,
            promised_after,
            &mut rng,
            (usize::MAX, 5),
            &work,
            &format!("{}: final", store.name),
        );
        restores += r;
        refused += f;
        let listing = listing(&store, &work);
        let first = listing["first_frame_no"].as_u64().unwrap();
        assert!(first > steps[0].frame_no, "{}: early history was collected: {listing}", store.name);
        assert_eq!(listing["durable_frame_no"].as_u64(), Some(steps.last().unwrap().frame_no));
        assert!(seen.iter().any(|k| k.contains("/packs/")), "{}: packs were written: {seen:?}", store.name);
        let base = format!("{NS}/snapshots/{:020}-", 0);
        let snapshots = seen.iter().filter(|k| k.contains("/snapshots/") && !k.starts_with(&base)).count();
        assert!(snapshots > 0, "{}: snapshots were written: {seen:?}", store.name);
        println!(
            "{}: {} commits, {kills} compactions killed, {finished} finished before the kill (the last in \
             {typical:?}), {restores} restores ({refused} old points refused as before the window), window now from \
             frame {first}, {:?}",
            store.name,
            steps.len(),
            started.elapsed()
        );
        assert!(kills >= 5, "{}: most compactions were killed mid-way ({kills} of 15)", store.name);
    }
}

/// One thread compacts in a loop (new commits before each run, a short retention: objects
/// are deleted all the time) while another restores the latest state and points of the
/// history in a loop: every restore is exact for the frame_no it reports, or fails with a
/// clear message and leaves nothing at its output.
#[test]
fn a_restore_racing_garbage_collection_is_exact_or_fails_clearly() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    let relisted_before = RELISTED.load(Ordering::Relaxed);
    for store in stores(dir.path()) {
        let started = Instant::now();
        let work = dir.path().join(store.name);
        let mut writer = Writer::new(&work, &store.storage, 8, rng.u64(..));
        let steps = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..20 {
            let step = writer.commit(3000);
            steps.lock().unwrap().push(step);
        }
        writer.flush();
        let done = AtomicBool::new(false);
        let deleted = AtomicUsize::new(0);
        let compactions = AtomicUsize::new(0);
        let (mut exact, mut failed, mut gone_messages) = (0usize, 0usize, 0usize);
        let retention = "1s".to_string();
        let compactor_seed = rng.u64(..);
        std::thread::scope(|scope| {
            let compactor = scope.spawn(|| {
                let mut rng = fastrand::Rng::with_seed(compactor_seed);
                let deadline = Instant::now() + Duration::from_secs(8);
                while Instant::now() < deadline {
                    for _ in 0..rng.usize(1..5) {
                        // Recorded before the restorer can see it in storage.
                        let mut steps = steps.lock().unwrap();
                        let step = writer.commit(3000);
                        steps.push(step);
                    }
                    writer.flush();
                    let output = run(&compact_args(&store.url, &retention), &work);
                    let stdout = text(&output.stdout);
                    assert!(output.status.success(), "compaction failed: {} {stdout}", text(&output.stderr));
                    compactions.fetch_add(1, Ordering::Relaxed);
                    let n: usize = stdout
                        .split("pack(s) written; ")
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("compaction printed {stdout}"));
                    deleted.fetch_add(n, Ordering::Relaxed);
                }
                done.store(true, Ordering::Relaxed);
            });
            let out = work.join("raced.db");
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) {
                round += 1;
                let point = {
                    let steps = steps.lock().unwrap();
                    match rng.u8(..3) {
                        0 => None,
                        _ => Some(steps[rng.usize(..steps.len())].frame_no),
                    }
                };
                let what = format!("{} restore {round} of {point:?}", store.name);
                match restore(&store.url, point, &out, &work) {
                    Restored::Landed(landed) => {
                        let steps = steps.lock().unwrap().clone();
                        if point.is_none() {
                            // The latest state as of some moment during the restore.
                            let step = steps.iter().find(|s| s.frame_no == landed);
                            let step = step.unwrap_or_else(|| panic!("{what}: landed on {landed}, no commit of ours"));
                            let (digest, integrity) = read_restored(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
                            assert_eq!(integrity, "ok", "{what}");
                            assert_eq!(digest, step.digest, "{what}: not the content at frame_no {landed}");
                            std::fs::remove_file(&out).unwrap();
                        } else {
                            check_landed(&steps, point, landed, &out, &what);
                        }
                        exact += 1;
                    }
                    Restored::Failed(output) => {
                        assert_clear_failure(&what, &output);
                        assert_nothing_at(&out, &what);
                        let stderr = text(&output.stderr);
                        assert!(
                            point.is_some() || stderr.contains("deleted while it was being read"),
                            "{what}: {stderr}"
                        );
                        gone_messages += stderr.contains("deleted while it was being read") as usize;
                        failed += 1;
                    }
                }
            }
            compactor.join().unwrap();
        });
        let deleted = deleted.into_inner();
        println!(
            "{}: {} compactions deleting {deleted} objects, {exact} exact restores, {failed} refused ({gone_messages} \
             after objects vanished 5 times); restores in this process found an object gone {} times so far, {:?}",
            store.name,
            compactions.into_inner(),
            RELISTED.load(Ordering::Relaxed),
            started.elapsed()
        );
        assert!(deleted > 0, "{}: garbage collection deleted objects during the race", store.name);
        assert!(exact >= 10, "{}: restores succeeded while objects were deleted ({exact})", store.name);
        // Once the race is over the latest state restores exactly.
        let steps = steps.lock().unwrap().clone();
        let (r, _) =
            check_history(&store, &steps, u64::MAX, &mut rng, (0, 0), &work, &format!("{}: after", store.name));
        assert_eq!(r, 1);
    }
    // The race was real: restores found objects deleted under them (and listed again).
    assert!(RELISTED.load(Ordering::Relaxed) > relisted_before, "no restore ever met a deleted object");
}

/// Scratch directories restores to `out` made beside it: (`restoring-` or `removing-`,
/// `preparing-`).
fn scratch_dirs(out: &Path) -> (usize, usize) {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let (mut restoring, mut preparing) = (0, 0);
    for entry in std::fs::read_dir(out.parent().unwrap()).unwrap() {
        let entry = entry.unwrap().file_name().to_string_lossy().into_owned();
        restoring += entry.starts_with(&format!(".{name}.restoring-")) as usize;
        restoring += entry.starts_with(&format!(".{name}.removing-")) as usize;
        preparing += entry.starts_with(&format!(".{name}.preparing-")) as usize;
    }
    (restoring, preparing)
}

/// `restore` of a namespace of some tens of MiB, and `storage branch`, SIGKILLed mid-way:
/// nothing is left at the output, a restore to the same output then succeeds (and cleans up
/// what the killed ones left), a killed branch is either whole or absent and can be made
/// again or removed, and the namespace can be removed once its branches are.
#[test]
fn kill_9_during_restore_and_branch_leave_nothing_that_breaks() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let started = Instant::now();
        let work = dir.path().join(store.name);
        let mut writer = Writer::new(&work, &store.storage, 256, rng.u64(..));
        let mut steps = Vec::new();
        for _ in 0..60 {
            steps.push(writer.commit(400_000));
        }
        writer.flush();
        let out = work.join("big.db");
        let timed = Instant::now();
        match restore(&store.url, None, &out, &work) {
            Restored::Landed(landed) => check_landed(&steps, None, landed, &out, "a whole restore"),
            Restored::Failed(output) => panic!("restore: {}", text(&output.stderr)),
        }
        let whole = timed.elapsed();
        let (mut killed, mut killed_after_link) = (0, 0);
        for round in 0..8 {
            let delay = whole.mul_f64(rng.f64() * 0.7);
            let (was_killed, output) = run_killed(
                &["restore", "--storage", &store.url, "--namespace", NS, out.to_str().unwrap()],
                &work,
                delay,
            );
            let what = format!("{} restore killed after {delay:?} (round {round})", store.name);
            if was_killed && out.exists() {
                // Killed after the database was linked in (while cleaning up): it is whole.
                let landed = steps.last().unwrap().frame_no;
                check_landed(&steps, None, landed, &out, &format!("{what}, after its link"));
                killed_after_link += 1;
            } else if was_killed {
                killed += 1;
                assert_nothing_at(&out, &what);
            } else {
                assert!(output.status.success(), "{what}: {}", text(&output.stderr));
                std::fs::remove_file(&out).unwrap();
            }
        }
        let left = scratch_dirs(&out);
        match restore(&store.url, None, &out, &work) {
            Restored::Landed(landed) => check_landed(&steps, None, landed, &out, "a restore after the kills"),
            Restored::Failed(output) => panic!("a restore after the kills: {}", text(&output.stderr)),
        }
        let after = scratch_dirs(&out);
        assert_eq!(
            after.0, 0,
            "{}: the rerun removed the scratch directories of killed restores ({left:?} before)",
            store.name
        );
        assert!(after.1 <= left.1, "{}", store.name);
        println!(
            "{}: restore of {whole:?} killed {killed} times before its database was whole, {killed_after_link} after; \
             left {left:?} scratch directories",
            store.name
        );
        assert!(killed >= 3, "{}: restores were killed mid-way ({killed} of 8)", store.name);

        // Branches killed mid-way, at points inside segments.
        let timed = Instant::now();
        let point = steps[steps.len() / 2].frame_no.to_string();
        let output = run(&["storage", "branch", &store.url, NS, "--frame-no", &point, "timed"], &work);
        assert!(output.status.success(), "branch: {}", text(&output.stderr));
        let branch_time = timed.elapsed();
        let mut branches = vec!["timed".to_string()];
        let mut killed = 0;
        for round in 0..8 {
            let child = format!("child{round}");
            let step = &steps[rng.usize(1..steps.len())];
            let point = (step.frame_no - rng.u64(..2)).to_string();
            let args = ["storage", "branch", &store.url, NS, "--frame-no", &point, &child];
            let delay = branch_time.mul_f64(rng.f64());
            let (was_killed, output) = run_killed(&args, &work, delay);
            killed += was_killed as usize;
            if !was_killed {
                assert!(output.status.success(), "branch: {}", text(&output.stderr));
            }
            let child_out = work.join(format!("{child}.db"));
            let rerun = run(&args, &work);
            if rerun.status.success() {
                assert!(was_killed, "a second branch over a whole one was refused");
            } else {
                assert_clear_failure("a branch over a whole one", &rerun);
                assert!(text(&rerun.stderr).contains("is not empty"), "{}", text(&rerun.stderr));
            }
            // Whole now: the branch restores as the parent at its point.
            let output =
                run(&["restore", "--storage", &store.url, "--namespace", &child, child_out.to_str().unwrap()], &work);
            assert!(output.status.success(), "restore of {child}: {}", text(&output.stderr));
            let expected = expected_at(&steps, Some(point.parse().unwrap())).unwrap();
            let (digest, integrity) = read_restored(&child_out).unwrap();
            assert_eq!((digest, integrity.as_str()), (expected.digest, "ok"), "{child} at {point}");
            std::fs::remove_file(&child_out).unwrap();
            branches.push(child);
        }
        // The parent still restores, at the latest state and at the branch points.
        let (r, _) =
            check_history(&store, &steps, 0, &mut rng, (4, 0), &work, &format!("{}: after branches", store.name));
        assert!(r > 1);
        for child in &branches {
            let output = run(&["storage", "rm", &store.url, child], &work);
            assert!(output.status.success(), "rm {child}: {}", text(&output.stderr));
        }
        drop(writer);
        let output = run(&["storage", "rm", &store.url, NS], &work);
        assert!(output.status.success(), "rm {NS} once its branches are gone: {}", text(&output.stderr));
        println!("{}: branch of {branch_time:?} killed {killed} times; {:?} in all", store.name, started.elapsed());
    }
}

/// A branch killed between its two writes leaves the parent's marker without the branch's
/// origin (the marker is written first). Removing the branch that never came to be, and
/// then the parent, must work: a marker nothing answers must not pin the parent forever.
#[test]
fn a_branch_killed_between_its_marker_and_its_origin_does_not_pin_the_parent() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let work = dir.path().join(store.name);
        let mut writer = Writer::new(&work, &store.storage, 8, rng.u64(..));
        let steps: Vec<Step> = (0..10).map(|_| writer.commit(3000)).collect();
        writer.flush();
        drop(writer);
        // What `storage branch` has written when killed after its first PUT.
        let marker = libsql_wal::storage::layout::branch_marker_key(NS, steps[4].frame_no, "halfway");
        put_empty(&store, &marker);
        let output =
            run(&["storage", "branch", &store.url, NS, "--frame-no", &steps[6].frame_no.to_string(), "other"], &work);
        assert!(output.status.success(), "{}", text(&output.stderr));
        // The branch that never came to be is removed; the whole one too; then the parent.
        for child in ["halfway", "other"] {
            let output = run(&["storage", "rm", &store.url, child], &work);
            assert!(output.status.success(), "rm {child}: {}", text(&output.stderr));
        }
        let output = run(&["storage", "rm", &store.url, NS], &work);
        assert!(output.status.success(), "{}: rm {NS}: {}", store.name, text(&output.stderr));
        let listing = listing(&store, &work);
        assert!(object_keys(&listing).is_empty(), "{listing}");
    }
}

/// Puts an empty object at `key` behind the store's back: both stores keep an object as a
/// file named by its key (s3s-fs serves a directory).
fn put_empty(store: &Store, key: &str) {
    let path = store.objects_dir.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap();
}

/// Garbage collection when the retention window starts inside a stored segment (its commits
/// straddle the window's start) whose end a snapshot also holds: the commits after the start
/// are promised, so that segment must stay; and a restore to a time inside it lands on the
/// last commit at or before that time, not at the snapshot after it.
#[test]
fn a_window_starting_inside_a_segment_keeps_every_commit_after_its_start() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let work = dir.path().join(store.name);
        // One segment of ten commits 60 ms apart, and a snapshot at its end.
        let mut writer = Writer::new(&work, &store.storage, u32::MAX, rng.u64(..));
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(writer.commit(3000));
            std::thread::sleep(Duration::from_millis(60));
        }
        writer.flush();
        let output = run(&compact_args(&store.url, "7d"), &work);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let keys = object_keys(&listing(&store, &work));
        assert!(keys.iter().any(|k| k.contains("/snapshots/")), "{keys:?}");
        // A time between two commits of the segment restores the first of them.
        let out = work.join("t.db");
        for i in [2, 5, 8] {
            let t = (steps[i].after_ms + steps[i + 1].before_ms) / 2;
            let when = libsql_wal::storage::layout::format_unix_ms(t);
            let output = run(
                &["restore", "--storage", &store.url, "--namespace", NS, "--timestamp", &when, out.to_str().unwrap()],
                &work,
            );
            assert!(output.status.success(), "--timestamp {when}: {}", text(&output.stderr));
            let (digest, _) = read_restored(&out).unwrap();
            assert_eq!(
                digest,
                steps[i].digest,
                "{}: --timestamp {when} (between commits {i} and {}): {}",
                store.name,
                i + 1,
                text(&output.stdout)
            );
            std::fs::remove_file(&out).unwrap();
        }
        // Another segment, then a compaction whose window starts between commits 4 and 5.
        for _ in 0..3 {
            steps.push(writer.commit(3000));
        }
        writer.flush();
        let start = (steps[4].after_ms + steps[5].before_ms) / 2;
        let retention = now_ms() - start;
        let output = run(&compact_args(&store.url, &format!("{retention}ms")), &work);
        assert!(output.status.success(), "{}", text(&output.stderr));
        for step in &steps[4..] {
            let what =
                format!("{}: --frame-no {} after a window starting inside its segment", store.name, step.frame_no);
            match restore(&store.url, Some(step.frame_no), &out, &work) {
                Restored::Landed(landed) => check_landed(&steps, Some(step.frame_no), landed, &out, &what),
                Restored::Failed(output) => panic!("{what}: {}", text(&output.stderr)),
            }
        }
    }
}

/// A pack of segments from both sides of a snapshot (the snapshot written first, the
/// segments around it packed by a later run): a restore from the snapshot takes the pack,
/// whose first segments end before the snapshot, and must skip them (it applied them, and
/// refused: "frame_no … is outside the segment's frames").
#[test]
fn a_pack_holding_segments_from_before_a_snapshot_restores_from_it() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()) {
        let work = dir.path().join(store.name);
        let mut writer = Writer::new(&work, &store.storage, 8, rng.u64(..));
        let mut steps = Vec::new();
        let compact = |pack_min: &str, snapshot_min: &str| {
            let args = [
                "storage",
                "compact",
                &store.url,
                NS,
                "--pack-bytes-min",
                pack_min,
                "--snapshot-bytes-min",
                snapshot_min,
            ];
            let output = run(&args, &work);
            assert!(output.status.success(), "{}", text(&output.stderr));
            text(&output.stdout)
        };
        for _ in 0..6 {
            steps.push(writer.commit(3000));
        }
        writer.flush();
        let snapshot_at = steps.last().unwrap().frame_no;
        assert!(compact("1000000000", "1").contains("1 snapshot(s), 0 pack(s)"));
        for _ in 0..6 {
            steps.push(writer.churn(3000));
        }
        writer.flush();
        let packed = compact("1", "1000000000");
        assert!(packed.contains("0 snapshot(s), 1 pack(s)"), "{packed}");
        let keys = object_keys(&listing(&store, &work));
        let pack = keys.iter().find(|k| k.contains("/packs/")).unwrap();
        assert!(pack.contains("/00000000000000000001-"), "the pack starts before the snapshot: {keys:?}");
        assert!(keys.iter().any(|k| k.contains(&format!("/snapshots/{snapshot_at:020}-"))), "{keys:?}");
        let out = work.join("out.db");
        for point in [None, Some(snapshot_at + 1), Some(steps[8].frame_no), Some(steps[3].frame_no)] {
            let what = format!("{}: restore of {point:?} through {pack}", store.name);
            match restore(&store.url, point, &out, &work) {
                Restored::Landed(landed) => check_landed(&steps, point, landed, &out, &what),
                Restored::Failed(output) => panic!("{what}: {}", text(&output.stderr)),
            }
        }
    }
}

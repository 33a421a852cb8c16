//! Durable storage with the embedded stores (local directory, memory): restore equals the
//! original page by page, checkpoints wait for durability (invariant 7), segments left behind
//! are uploaded by the next process, storage added to an existing database starts from a
//! snapshot, a namespace with another history is refused, damaged objects are refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::storage::layout::ObjectKind;
use libsql_wal::{
    LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage, inspect, open_connection, restore,
    wait_durable,
};

use libsql_wal_testkit::support as common;

fn fast() -> StorageConfig {
    StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        ..StorageConfig::default()
    }
}

fn local_store(dir: &Path) -> Storage {
    Storage::open_with(&format!("file://{}", dir.display()), &[], fast()).unwrap()
}

/// An S3 endpoint nobody listens on: every request fails at once.
fn unreachable_store() -> Storage {
    let options = [
        ("aws_endpoint", "http://127.0.0.1:9"),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ];
    Storage::open_with("s3://bucket/prefix", &options, fast()).unwrap()
}

fn small_segments() -> WalConfig {
    WalConfig { segment_frames_max: 8, segment_age_max: None, ..Default::default() }
}

fn wal_manager(storage: Option<Storage>, namespace: &str) -> LibsqlWalManager {
    let manager = LibsqlWalManager::new(StdIo::shared(), small_segments());
    match storage {
        Some(storage) => manager.with_storage(storage).with_namespace(namespace).unwrap(),
        None => manager,
    }
}

/// Transactions of varied sizes, updates and deletes, so pages are rewritten and freed.
fn write(conn: &Connection, from: i64, to: i64) {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    for i in from..to {
        conn.execute("INSERT INTO t VALUES (?1, zeroblob(?2))", (i, (i * 37) % 3000)).unwrap();
        if i % 10 == 0 {
            conn.execute("UPDATE t SET v = randomblob(100) WHERE id % 7 = ?1", [i % 7]).unwrap();
        }
        if i % 25 == 0 {
            conn.execute("DELETE FROM t WHERE id % 5 = 0 AND id < ?1", [i - 10]).unwrap();
        }
    }
}

fn rows(conn: &Connection) -> (i64, i64) {
    conn.query_row("SELECT count(*), coalesce(sum(length(v)), 0) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
}

fn segment_files(db: &Path) -> usize {
    let dir = PathBuf::from(format!("{}-wal", db.display()));
    std::fs::read_dir(dir)
        .map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg")).count())
}

fn stock_integrity(db: &Path) -> String {
    let out = Command::new("sqlite3").arg(db).arg("PRAGMA integrity_check").output().expect("sqlite3 is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn restore_to(storage: &Storage, namespace: &str, out: &Path) -> libsql_wal::RestoreReport {
    let mut calls = 0;
    let report = restore(storage, namespace, out, &mut |done, total| {
        assert!(done <= total);
        calls += 1;
    })
    .unwrap();
    assert!(calls > 0, "progress was reported");
    report
}

#[test]
fn restore_equals_the_original_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let storage = local_store(&dir.path().join("store"));
    let manager = wal_manager(Some(storage.clone()), "shop");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 400);
    let expected = rows(&conn);
    let durable = flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap();
    let last = inspect(&db, &manager).unwrap().last_frame_no;
    assert_eq!(durable, Some(last), "flush makes every commit durable");
    drop(conn);
    // Everything was durable, so the last close checkpointed it all: the file is the
    // database at the durable frame_no.
    assert_eq!(segment_files(&db), 0);

    let out = dir.path().join("restored.db");
    let report = restore_to(&storage, "shop", &out);
    assert_eq!(report.frame_no, last);
    assert!(report.objects > 10, "many segments: {report:?}");
    let original = std::fs::read(&db).unwrap();
    let restored = std::fs::read(&out).unwrap();
    assert_eq!(original.len(), restored.len());
    for (i, (a, b)) in original.chunks(4096).zip(restored.chunks(4096)).enumerate() {
        assert!(a == b, "page {} differs", i + 1);
    }
    assert_eq!(stock_integrity(&out), "ok");
    let conn = Connection::open(&out).unwrap();
    assert_eq!(rows(&conn), expected);
}

#[test]
fn checkpoints_wait_for_storage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gate.db");
    let manager = wal_manager(Some(unreachable_store()), "gate");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 100);
    let expected = rows(&conn);
    let db_len_before = std::fs::metadata(&db).unwrap().len();
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!((busy, done), (1, 0), "nothing durable, nothing checkpointed (log {log})");
    assert!(segment_files(&db) > 5);
    assert_eq!(std::fs::metadata(&db).unwrap().len(), db_len_before, "the database file was not written");
    // The upload task fails against the dead endpoint in its own time: wait for its first
    // failure to be counted (a fixed 300 ms was a guess that a loaded machine can miss).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let durability = loop {
        let durability = inspect(&db, &manager).unwrap().durability.clone().unwrap();
        if durability.failures > 0 || std::time::Instant::now() > deadline {
            break durability;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(durability.durable_frame_no, None);
    assert!(durability.failures > 0 && durability.last_error.is_some(), "{durability:?}");
    assert!(!wait_durable(&db, 1, Some(Duration::from_millis(50)), &manager).unwrap());
    drop(conn);
    let kept = segment_files(&db);
    assert!(kept > 5, "the last close kept what storage does not have");

    // A process without storage keeps the gate: the log says storage was configured.
    let plain = wal_manager(None, "gate");
    let conn = open_connection(&db, &plain).unwrap();
    let (busy, _, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!((busy, done), (1, 0));
    assert_eq!(rows(&conn), expected);
    drop(conn);
    assert_eq!(segment_files(&db), kept);

    // The next process with working storage uploads what was left, then checkpoints.
    let storage = local_store(&dir.path().join("store"));
    let good = wal_manager(Some(storage.clone()), "gate");
    let conn = open_connection(&db, &good).unwrap();
    let last = inspect(&db, &good).unwrap().last_frame_no;
    assert!(wait_durable(&db, last, Some(Duration::from_secs(60)), &good).unwrap());
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!(busy, 0);
    assert_eq!(segment_files(&db), 0);
    drop(conn);
    let out = dir.path().join("restored.db");
    assert_eq!(restore_to(&storage, "gate", &out).frame_no, last);
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
    assert_eq!(stock_integrity(&out), "ok");
}

/// Listing works but every segment upload fails (the namespace's `segments` is a file in a
/// `file://` store): the backoff grows from one failed upload to the next. Before, the
/// listing between two attempts counted as success and reset it: about 10 attempts a second,
/// each sending a whole segment, forever.
#[test]
fn failed_uploads_back_off_even_when_listing_works() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(store_dir.join("ns")).unwrap();
    std::fs::write(store_dir.join("ns").join("segments"), b"in the way").unwrap();
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(50),
        retry_delay_max: Duration::from_secs(5),
        ..StorageConfig::default()
    };
    let storage = Storage::open_with(&format!("file://{}", store_dir.display()), &[], config).unwrap();
    let db = dir.path().join("backoff.db");
    let manager = wal_manager(Some(storage), "ns");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 50);
    let failures = || inspect(&db, &manager).unwrap().durability.unwrap().failures;
    common::wait_until("a first failed upload", Duration::from_secs(30), || failures() > 0);
    let first = failures();
    std::thread::sleep(Duration::from_millis(1500));
    // Growing delays (25..50, 50..100, 100..200, 200..400, 400..800 ms) allow about six in
    // 1.5 s; a reset backoff makes 30 or more. A slower machine only makes fewer.
    let more = failures() - first;
    assert!(more <= 12, "{more} failed uploads in 1.5 s: the backoff does not grow");
    drop(conn);
}

#[test]
fn storage_added_to_an_existing_database_starts_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let conn = open_connection(&db, &wal_manager(None, "old")).unwrap();
    write(&conn, 0, 200);
    drop(conn); // Checkpointed into the file: its frames are in no segment any more.
    assert_eq!(segment_files(&db), 0);

    let storage = local_store(&dir.path().join("store"));
    let manager = wal_manager(Some(storage.clone()), "old");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 200, 260);
    let expected = rows(&conn);
    let last = flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);
    let objects = storage.list("old").unwrap();
    assert!(objects.iter().any(|o| matches!(o.kind, ObjectKind::Snapshot { frame_no, .. } if frame_no > 0)));

    let out = dir.path().join("restored.db");
    assert_eq!(restore_to(&storage, "old", &out).frame_no, last);
    assert_eq!(std::fs::read(&db).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
}

#[test]
fn a_namespace_with_another_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let first = dir.path().join("first.db");
    let manager = wal_manager(Some(storage.clone()), "shared-name");
    let conn = open_connection(&first, &manager).unwrap();
    write(&conn, 0, 100);
    flush_to_storage(&first, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);
    let before = storage.list("shared-name").unwrap();

    // A new database claiming the same namespace is behind it: not the same history.
    let second = dir.path().join("second.db");
    let conn = open_connection(&second, &manager).unwrap();
    write(&conn, 0, 5);
    // Refused at once with the reason (a diverged log never becomes durable), not a timeout.
    let error = flush_to_storage(&second, Some(Duration::from_secs(60)), &manager).unwrap_err().to_string();
    assert!(error.contains("another database's history"), "{error}");
    let durability = inspect(&second, &manager).unwrap().durability.unwrap();
    assert!(durability.diverged.as_deref().unwrap_or("").contains("another database's history"), "{durability:?}");
    drop(conn);
    assert_eq!(storage.list("shared-name").unwrap(), before, "nothing of the second database was uploaded");
    assert!(segment_files(&second) > 0, "and nothing of it was checkpointed away");
}

/// A database `ns.db` of 50 rows, all durable in namespace `ns` of a local store: (its
/// directory, the store's directory, the store, the database).
fn namespace_with_fifty_rows() -> (tempfile::TempDir, PathBuf, Storage, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let storage = local_store(&store_dir);
    let db = dir.path().join("ns.db");
    let manager = wal_manager(Some(storage.clone()), "ns");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 50);
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);
    (dir, store_dir, storage, db)
}

#[test]
fn damaged_or_missing_objects_fail_the_restore_cleanly() {
    let (dir, store_dir, storage, _db) = namespace_with_fifty_rows();

    let out = dir.path().join("out.db");
    std::fs::write(&out, b"keep me").unwrap();
    let error = restore(&storage, "ns", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("exists"), "{error}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    std::fs::remove_file(&out).unwrap();

    let error = restore(&storage, "nobody", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("holds nothing"), "{error}");
    let error = restore(&storage, "../escape", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("invalid namespace"), "{error}");

    // Flip one byte in the middle of a stored segment: its frame checksum chain breaks.
    let segment =
        storage.list("ns").unwrap().into_iter().find(|o| matches!(o.kind, ObjectKind::Segment { .. })).unwrap();
    let path = store_dir.join(&segment.key);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    let error = restore(&storage, "ns", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("corrupt"), "{error}");
    assert!(!out.exists(), "a failed restore leaves no database behind");
}

/// Sets the database size a sealed segment file claims (its last commit frame's
/// `size_after`, and its trailer's), recomputing that frame's chained checksum and the
/// trailer's: only the size is wrong, every check of the format passes.
fn forge_segment_size(bytes: &mut [u8], pages: u32) {
    use libsql_wal::format::{FRAME_HEADER_SIZE, FRAME_SIZE, SEAL_TRAILER_SIZE, SEGMENT_HEADER_SIZE, chain_seed};
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (start, salt, prev_chain) = (u64_at(bytes, 16), u32_at(bytes, 24), u32_at(bytes, 40));
    let trailer = bytes.len() - SEAL_TRAILER_SIZE;
    let frames = (u64_at(bytes, trailer + 16) - start + 1) as usize;
    let last = SEGMENT_HEADER_SIZE + (frames - 1) * FRAME_SIZE;
    let sum_at = FRAME_HEADER_SIZE - 4; // the checksum ends the frame header
    let previous = if frames == 1 { chain_seed(salt, prev_chain) } else { u32_at(bytes, last - FRAME_SIZE + sum_at) };
    assert_ne!(u32_at(bytes, last + 4), 0, "the last frame is a commit frame");
    bytes[last + 4..last + 8].copy_from_slice(&pages.to_le_bytes());
    let checksum = crc32c::crc32c_append(
        crc32c::crc32c_append(previous, &bytes[last..last + sum_at]),
        &bytes[last + FRAME_HEADER_SIZE..last + FRAME_SIZE],
    );
    bytes[last + sum_at..last + FRAME_HEADER_SIZE].copy_from_slice(&checksum.to_le_bytes());
    bytes[trailer + 40..trailer + 44].copy_from_slice(&pages.to_le_bytes());
    let checksum = crc32c::crc32c_append(salt, &bytes[trailer..trailer + 44]);
    bytes[trailer + 44..trailer + 48].copy_from_slice(&checksum.to_le_bytes());
}

/// A stored object whose size field claims a huge database (checksums recomputed, so only
/// the size is wrong) is refused, naming it, before anything appears at OUT; before, restore
/// made OUT a sparse file of that size. A snapshot claiming more pages than it holds is
/// refused by its length.
#[test]
fn restore_refuses_a_forged_database_size() {
    let (dir, store_dir, storage, db) = namespace_with_fifty_rows();
    let real_pages = std::fs::metadata(&db).unwrap().len() / 4096;

    let last = storage.chain("ns").unwrap().segments.last().unwrap().clone();
    let path = store_dir.join(&last.key);
    let mut bytes = std::fs::read(&path).unwrap();
    forge_segment_size(&mut bytes, 1 << 30); // 4 TiB
    std::fs::write(&path, bytes).unwrap();

    let out = dir.path().join("out.db");
    let error = restore(&storage, "ns", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains(&last.key) && error.contains("1073741824 pages"), "{error}");
    assert!(error.contains(&format!("up to {real_pages} only")), "{error}");
    assert!(!out.exists(), "a refused restore leaves nothing at OUT");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("restoring")), "scratch left: {left:?}");

    // A snapshot whose header claims more pages than it holds (header checksum recomputed).
    let old = dir.path().join("old.db");
    let conn = open_connection(&old, &wal_manager(None, "old")).unwrap();
    write(&conn, 0, 20);
    drop(conn);
    let manager = wal_manager(Some(storage.clone()), "old");
    let conn = open_connection(&old, &manager).unwrap();
    flush_to_storage(&old, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);
    let snapshot = storage.chain("old").unwrap().snapshot.unwrap();
    let path = store_dir.join(&snapshot.key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[24..28].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let checksum = crc32c::crc32c(&bytes[..60]);
    bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let error = restore(&storage, "old", &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains(&snapshot.key) && error.contains("1073741824 pages"), "{error}");
    assert!(!out.exists(), "a refused restore leaves nothing at OUT");
}

/// A log shipped to one store keeps counting there: opened with another store or namespace
/// (a mistyped URL) it is refused, naming the problem and the way to move it, and nothing is
/// uploaded or changed; `with_move_to_store(true)` moves it deliberately.
#[test]
fn a_log_shipped_to_one_store_is_refused_by_another_unless_moved() {
    let dir = tempfile::tempdir().unwrap();
    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    let db = dir.path().join("shop.db");
    let config = WalConfig { checkpoint_on_close: false, ..small_segments() };
    let manager = |store: &Path, namespace: &str| {
        LibsqlWalManager::new(StdIo::shared(), config.clone())
            .with_storage(local_store(store))
            .with_namespace(namespace)
            .unwrap()
    };
    let shipped = manager(&store_a, "shop");
    let conn = open_connection(&db, &shipped).unwrap();
    write(&conn, 0, 40);
    let durable = flush_to_storage(&db, Some(Duration::from_secs(60)), &shipped).unwrap().unwrap();
    drop(conn);
    let log_dir = db.with_file_name("shop.db-wal");
    assert!(log_dir.join("durable").is_file(), "the log keeps its durable record");
    // More commits without storage, full segments left unsealed: what an open's recovery
    // would change (it seals them).
    let local = WalConfig { defer_seals: true, ..config.clone() };
    let conn = open_connection(&db, &LibsqlWalManager::new(StdIo::shared(), local)).unwrap();
    write(&conn, 40, 60);
    let expected = rows(&conn);
    drop(conn);

    let before = common::tree_state(&[dir.path()]);
    for (store, namespace) in [(&store_b, "shop"), (&store_a, "shop2")] {
        let error = open_connection(&db, &manager(store, namespace)).err().expect("refused").to_string();
        assert!(error.contains("shipped to another store or namespace"), "{error}");
        assert!(error.contains(&format!("up to frame {durable}")), "{error}");
        assert!(error.contains("--move-to-store"), "{error}");
        common::assert_same_tree("a refused open", &before, &common::tree_state(&[dir.path()]));
    }
    assert!(!store_b.exists(), "something was uploaded to the mistyped store");
    assert!(local_store(&store_a).list("shop2").unwrap().is_empty());

    // The right store still opens it; a deliberate move ships the history to the other.
    drop(open_connection(&db, &manager(&store_a, "shop")).unwrap());
    let moved = manager(&store_b, "shop").with_move_to_store(true);
    let conn = open_connection(&db, &moved).unwrap();
    let last = flush_to_storage(&db, Some(Duration::from_secs(60)), &moved).unwrap().unwrap();
    drop(conn);
    let out = dir.path().join("moved.db");
    assert_eq!(restore_to(&local_store(&store_b), "shop", &out).frame_no, last);
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
}

#[test]
fn memory_store_round_trip_and_namespace_checks() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_with("memory://round-trip", &[], fast()).unwrap();
    assert!(LibsqlWalManager::default().with_storage(storage.clone()).with_namespace("a/b").is_err());
    assert!(LibsqlWalManager::default().with_storage(storage.clone()).with_namespace("..").is_err());
    let db = dir.path().join("mem.db");
    let manager = wal_manager(Some(storage.clone()), "mem");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 30);
    let expected = rows(&conn);
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
    drop(conn);
    assert_eq!(storage.list_namespaces().unwrap(), vec!["mem".to_string()]);
    let out = dir.path().join("out.db");
    restore_to(&storage, "mem", &out);
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
    assert!(Storage::open("ftp://nowhere").is_err());
    assert!(Storage::open("not a url").is_err());
}

#[test]
fn every_backend_opens_by_url_and_urls_shown_carry_no_secrets() {
    let s3 = [("aws_region", "us-east-1"), ("aws_access_key_id", "id"), ("aws_secret_access_key", "key")];
    assert_eq!(Storage::open_with("s3://bucket/prefix", &s3, fast()).unwrap().url(), "s3://bucket/prefix");
    Storage::open_with("gs://bucket/prefix", &[], fast()).unwrap();
    let az = [("azure_storage_account_name", "account"), ("azure_storage_account_key", "a2V5")];
    Storage::open_with("az://container/prefix", &az, fast()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = local_store(&dir.path().join("made/on/demand"));
    // Opening creates nothing (the first upload does: tests/cli_defects.rs).
    assert!(!dir.path().join("made").exists());
    assert!(local.url().starts_with("file:///"));
    let url = "s3://bucket/x?aws_secret_access_key=hunter2&aws_region=us-east-1&aws_access_key_id=id";
    let shown = Storage::open_with(url, &[], fast()).unwrap().url().to_string();
    assert_eq!(shown, "s3://bucket/x", "the query options are not shown");
}

/// What a store URL says that no backend reads is refused, not silently ignored (before,
/// the request went to AWS's default endpoint with the environment's credentials). The
/// refusal names no secret.
#[test]
fn url_parts_no_backend_reads_are_refused_without_showing_secrets() {
    let s3 = [("aws_region", "us-east-1"), ("aws_access_key_id", "id"), ("aws_secret_access_key", "x")];
    let dir = tempfile::tempdir().unwrap();
    let refused = [
        "s3://AKIDSECRET:hunter2@bucket/x".to_string(),
        "gs://user:hunter2@bucket/x".into(),
        "az://acct:hunter2@container/p".into(),
        "s3://bucket/x?not_an_option=hunter2".into(),
        format!("file://{}?hunter2=1", dir.path().display()),
        "memory://m?aws_endpoint=hunter2".into(),
    ];
    for url in &refused {
        let err = Storage::open_with(url, &s3, fast()).err().unwrap_or_else(|| panic!("{url} was opened"));
        let message = err.to_string();
        assert!(!message.contains("hunter2") && !message.contains("AKIDSECRET"), "{message}");
    }
}

/// A restore killed (`kill -9`) leaves its scratch directory, as large as the database. The
/// next restore to the same output removes it, but never one whose restore still runs (its
/// lock is held), nor one holding a file restore did not make.
#[test]
fn a_killed_restores_scratch_directory_is_removed_by_the_next_one() {
    use libsql_wal::io::Io;
    let dir = tempfile::tempdir().unwrap();
    let storage = local_store(&dir.path().join("store"));
    let db = dir.path().join("src.db");
    let manager = wal_manager(Some(storage.clone()), "scratch");
    let conn = open_connection(&db, &manager).unwrap();
    write(&conn, 0, 30);
    flush_to_storage(&db, Some(Duration::from_secs(30)), &manager).unwrap();
    drop(conn);

    let out = dir.path().join("r.db");
    let scratch = |name: &str, files: &[&str]| {
        let path = dir.path().join(format!(".r.db.restoring-{name}"));
        std::fs::create_dir(&path).unwrap();
        for file in files {
            std::fs::write(path.join(file), b"left behind").unwrap();
        }
        path
    };
    let killed = scratch("111-0000dead", &["lock", "database", "object"]);
    let live = scratch("222-0000beef", &["lock", "database"]);
    let held = StdIo.open(&live.join("lock"), false).unwrap();
    assert!(held.try_lock_exclusive().unwrap());
    let foreign = scratch("333-0000f00d", &["lock", "notes.txt"]);

    restore_to(&storage, "scratch", &out);
    assert!(!killed.exists(), "the killed restore's scratch directory was left behind");
    assert!(live.join("database").exists(), "a running restore's scratch directory was removed");
    assert!(foreign.join("notes.txt").exists(), "a file restore did not make was removed");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".r.db.restoring-"))
        .collect();
    assert_eq!(leftovers.len(), 2, "this restore's own scratch directory was not removed");
}

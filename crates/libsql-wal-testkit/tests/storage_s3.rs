//! Durable storage against a real S3-compatible server on loopback (`s3s-fs`, started and
//! killed by the tests themselves; `.ci/test` installs it): outages with the server killed
//! (SIGKILL) mid-upload and restarted, commits going on meanwhile, uploads resuming in order,
//! segments left by a closed process uploaded by the next one, and a restore from S3 equal to
//! the original page by page.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use libsql_sys::rusqlite::Connection;
use libsql_wal::io::StdIo;
use libsql_wal::{
    LibsqlWalManager, Storage, StorageConfig, WalConfig, durable_frame_no, flush_to_storage, inspect, open_connection,
    restore, wait_durable,
};
use libsql_wal_testkit::bench::loopback_s3::S3Server;

fn start_server(root: &Path) -> S3Server {
    S3Server::start(root)
        .expect("s3s-fs starts (`cargo install s3s-fs@0.14.1 --features binary --locked`, .ci/test does it)")
}

fn s3_storage(server: &S3Server) -> Storage {
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(20),
        retry_delay_max: Duration::from_millis(300),
        request_timeout: Duration::from_secs(5),
        ..StorageConfig::default()
    };
    server.storage("tests", config).unwrap()
}

/// Options in the URL's query reach the store's builder: the endpoint, the credentials, the
/// region (before, they were ignored and the request went to AWS).
#[test]
fn options_in_the_url_query_are_applied() {
    use libsql_wal_testkit::bench::loopback_s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
    let root = tempfile::tempdir().unwrap();
    let server = start_server(root.path());
    let url = format!(
        "s3://{BUCKET}/q?aws_endpoint=http://127.0.0.1:{}&aws_allow_http=true&aws_access_key_id={ACCESS_KEY}\
         &aws_secret_access_key={SECRET_KEY}&aws_region=us-east-1",
        server.port()
    );
    let storage = Storage::open_with(&url, &[], StorageConfig::default()).unwrap();
    assert_eq!(storage.url(), format!("s3://{BUCKET}/q"));
    assert_eq!(storage.list_namespaces().unwrap(), Vec::<String>::new(), "the loopback server answered");
}

fn manager(storage: &Storage, namespace: &str) -> LibsqlWalManager {
    let config = WalConfig { segment_frames_max: 64, segment_age_max: None, ..Default::default() };
    LibsqlWalManager::new(StdIo::shared(), config).with_storage(storage.clone()).with_namespace(namespace).unwrap()
}

fn insert(conn: &Connection, i: i64) {
    conn.execute("INSERT INTO t VALUES (?1, randomblob(?2))", (i, 200 + (i * 53) % 3000)).unwrap();
}

fn rows(conn: &Connection) -> (i64, i64) {
    conn.query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
}

fn assert_same_pages(a: &Path, b: &Path) {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        assert!(x == y, "page {} differs", i + 1);
    }
}

fn stock_integrity(db: &Path) -> String {
    let out = Command::new("sqlite3").arg(db).arg("PRAGMA integrity_check").output().expect("sqlite3 is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn server_killed_mid_upload_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&dir.path().join("s3"));
    let storage = s3_storage(&server);
    let db = dir.path().join("orders.db");
    let manager = manager(&storage, "orders");
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();

    // A writer commits all along; the durable frame_no is sampled to check it never goes back.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, manager, stop, committed) = (db.clone(), manager.clone(), stop.clone(), committed.clone());
        std::thread::spawn(move || {
            let conn = open_connection(&db, &manager).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                insert(&conn, i);
                i += 1;
                committed.store(i as u64, Ordering::SeqCst);
                // About a thousand commits a second: enough to seal a segment every few
                // dozen milliseconds, little enough to keep the test short.
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut durable_seen = 0u64;
    let mut sample = |what: &str| {
        let durable = durable_frame_no(&db, &manager).unwrap().unwrap_or(0);
        assert!(durable >= durable_seen, "durable frame_no went back ({what}): {durable} < {durable_seen}");
        durable_seen = durable;
    };
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        sample("server up");
        // Kill while segments are sealed and uploaded continuously: requests are cut mid-way.
        server.kill();
        let before = committed.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        sample("server down");
        assert!(committed.load(Ordering::SeqCst) > before, "round {round}: commits went on during the outage");
        let info = inspect(&db, &manager).unwrap();
        let durability = info.durability.clone().unwrap();
        let lag = info.durable_lag_frames().unwrap_or(info.last_frame_no);
        assert!(lag > 64, "round {round}: the log grows while storage is down (lag {lag})");
        assert!(durability.last_error.is_some(), "round {round}: the outage shows in info");
        server.restart().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let durability = inspect(&db, &manager).unwrap().durability.unwrap();
    assert!(durability.failures > 0, "requests failed during the outages: {durability:?}");

    let last = flush_to_storage(&db, Some(Duration::from_secs(120)), &manager).unwrap();
    assert_eq!(last, Some(inspect(&db, &manager).unwrap().last_frame_no), "everything durable after the outages");
    let expected = rows(&conn);
    drop(conn);

    let chain = storage.chain("orders").unwrap();
    assert!(chain.stranded.is_empty(), "uploads went in order: no gap in storage");
    assert_eq!(Some(chain.end_frame_no), last);
    let out = dir.path().join("restored.db");
    let report = restore(&storage, "orders", &out, &mut |_, _| {}).unwrap();
    assert_eq!(Some(report.frame_no), last);
    // Outages do not chop the log into tiny segments (SQLite's autocheckpoint asks for a
    // checkpoint at every commit while the log is long; it must not seal each time).
    let frames = last.unwrap();
    assert!((report.objects as u64) < frames / 16, "{} objects for {frames} frames", report.objects);
    assert_same_pages(&db, &out);
    assert_eq!(stock_integrity(&out), "ok");
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
}

#[test]
fn segments_left_by_a_closed_process_are_uploaded_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&dir.path().join("s3"));
    let storage = s3_storage(&server);
    server.kill();
    let db = dir.path().join("left.db");
    {
        let manager = manager(&storage, "left");
        let conn = open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
        for i in 0..500 {
            insert(&conn, i);
        }
        assert!(!wait_durable(&db, 1, Some(Duration::from_millis(200)), &manager).unwrap());
    } // Closed with nothing uploaded: the segments stay in the log.
    let log_dir = dir.path().join("left.db-wal");
    let left = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
        .count();
    assert!(left > 5, "{left} segments left behind");

    server.restart().unwrap();
    let manager = manager(&storage, "left");
    let conn = open_connection(&db, &manager).unwrap();
    let expected = rows(&conn);
    let last = inspect(&db, &manager).unwrap().last_frame_no;
    let uploaded = wait_durable(&db, last, Some(Duration::from_secs(60)), &manager).unwrap();
    assert!(uploaded, "uploaded at open: {:?}", inspect(&db, &manager).unwrap().durability);
    drop(conn);
    assert!(!log_dir.exists(), "all durable, all checkpointed: the log is gone");
    let out = dir.path().join("restored.db");
    restore(&storage, "left", &out, &mut |_, _| {}).unwrap();
    assert_same_pages(&db, &out);
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
}

#[test]
fn a_log_moved_to_another_store_starts_there_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&dir.path().join("s3"));
    let s3 = s3_storage(&server);
    let db = dir.path().join("moved.db");
    {
        let manager = manager(&s3, "moved");
        let conn = open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
        for i in 0..300 {
            insert(&conn, i);
        }
        flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().unwrap();
        server.kill();
        for i in 300..600 {
            insert(&conn, i);
        }
    } // Closed with a durable record (for S3) and segments S3 never got.
    assert!(dir.path().join("moved.db-wal/durable").exists());

    // The record counts in S3, not here: refused unless the move is asked for; moved, the
    // local store must get everything, from a base.
    let local = Storage::open(&format!("file://{}", dir.path().join("store").display())).unwrap();
    let error = open_connection(&db, &manager(&local, "moved")).err().expect("refused without the move").to_string();
    assert!(error.contains("shipped to another store or namespace"), "{error}");
    let manager = manager(&local, "moved").with_move_to_store(true);
    let conn = open_connection(&db, &manager).unwrap();
    let expected = rows(&conn);
    let last = flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap();
    assert_eq!(last, Some(inspect(&db, &manager).unwrap().last_frame_no));
    drop(conn);
    let out = dir.path().join("restored.db");
    let report = restore(&local, "moved", &out, &mut |_, _| {}).unwrap();
    assert_eq!(Some(report.frame_no), last);
    assert_same_pages(&db, &out);
    assert_eq!(rows(&Connection::open(&out).unwrap()), expected);
}

//! An idle namespace costs nothing: once its commits are durable and online compaction has
//! run, a database kept open with its background checkpointer (whose timers seal segments
//! by age) makes no storage request at all. Every call to the object store is counted by a
//! wrapper around `object_store`'s in-memory store.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use libsql_sys::rusqlite::{Connection, OpenFlags};
use libsql_wal::io::StdIo;
use libsql_wal::object_store::memory::InMemory;
use libsql_wal::object_store::path::Path as ObjectPath;
use libsql_wal::object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result, UploadPart,
};
use libsql_wal::storage::compaction::CompactionConfig;
use libsql_wal::{
    Checkpointer, CheckpointerConfig, LibsqlWalManager, Storage, StorageConfig, WalConfig, flush_to_storage,
    open_connection, restore,
};

/// An object store that counts every request it is asked to make (a multipart upload's
/// parts, completion and abort included).
#[derive(Debug)]
struct Counting {
    inner: InMemory,
    requests: Arc<AtomicU64>,
}

impl Counting {
    fn count(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    requests: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

/// Every method that makes a request is counted once; the trait's other methods are built on
/// these (a `head` or a range read is a `get_opts`, a `rename` a copy and a delete).
#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(&self, location: &ObjectPath, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.count();
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count();
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload { inner, requests: self.requests.clone() }))
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> Result<GetResult> {
        self.count();
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> Result<()> {
        self.count();
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count();
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count();
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> Result<ListResult> {
        self.count();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.count();
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.count();
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// Every key in the store, read without counting.
fn keys(store: &Counting) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let listed: Vec<Result<ObjectMeta>> = store.inner.list(None).collect().await;
        listed.into_iter().map(|m| m.unwrap().location.to_string()).collect()
    })
}

fn digest(conn: &libsql_sys::rusqlite::Connection) -> Vec<(i64, Vec<u8>)> {
    let mut stmt = conn.prepare("SELECT i, v FROM t ORDER BY i").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
}

/// Waits until the count has not moved for `quiet` (at most `limit`); returns it.
fn settled(requests: &AtomicU64, quiet: Duration, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = requests.load(Ordering::SeqCst);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = requests.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(Instant::now() < deadline, "storage requests never stopped ({now} so far)");
    }
}

#[test]
fn an_idle_namespace_costs_no_requests() {
    let requests = Arc::new(AtomicU64::new(0));
    let store = Arc::new(Counting { inner: InMemory::new(), requests: requests.clone() });
    let config = StorageConfig {
        retry_delay_min: Duration::from_millis(10),
        retry_delay_max: Duration::from_millis(100),
        compaction: CompactionConfig {
            online_after_bytes: 64 << 10,
            pack_bytes_min: 1,
            snapshot_bytes_min: 1,
            ..CompactionConfig::default()
        },
        ..StorageConfig::default()
    };
    let storage = Storage::with_object_store("counting://", store.clone(), config);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    // Small segments, and sealed by age after 1 s: the idle period below spans several of
    // the checkpointer's age checks.
    let wal =
        WalConfig { segment_frames_max: 16, segment_age_max: Some(Duration::from_secs(1)), ..WalConfig::default() };
    let checkpointer = Checkpointer::new(CheckpointerConfig { tick: Duration::from_millis(100), ..Default::default() });
    let manager = LibsqlWalManager::new(StdIo::shared(), wal)
        .with_checkpointer(checkpointer)
        .with_storage(storage.clone())
        .with_namespace("idle")
        .unwrap();
    let conn = open_connection(&db, &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB)").unwrap();
    // About 1.5 MiB of frames: online compaction runs after every 64 KiB uploaded.
    for i in 0..300 {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(1000 + ?1 % 3000))", [i]).unwrap();
        if i % 3 == 0 {
            conn.execute("UPDATE t SET v = randomblob(500) WHERE i = ?1", [i / 2]).unwrap();
        }
    }
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().expect("everything durable");
    // Online compaction steps, checkpoints and their seals finish.
    let busy = settled(&requests, Duration::from_millis(2500), Duration::from_secs(60));
    let objects = keys(&store);
    let compacted: Vec<&String> = objects
        .iter()
        .filter(|k| {
            k.contains("/packs/") || (k.contains("/snapshots/") && !k.contains("/snapshots/00000000000000000000-"))
        })
        .collect();
    assert!(!compacted.is_empty(), "online compaction wrote a pack or a snapshot: {objects:?}");
    assert!(objects.iter().filter(|k| k.contains("/segments/")).count() < 20, "and collected segments: {objects:?}");

    // Idle, the connection open: not one request.
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let after = requests.load(Ordering::SeqCst);
    assert_eq!(after, busy, "{} requests while idle for {:?}", after - busy, idle_started.elapsed());
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 300);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(requests.load(Ordering::SeqCst), busy, "a read is no reason for a request either");

    // The latest restore is the database.
    let out = dir.path().join("restored.db");
    let report = restore(&storage, "idle", &out, &mut |_, _| {}).unwrap();
    assert!(
        report.keys.iter().any(|k| compacted.contains(&k)),
        "the restore used compacted objects: {:?}",
        report.keys
    );
    let uri = format!("file:{}?immutable=1", out.display());
    let restored =
        Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI).unwrap();
    let integrity: String = restored.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    assert!(digest(&restored) == digest(&conn), "the restored database differs from the live one");

    // A write is what makes requests again (the counter sees them).
    let before = requests.load(Ordering::SeqCst);
    conn.execute("INSERT INTO t VALUES (1000, x'00')", []).unwrap();
    flush_to_storage(&db, Some(Duration::from_secs(60)), &manager).unwrap().expect("durable");
    assert!(requests.load(Ordering::SeqCst) > before, "the new commit was uploaded");
    println!("{busy} requests to write, compact and checkpoint; none in {:?} idle", idle_started.elapsed());
}

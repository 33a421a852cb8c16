//! A replica with `--storage` bootstraps from object storage (the objects `restore` uses)
//! and asks its primary only for the frames after what storage holds: it then holds every
//! row, and the primary served no image.

mod support;

use std::time::{Duration, Instant};

use libsql_wal::Storage;
use serde_json::{Value, json};
use support::{Running, close, execute, rows, start};

fn sql(server: &Running, statement: &str) -> Value {
    let (status, response) = server.pipeline(None, json!([execute(statement), close()]));
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["results"][0]["type"], "ok", "{response}");
    response
}

fn count(server: &Running) -> Option<String> {
    let (status, response) = server.pipeline(None, json!([execute("SELECT count(*), sum(x) FROM t"), close()]));
    (status == 200 && response["results"][0]["type"] == "ok").then(|| format!("{:?}", rows(&response, 0)))
}

fn image_requests(server: &Running) -> u64 {
    let (_, body) = server.request("GET", "/metrics", &[], b"");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("libsql_wal_http_requests_total") && l.contains("/replication/v1/image"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_replica_with_storage_starts_from_storage_and_streams_only_the_tail() {
    let store = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", store.path().display())).unwrap();
    let given = storage.clone();
    let primary = start(move |c| c.storage = Some(given));
    sql(&primary, "CREATE TABLE t(x INTEGER, pad BLOB)");
    for i in 0..20 {
        sql(
            &primary,
            &format!(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) \
                 INSERT INTO t SELECT {i} * 100 + i, randomblob(1000) FROM c"
            ),
        );
    }
    // Storage holds these; what follows is only in the primary's log when the replica starts.
    wait_durable(&storage);
    for i in 20..25 {
        sql(&primary, &format!("INSERT INTO t VALUES ({}, randomblob(10))", i * 100));
    }
    let url = format!("http://{}", primary.addr);
    let replica = start(move |c| {
        c.replica_of = Some(url);
        c.storage = Some(storage);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&replica) != count(&primary) {
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up: {:?} vs {:?}",
            count(&replica),
            count(&primary)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(image_requests(&primary), 0, "the replica started from storage, not from the primary's image");
    // It follows on as any replica does.
    sql(&primary, "DELETE FROM t WHERE x < 1000");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&replica) != count(&primary) {
        assert!(Instant::now() < deadline, "the replica did not follow");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until storage holds at least 2,000 rows' worth of the primary (a restore of it
/// counts them).
fn wait_durable(storage: &Storage) {
    let scratch = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let out = scratch.path().join(format!("probe-{n}.db"));
        if libsql_wal::restore(storage, "default", &out, &mut |_, _| {}).is_ok() {
            let conn = libsql_wal::open_sqlite_connection(&out).unwrap();
            let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap_or(0);
            if rows >= 2000 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "storage never took the first 2,000 rows");
        std::thread::sleep(Duration::from_millis(200));
    }
}

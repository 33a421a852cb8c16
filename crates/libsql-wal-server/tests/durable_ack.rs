//! `--ack durable`: once a response with a commit is out, storage alone holds that commit;
//! and concurrent commits share uploads instead of one each.

mod support;

use std::time::Duration;

use libsql_wal::Storage;
use libsql_wal_server::Ack;
use serde_json::json;
use support::{close, execute, start};

fn restored_count(storage: &Storage, scratch: &std::path::Path, n: usize) -> i64 {
    let out = scratch.join(format!("restored-{n}.db"));
    libsql_wal::restore(storage, "default", &out, &mut |_, _| {}).unwrap();
    let conn = libsql_wal::open_sqlite_connection(&out).unwrap();
    conn.query_row("select count(*) from t", [], |r| r.get(0)).unwrap()
}

#[test]
fn an_acknowledged_commit_is_in_storage() {
    let scratch = tempfile::tempdir().unwrap();
    let url = format!("file://{}", scratch.path().join("store").display());
    std::fs::create_dir_all(scratch.path().join("store")).unwrap();
    let storage = Storage::open(&url).unwrap();
    let given = storage.clone();
    let server = start(move |c| {
        c.storage = Some(given);
        c.ack = Ack::Durable { timeout: Duration::from_secs(20) };
    });
    let (status, r) = server.pipeline(None, json!([execute("create table t(x)"), close()]));
    assert_eq!(status, 200, "{r}");
    for i in 1..=3 {
        let (status, r) = server.pipeline(None, json!([execute("insert into t values (1)"), close()]));
        assert_eq!(status, 200, "{r}");
        // Nothing sealed these commits but the acknowledgement's own flush.
        assert_eq!(restored_count(&storage, scratch.path(), i), i as i64);
    }
}

#[test]
fn concurrent_commits_share_their_uploads() {
    let scratch = tempfile::tempdir().unwrap();
    // Uploads take 30 ms, like a PUT to a distant store: commits made meanwhile must wait
    // for the next round together, not queue one upload each.
    let store = libsql_wal_testkit::object_stores::InstrumentedStore::new();
    store.set_put_delay(Duration::from_millis(30));
    let storage = Storage::with_object_store("memory://slow", store.clone(), Default::default());
    let given = storage.clone();
    let server = start(move |c| {
        c.storage = Some(given);
        c.ack = Ack::Durable { timeout: Duration::from_secs(30) };
    });
    server.pipeline(None, json!([execute("create table t(x)"), close()]));
    let objects_before = count_segments(&store.keys());
    const CLIENTS: usize = 16;
    const COMMITS: usize = 8;
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                for _ in 0..COMMITS {
                    let (status, r) = server.pipeline(None, json!([execute("insert into t values (1)"), close()]));
                    assert_eq!(status, 200, "{r}");
                }
            });
        }
    });
    let uploads = count_segments(&store.keys()) - objects_before;
    let commits = CLIENTS * COMMITS;
    eprintln!("{commits} concurrent acknowledged commits, {uploads} segment uploads");
    assert!(uploads < commits / 2, "{uploads} segment uploads for {commits} concurrent commits: not shared");
    assert_eq!(restored_count(&storage, scratch.path(), 0), commits as i64);
}

fn count_segments(keys: &[String]) -> usize {
    keys.iter().filter(|k| k.ends_with(".seg")).count()
}

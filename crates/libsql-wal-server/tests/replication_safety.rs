//! What a replica must never do, found by trying: replace a database of its own; stay on an
//! old history because something it serves holds its log (a read waiting for a frame, an
//! embedded replica's table).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, close, execute, rows, sql, start};

fn count(server: &Running, table: &str) -> Option<String> {
    let (status, response) = server.pipeline(None, json!([execute(&format!("SELECT count(*) FROM {table}")), close()]));
    (status == 200 && response["results"][0]["type"] == "ok").then(|| rows(&response, 0)[0][0].to_string())
}

/// A `--db-dir` holding a database of its own (never a replica): `--replica-of` leaves it
/// as it is and does not follow that namespace (before: replaced by the primary's image).
#[test]
fn a_replica_never_replaces_a_database_of_its_own() {
    let primary = start(|_| {});
    sql(&primary, &["CREATE TABLE t(x)", "INSERT INTO t VALUES (1)"]);
    let own = start(|_| {});
    sql(&own, &["CREATE TABLE precious(x)", "INSERT INTO precious VALUES (42)"]);
    let (stopped, kept) = own.stop_keeping_files();
    stopped.unwrap();
    let db_dir = kept.path().join("dbs");
    let url = format!("http://{}", primary.addr);
    let replica = start(move |c| {
        c.replica_of = Some(url);
        c.db_dir = db_dir;
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&replica, "precious").as_deref(), Some("\"1\""), "the database of its own is intact");
    assert_eq!(count(&replica, "t"), None, "and not followed");
    drop(kept);
}

/// A read waiting on a replica for a frame it lacks (`x-libsql-wal-wait-frame-no`), and an
/// embedded replica's table on it, do not keep it from starting again from an image when
/// its primary is replaced (before: both held its log open, and it served the old history
/// until they let go).
#[test]
fn a_waiting_read_and_an_embedded_replica_do_not_hold_a_replica_on_an_old_history() {
    let primary = start(|_| {});
    sql(&primary, &["CREATE TABLE t(v)", "INSERT INTO t VALUES ('old')"]);
    let url = format!("http://{}", primary.addr);
    let replica = start(move |c| {
        c.replica_of = Some(url);
        c.limits.request_duration_max = Duration::from_secs(20);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&replica, "t").is_none() {
        assert!(Instant::now() < deadline, "the replica never followed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // An embedded replica's table on the replica (it pins the log while loaded).
    let (status, info) = replica.request("GET", "/info", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&info));
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let body = serde_json::to_vec(&json!({"baton": null, "requests": [execute("SELECT 1"), close()]})).unwrap();
            replica.request("POST", "/v2/pipeline", &[("x-libsql-wal-wait-frame-no", "1000000000")], &body).0
        });
        std::thread::sleep(Duration::from_millis(200));
        let addr = primary.addr;
        let (stopped, _old) = primary.stop_keeping_files();
        stopped.unwrap();
        let new_primary = start(move |c| c.listen = addr);
        sql(&new_primary, &["CREATE TABLE t(v)", "CREATE TABLE other(v)", "INSERT INTO t VALUES ('new'), ('new')"]);
        // Well within the waiting read's 20 s: it must not be what lets the replica go on.
        let deadline = Instant::now() + Duration::from_secs(12);
        while count(&replica, "other").is_none() {
            assert!(Instant::now() < deadline, "the replica stayed on the old history while a read waited");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(count(&replica, "t").as_deref(), Some("\"2\""));
        drop(new_primary);
        // The waiting read ends with its time (503), not before the replica moved on.
        assert_eq!(waiter.join().unwrap(), 503);
    });
}

fn count_in(server: &Running, namespace: &str) -> Option<String> {
    let body =
        serde_json::to_vec(&json!({"baton": null, "requests": [execute("SELECT count(*) FROM t"), close()]})).unwrap();
    let (status, reply) = server.request("POST", "/v2/pipeline", &[("x-namespace", namespace)], &body);
    let reply: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    (status == 200 && reply["results"][0]["type"] == "ok").then(|| rows(&reply, 0)[0][0].to_string())
}

/// A namespace a client asks a replica for that the primary does not have is not followed
/// for ever (each would poll the primary without end: clients could make a replica do that
/// for any number of names); asked for again once the primary has it, it is followed.
#[test]
fn a_namespace_the_primary_lacks_is_dropped_then_followed_when_asked_again() {
    let primary = start(|_| {});
    let url = format!("http://{}", primary.addr);
    let replica = start(move |c| c.replica_of = Some(url));
    assert_eq!(count_in(&replica, "ghost"), None, "the replica holds no ghost");
    std::thread::sleep(Duration::from_millis(500));
    let body = serde_json::to_vec(&json!({"baton": null, "requests": [
        execute("CREATE TABLE t(x)"), execute("INSERT INTO t VALUES (1), (2)"), close()]}))
    .unwrap();
    let (status, _) = primary.request("POST", "/v2/pipeline", &[("x-namespace", "ghost")], &body);
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_in(&replica, "ghost").as_deref() != Some("\"2\"") {
        assert!(Instant::now() < deadline, "asked for again, the namespace was never followed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

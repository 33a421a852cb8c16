//! `serve --ack replicas=K`: a write's response waits until K replicas hold it durably.
//! The primary killed (-9) right after an acknowledgement: the write is on the replica.
//! With fewer than K replicas connected a write waits out `--ack-timeout`, then fails with
//! 503 REPLICAS_NOT_ACKED: never an acknowledgement no replica backs.

use std::time::{Duration, Instant};

use libsql_wal_testkit::http::http;
use libsql_wal_testkit::serve_process::ServeProcess;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");

fn pipeline(server: &ServeProcess, sql: &str) -> (u16, Value) {
    let body =
        json!({ "baton": null, "requests": [{ "type": "execute", "stmt": { "sql": sql } }, { "type": "close" }] });
    let (status, reply) = http(server.addr, "POST", "/v2/pipeline", &[], &serde_json::to_vec(&body).unwrap());
    (status, serde_json::from_slice(&reply).unwrap_or(Value::Null))
}

fn count(server: &ServeProcess) -> Option<i64> {
    let (status, reply) = pipeline(server, "SELECT count(*) FROM t");
    let value = &reply["results"][0]["response"]["result"]["rows"][0][0]["value"];
    (status == 200).then(|| value.as_str()?.parse().ok()).flatten()
}

#[test]
fn an_acknowledged_write_is_on_a_replica_when_the_primary_dies() {
    let dir = tempfile::tempdir().unwrap();
    let primary =
        ServeProcess::start(BIN, &dir.path().join("primary"), &["--ack", "replicas=1", "--ack-timeout", "1s"]);

    // No replica yet: the write is committed on the primary, but not acknowledged.
    let started = Instant::now();
    let (status, reply) = pipeline(&primary, "CREATE TABLE t(x INTEGER PRIMARY KEY)");
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["code"], "REPLICAS_NOT_ACKED", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("held by 0 of the 1"), "{reply}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited --ack-timeout first");

    let replica = ServeProcess::start(BIN, &dir.path().join("replica"), &["--replica-of", &primary.url()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&replica).is_none() {
        assert!(Instant::now() < deadline, "the replica never got the table");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..=50 {
        let (status, reply) = pipeline(&primary, &format!("INSERT INTO t VALUES ({i})"));
        assert_eq!(status, 200, "write {i}: {reply}");
        assert_eq!(reply["results"][0]["type"], "ok", "{reply}");
    }
    // Right after the 50th acknowledgement, before anything else.
    primary.kill9();
    assert_eq!(count(&replica), Some(50), "every acknowledged write is on the replica");

    // A replica alone (its primary gone) acknowledges nothing: a new primary with
    // --ack replicas=2 and one replica fails its writes clearly.
    let primary =
        ServeProcess::start(BIN, &dir.path().join("primary2"), &["--ack", "replicas=2", "--ack-timeout", "1s"]);
    let (_, _) = pipeline(&primary, "CREATE TABLE t(x)");
    let replica2 = ServeProcess::start(BIN, &dir.path().join("replica2"), &["--replica-of", &primary.url()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&replica2).is_none() {
        assert!(Instant::now() < deadline, "the second replica never got the table");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, reply) = pipeline(&primary, "INSERT INTO t VALUES (1)");
    assert_eq!(status, 503, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("held by 1 of the 2 replicas"), "{reply}");
    drop(replica);
}

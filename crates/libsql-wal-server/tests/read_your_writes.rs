//! Read-your-writes: a pipeline's response names the frame_no its namespace was at
//! (`x-libsql-wal-frame-no`); a read sent to a replica with `x-libsql-wal-wait-frame-no`
//! runs only once the replica has applied the primary's transactions up to it, so it sees
//! the write; one asking past what the primary has waits `--max-request-duration`, then
//! fails with 503 REPLICA_BEHIND naming the primary.

mod support;

use std::time::Duration;

use libsql_wal_testkit::http::{header_value, http_with_head};
use serde_json::{Value, json};
use support::{Running, close, execute, rows, start};

fn post(server: &Running, headers: &[(&str, &str)], statements: &[&str]) -> (u16, Option<u64>, Value) {
    let mut requests: Vec<Value> = statements.iter().map(|s| execute(s)).collect();
    requests.push(close());
    let body = serde_json::to_vec(&json!({ "baton": null, "requests": requests })).unwrap();
    let (status, head, body) = http_with_head(server.addr, "POST", "/v2/pipeline", headers, &body);
    let frame_no = header_value(&head, "x-libsql-wal-frame-no").map(|v| v.parse().unwrap());
    (status, frame_no, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn a_read_on_a_replica_waits_for_the_write_it_names() {
    let primary = start(|_| {});
    let url = format!("http://{}", primary.addr);
    let replica = start(move |config| {
        config.replica_of = Some(url);
        config.limits.request_duration_max = Duration::from_secs(2);
    });
    let (status, first, _) = post(&primary, &[], &["CREATE TABLE t(x)"]);
    assert_eq!(status, 200);
    let first = first.expect("a write's response names its frame_no");
    for i in 0..50 {
        let (status, frame_no, response) = post(&primary, &[], &[&format!("INSERT INTO t VALUES ({i})")]);
        assert_eq!(status, 200, "{response}");
        let frame_no = frame_no.unwrap();
        assert!(frame_no > first, "frame_no goes forward with each commit");
        // Right after the write, the replica serves a read that names it with the write in.
        let wait = frame_no.to_string();
        let (status, seen, response) =
            post(&replica, &[("x-libsql-wal-wait-frame-no", &wait)], &["SELECT count(*) FROM t"]);
        assert_eq!(status, 200, "{response}");
        assert_eq!(rows(&response, 0)[0][0], json!((i + 1).to_string()));
        assert!(seen.unwrap() >= frame_no, "the replica's response names where it is: {seen:?}");
    }
    // A frame the primary never wrote: the replica waits out the request's time, then says so.
    let (_, now, _) = post(&primary, &[], &["SELECT 1"]);
    let far = (now.unwrap() + 1000).to_string();
    let (status, _, response) = post(&replica, &[("x-libsql-wal-wait-frame-no", &far)], &["SELECT 1"]);
    assert_eq!(status, 503, "{response}");
    assert_eq!(response["code"], "REPLICA_BEHIND", "{response}");
    assert!(response["message"].as_str().unwrap().contains(&format!("replica of http://{}", primary.addr)));
    // A primary holds every commit it acknowledged: it runs the request at once.
    let (status, _, _) = post(&primary, &[("x-libsql-wal-wait-frame-no", &far)], &["SELECT 1"]);
    assert_eq!(status, 200);
    let (status, _, response) = post(&replica, &[("x-libsql-wal-wait-frame-no", "soon")], &["SELECT 1"]);
    assert_eq!((status, response["code"].as_str()), (400, Some("FRAME_NO_INVALID")), "{response}");
}

//! `serve --replica-of`: a replica follows its primary's namespaces, shows whole
//! transactions only (the bank invariant, checked on the replica while the primary writes),
//! refuses writes, and is never continued into another history; a replica that stops reading
//! never stops the primary's commits.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, close, error_code, execute, rows, start};

fn sql(server: &Running, statements: &[&str]) -> Value {
    let mut requests: Vec<Value> = statements.iter().map(|s| execute(s)).collect();
    requests.push(close());
    let (status, response) = server.pipeline(None, json!(requests));
    assert_eq!(status, 200, "{response}");
    response
}

fn setup_bank(primary: &Running) {
    sql(
        primary,
        &[
            "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER)",
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) INSERT INTO acct SELECT i, 100 FROM c",
            "CREATE TABLE seq(n INTEGER)",
            "INSERT INTO seq VALUES (0)",
        ],
    );
}

fn transfer(primary: &Running, i: u64) {
    let (a, b) = (i * 7 % 100 + 1, i * 13 % 100 + 1);
    sql(
        primary,
        &[
            "BEGIN",
            &format!("UPDATE acct SET bal = bal - 5 WHERE id = {a}"),
            &format!("UPDATE acct SET bal = bal + 5 WHERE id = {b}"),
            "UPDATE seq SET n = n + 1",
            "COMMIT",
        ],
    );
}

/// (sum of balances, accounts, transfers) as the replica shows them, if it can yet.
fn bank(server: &Running) -> Option<(i64, i64, i64)> {
    let requests = json!([
        execute("SELECT (SELECT sum(bal) FROM acct), (SELECT count(*) FROM acct), (SELECT n FROM seq)"),
        close()
    ]);
    let (status, response) = server.pipeline(None, requests);
    if status != 200 || response["results"][0]["type"] != "ok" {
        return None;
    }
    let row = &rows(&response, 0)[0];
    let int = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
    Some((int(&row[0])?, int(&row[1])?, int(&row[2])?))
}

fn wait_for_transfers(replica: &Running, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while bank(replica).is_none_or(|(_, _, seen)| seen < n) {
        assert!(Instant::now() < deadline, "the replica did not reach transfer {n}: {:?}", bank(replica));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replica_of(primary: &Running) -> Running {
    let url = format!("http://{}", primary.addr);
    start(move |config| config.replica_of = Some(url))
}

#[test]
fn a_replica_shows_whole_transactions_only_and_refuses_writes() {
    let primary = start(|_| {});
    let replica = replica_of(&primary);
    // Before the primary has the namespace, the replica says so.
    let (_, response) = replica.pipeline(None, json!([execute("SELECT 1"), close()]));
    assert_eq!(error_code(&response, 0), "SQLITE_CANTOPEN", "{response}");
    setup_bank(&primary);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for i in 0..300 {
                transfer(&primary, i);
            }
        });
        while !writer.is_finished() {
            if let Some((sum, accounts, n)) = bank(&replica) {
                assert_eq!((sum, accounts), (10_000, 100), "a replica reader saw part of transfer {n}");
            }
        }
    });
    wait_for_transfers(&replica, 300);
    let read = |server: &Running| sql(server, &["SELECT id, bal FROM acct ORDER BY id"]);
    assert_eq!(rows(&read(&replica), 0), rows(&read(&primary), 0));
    let (_, response) = replica.pipeline(None, json!([execute("UPDATE acct SET bal = 0"), close()]));
    assert_eq!(error_code(&response, 0), "SQLITE_READONLY", "{response}");
    let message = response["results"][0]["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&format!("replica of http://{}", primary.addr)), "{message}");
    // A cursor's refused step says so too.
    let body = serde_json::to_vec(
        &json!({ "baton": null, "batch": { "steps": [{ "stmt": { "sql": "DELETE FROM acct" } }] } }),
    )
    .unwrap();
    let (status, reply) = replica.request("POST", "/v3/cursor", &[], &body);
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("SQLITE_READONLY") && reply.contains("send writes to the primary"), "{reply}");
    // The primary restarted on its files: the replica goes on from where it is.
    let url_dir = primary.dir.path().join("dbs");
    let addr = primary.addr;
    let (stopped, kept) = primary.stop_keeping_files();
    stopped.unwrap();
    let primary = start(move |config| {
        config.listen = addr;
        config.db_dir = url_dir;
    });
    for i in 300..350 {
        transfer(&primary, i);
    }
    wait_for_transfers(&replica, 350);
    assert_eq!(rows(&read(&replica), 0), rows(&read(&primary), 0));
    drop(kept);
}

#[test]
fn a_replica_is_never_continued_into_another_history() {
    let primary = start(|_| {});
    setup_bank(&primary);
    transfer(&primary, 1);
    let replica = replica_of(&primary);
    wait_for_transfers(&replica, 1);
    let (stopped, replica_dir) = replica.stop_keeping_files();
    stopped.unwrap();
    // Another database behind another primary, further along than the replica.
    let other = start(|_| {});
    setup_bank(&other);
    for i in 0..20 {
        transfer(&other, i);
    }
    let url = format!("http://{}", other.addr);
    let dbs = replica_dir.path().join("dbs");
    let replica = start(move |config| {
        config.replica_of = Some(url);
        config.db_dir = dbs;
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(bank(&replica), Some((10_000, 100, 1)), "the replica kept its own history, nothing mixed in");
}

#[test]
fn replication_requests_are_checked() {
    let primary = start(|_| {});
    let (status, _) = primary.request("GET", "/replication/v1/frames?position=0-0-0", &[("x-namespace", "none")], b"");
    assert_eq!(status, 404, "no such namespace");
    setup_bank(&primary);
    for bad in ["nonsense", "1-2", "zz-1-0", "1-x-0"] {
        let (status, _) = primary.request("GET", &format!("/replication/v1/frames?position={bad}"), &[], b"");
        assert_eq!(status, 400, "{bad}");
    }
    let (status, body) = primary.request("GET", "/replication/v1/frames?position=1-1-1", &[], b"");
    assert_eq!(status, 409, "another history: {}", String::from_utf8_lossy(&body));
}

#[test]
fn a_replica_that_stops_reading_never_stops_commits() {
    let primary = start(|_| {});
    setup_bank(&primary);
    sql(&primary, &["CREATE TABLE big(v BLOB)"]);
    // Asks for everything after the image position, then never reads.
    let mut image = Vec::new();
    let (status, body) = primary.request("GET", "/replication/v1/image", &[], b"");
    assert_eq!(status, 200);
    image.extend_from_slice(&body);
    let mark = &image[72..92];
    let frame_no = u64::from_le_bytes([mark[0], mark[1], mark[2], mark[3], mark[4], mark[5], 0, 0]);
    let lineage = u32::from_le_bytes(mark[10..14].try_into().unwrap());
    let chain = u32::from_le_bytes(mark[14..18].try_into().unwrap());
    let mut stalled = std::net::TcpStream::connect(primary.addr).unwrap();
    write!(
        stalled,
        "GET /replication/v1/frames?position={lineage:08x}-{frame_no}-{chain:08x} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let started = Instant::now();
    for _ in 0..200 {
        sql(&primary, &["INSERT INTO big VALUES (randomblob(60000))"]);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "commits waited for a replica");
    assert_eq!(rows(&sql(&primary, &["SELECT count(*) FROM big"]), 0)[0][0], "200");
    drop(stalled);
}

/// A namespace made on the primary after the replica started is followed from the first
/// time a client asks the replica for it.
#[test]
fn a_namespace_asked_for_later_is_followed_from_then_on() {
    let primary = start(|_| {});
    let replica = replica_of(&primary);
    let later = [("x-namespace", "later")];
    let (status, _) = primary.pipeline_at(
        "/v2/pipeline",
        &later,
        None,
        json!([execute("CREATE TABLE t(v)"), execute("INSERT INTO t VALUES ('made after the replica')"), close()]),
    );
    assert_eq!(status, 200);
    let ask = || replica.pipeline_at("/v2/pipeline", &later, None, json!([execute("SELECT v FROM t"), close()])).1;
    let first = ask();
    assert_eq!(error_code(&first, 0), "SQLITE_CANTOPEN", "{first}");
    assert!(first.to_string().contains("follows it from now on"), "{first}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = ask();
        if response["results"][0]["type"] == "ok" {
            assert_eq!(rows(&response, 0), vec![vec![json!("made after the replica")]]);
            break;
        }
        assert!(Instant::now() < deadline, "never followed: {response}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! `serve --replica-of`: a replica follows its primary's namespaces, shows whole
//! transactions only (the bank invariant, checked on the replica while the primary writes),
//! refuses writes, and is never continued into another history: a position its primary
//! refuses (another history, frames checkpointed away) makes it start again from an image,
//! replacing its database whole, readers seeing the old rows or the new ones only; a
//! replica that stops reading never stops the primary's commits.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, close, error_code, execute, rows, sql, start};

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

/// Restarted against another database (another lineage, further along), a replica never
/// continues its own history into it: the primary refuses its position, and it starts
/// again from the other's image, with the other's rows only.
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
    sql(&other, &["UPDATE acct SET bal = bal + id", "UPDATE acct SET bal = bal - id"]);
    for i in 0..20 {
        transfer(&other, i);
    }
    let url = format!("http://{}", other.addr);
    let dbs = replica_dir.path().join("dbs");
    let replica = start(move |config| {
        config.replica_of = Some(url);
        config.db_dir = dbs;
    });
    wait_for_transfers(&replica, 20);
    let read = |server: &Running| sql(server, &["SELECT id, bal FROM acct ORDER BY id"]);
    assert_eq!(rows(&read(&replica), 0), rows(&read(&other), 0));
}

/// Rows of `t` as a replica reader sees them: (rows, of the old primary, of the new one).
fn lineage_rows(server: &Running) -> Option<(i64, i64, i64)> {
    let query = "SELECT count(*), coalesce(sum(v LIKE 'old%'), 0), coalesce(sum(v LIKE 'new%'), 0) FROM t";
    let (status, response) = server.pipeline(None, json!([execute(query), close()]));
    if status != 200 || response["results"][0]["type"] != "ok" {
        return None;
    }
    let row = &rows(&response, 0)[0];
    let int = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
    Some((int(&row[0])?, int(&row[1])?, int(&row[2])?))
}

fn fill(server: &Running, prefix: &str, n: usize) {
    let insert = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) \
         INSERT INTO t SELECT '{prefix}-' || i || '-' || hex(randomblob(200)) FROM c"
    );
    sql(server, &["BEGIN", "CREATE TABLE t(v TEXT)", &insert, "COMMIT"]);
}

/// The primary replaced, at its address, by another database (another lineage): the
/// replica, running and read meanwhile, starts again from the new primary's image. Its
/// readers see the old rows or the new ones, never a mix, and a stream holding a connection
/// to the old database is ended (its next request: STREAM_EXPIRED) rather than left
/// reading the old file.
#[test]
fn a_replica_of_a_replaced_primary_starts_again_from_its_image() {
    let primary = start(|_| {});
    fill(&primary, "old", 50);
    let replica = replica_of(&primary);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lineage_rows(&replica) != Some((50, 50, 0)) {
        assert!(Instant::now() < deadline, "never followed: {:?}", lineage_rows(&replica));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stream inside a read transaction on the old database.
    let (status, held) = replica.pipeline(None, json!([execute("BEGIN"), execute("SELECT count(*) FROM t")]));
    assert_eq!(status, 200, "{held}");
    let baton = held["baton"].as_str().unwrap().to_string();
    let addr = primary.addr;
    primary.stop().unwrap();
    let new_primary = start(move |config| config.listen = addr);
    fill(&new_primary, "new", 30);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut seen_new = false;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match lineage_rows(&replica) {
                    Some((50, 50, 0)) => assert!(!seen_new, "went back to the old rows"),
                    Some((30, 0, 30)) => seen_new = true,
                    None => {}
                    other => panic!("a reader saw a mix of the two histories: {other:?}"),
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while lineage_rows(&replica) != Some((30, 0, 30)) {
            assert!(Instant::now() < deadline, "never started again: {:?}", lineage_rows(&replica));
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
    });
    let (status, expired) = replica.pipeline(Some(&baton), json!([execute("SELECT count(*) FROM t"), close()]));
    assert_eq!((status, expired["code"].as_str()), (400, Some("STREAM_EXPIRED")), "{expired}");
    let all = |server: &Running| rows(&sql(server, &["SELECT v FROM t ORDER BY v"]), 0);
    assert_eq!(all(&replica), all(&new_primary));
}

/// The newest position in a replica's `<db>-upstream` record (docs/FORMAT.md), as the
/// frames route takes it.
fn recorded_position(db: &std::path::Path) -> String {
    let mut record = db.as_os_str().to_owned();
    record.push("-upstream");
    let bytes = std::fs::read(record).unwrap();
    let slot = bytes
        .chunks_exact(32)
        .filter(|slot| &slot[0..4] == b"LSQU")
        .max_by_key(|slot| u32::from_le_bytes(slot[4..8].try_into().unwrap()))
        .expect("a slot");
    let frame_no = u64::from_le_bytes(slot[8..16].try_into().unwrap());
    let lineage = u32::from_le_bytes(slot[16..20].try_into().unwrap());
    let chain = u32::from_le_bytes(slot[20..24].try_into().unwrap());
    format!("{lineage:08x}-{frame_no}-{chain:08x}")
}

/// A replica stopped while its primary wrote and checkpointed the frames after its
/// position away starts again, at its restart, from an image, and has the primary's rows.
#[test]
fn a_replica_whose_frames_were_checkpointed_away_starts_again_from_an_image() {
    let primary = start(|_| {});
    setup_bank(&primary);
    for i in 0..5 {
        transfer(&primary, i);
    }
    let replica = replica_of(&primary);
    wait_for_transfers(&replica, 5);
    let (stopped, replica_dir) = replica.stop_keeping_files();
    stopped.unwrap();
    let position = recorded_position(&replica_dir.path().join("dbs").join("default.db"));
    for i in 5..60 {
        transfer(&primary, i);
    }
    // No replica streams now: a checkpoint may drop every frame after its position.
    let frames = format!("/replication/v1/frames?position={position}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sql(&primary, &["PRAGMA wal_checkpoint(TRUNCATE)"]);
        let (status, body) = primary.request("GET", &frames, &[], b"");
        if status == 409 {
            assert!(String::from_utf8_lossy(&body).contains("checkpointed"), "{}", String::from_utf8_lossy(&body));
            break;
        }
        assert!(Instant::now() < deadline, "the checkpoint kept the frames: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://{}", primary.addr);
    let dbs = replica_dir.path().join("dbs");
    let replica = start(move |config| {
        config.replica_of = Some(url);
        config.db_dir = dbs;
    });
    wait_for_transfers(&replica, 60);
    let read = |server: &Running| sql(server, &["SELECT id, bal FROM acct ORDER BY id"]);
    assert_eq!(rows(&read(&replica), 0), rows(&read(&primary), 0));
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

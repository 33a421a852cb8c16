//! Each limit of `Limits`, driven past its bound: the client gets the documented error (a
//! result code, or an HTTP status with a JSON body), and the server stays usable after.

mod support;

use std::sync::Barrier;
use std::time::Duration;

use libsql_wal::Storage;
use libsql_wal_server::Ack;
use serde_json::{Value, json};
use support::{close, error_code, execute, rows, start};

/// A statement that runs for a while (tens of milliseconds) and returns one row.
const SLOW: &str =
    "with recursive c(i) as (select 1 union all select i+1 from c where i < 200000) select count(*) from c";

#[test]
fn an_oversize_body_gets_413_with_the_json_error_body() {
    let server = start(|c| c.limits.body_bytes_max = 4096);
    let padding = "x".repeat(5000);
    let body =
        serde_json::to_vec(&json!({ "baton": null, "requests": [execute(&format!("select '{padding}'"))] })).unwrap();
    for path in ["/v2/pipeline", "/v3/pipeline", "/v3/cursor", "/dev/ns/v2/pipeline"] {
        let (status, reply) = server.request("POST", path, &[], &body);
        assert_eq!(status, 413, "{path}: {}", String::from_utf8_lossy(&reply));
        let error: Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|e| panic!("{path}: the 413 body is not JSON ({e}): {}", String::from_utf8_lossy(&reply)));
        assert_eq!(error["code"], "BODY_TOO_LARGE", "{path}: {error}");
        assert!(error["message"].as_str().unwrap().contains("4096"), "{error}");
    }
    // Just under the bound passes.
    let (status, r) = server.pipeline(None, json!([execute("select 1"), close()]));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn results_over_the_response_limit_end_with_response_too_large() {
    let server = start(|c| c.limits.response_bytes_max = 20_000);
    let (status, r) = server.pipeline(
        None,
        json!([
            execute("create table t(b)"),
            execute("insert into t with recursive c(i) as (select 1 union all select i+1 from c where i < 100) select randomblob(1000) from c"),
            close()
        ]),
    );
    assert_eq!(status, 200, "{r}");
    // A pipeline is bounded as a whole: the whole table is too much, five rows (about 9 KB
    // as counted) fit twice, the third crosses the bound. Before, each `execute` was bounded
    // on its own, and one small request of many large ones made a response of gigabytes
    // (adversarial pass).
    let five = || execute("select b from t limit 5");
    let (status, r) = server.pipeline(None, json!([execute("select b from t"), five(), five(), five(), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(error_code(&r, 0), "RESPONSE_TOO_LARGE");
    for i in 1..=2 {
        assert_eq!(rows(&r, i).len(), 5);
    }
    assert_eq!(error_code(&r, 3), "RESPONSE_TOO_LARGE");
    // A `batch` is bounded as a whole: the third step of five rows crosses the bound.
    let step = json!({ "stmt": { "sql": "select b from t limit 5" } });
    let (status, r) =
        server.pipeline(None, json!([{ "type": "batch", "batch": { "steps": [step, step, step] } }, close()]));
    assert_eq!(status, 200, "{r}");
    let result = &r["results"][0]["response"]["result"];
    assert!(result["step_results"][1].is_object(), "{result}");
    assert_eq!(result["step_errors"][2]["code"], "RESPONSE_TOO_LARGE", "{result}");
    // A cursor bounds each row: many rows stream out, one row over the bound is an error
    // (a blob of 19,000 bytes: under SQLite's length limit, which is the same bound, but
    // over it once encoded in base64).
    let body = json!({ "baton": null, "batch": { "steps": [
        { "stmt": { "sql": "select b from t" } },
        { "stmt": { "sql": "select randomblob(19000)" } }
    ] } });
    let (status, reply) = server.request("POST", "/v3/cursor", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 200);
    let lines: Vec<Value> =
        String::from_utf8(reply).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "row").count(), 100);
    let error = lines.iter().find(|l| l["type"] == "step_error").expect("no step_error for the oversize row");
    assert_eq!(error["step"], 1);
    assert_eq!(error["error"]["code"], "RESPONSE_TOO_LARGE");
}

#[test]
fn stored_sql_beyond_the_limit_is_sql_store_too_many() {
    let server = start(|c| c.limits.stored_sql_max = 2);
    let store = |id: i32| json!({ "type": "store_sql", "sql_id": id, "sql": format!("select {id}") });
    let (status, r) = server.pipeline(
        None,
        json!([store(1), store(2), store(3),
            { "type": "close_sql", "sql_id": 2 }, store(4),
            { "type": "execute", "stmt": { "sql_id": 1 } },
            { "type": "execute", "stmt": { "sql_id": 4 } }, close()]),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][1]["type"], "ok", "{r}");
    assert_eq!(error_code(&r, 2), "SQL_STORE_TOO_MANY");
    // Closing one makes room again.
    assert_eq!(r["results"][4]["type"], "ok", "{r}");
    assert_eq!(rows(&r, 5), vec![vec![json!("1")]]);
    assert_eq!(rows(&r, 6), vec![vec![json!("4")]]);
}

/// The SQL texts of one stream are bounded in bytes together (before: 1024 texts of 1 MiB
/// each per stream, over every stream: four streams held 2 GB).
#[test]
fn stored_sql_beyond_its_bytes_is_sql_store_too_large() {
    let server = start(|c| c.limits.stored_sql_bytes_max = 1000);
    let text = |id: i32| format!("select '{}' -- {id}", "x".repeat(390));
    let store = |id: i32| json!({ "type": "store_sql", "sql_id": id, "sql": text(id) });
    let (status, r) = server
        .pipeline(None, json!([store(1), store(2), store(3), { "type": "close_sql", "sql_id": 1 }, store(4), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][1]["type"], "ok", "{r}");
    assert_eq!(error_code(&r, 2), "SQL_STORE_TOO_LARGE");
    assert_eq!(r["results"][4]["type"], "ok", "closing one makes room again: {r}");
}

#[test]
fn streams_beyond_max_batons_get_503_streams_exhausted() {
    let server = start(|c| c.limits.batons_max = 2);
    let open =
        |ns: &str| server.pipeline_at("/v2/pipeline", &[("x-namespace", ns)], None, json!([execute("select 1")]));
    let (_, a) = open("a");
    let (_, b) = open("b");
    let (status, refused) = open("c");
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["code"], "STREAMS_EXHAUSTED");
    // A pipeline that closes its stream needs no baton, so it still runs.
    let (status, r) = server.pipeline(None, json!([execute("select 1"), close()]));
    assert_eq!(status, 200, "{r}");
    // So does a request on a stream already open (its place is its own).
    let a_baton = a["baton"].as_str().unwrap();
    let (status, a2) =
        server.pipeline_at("/v2/pipeline", &[("x-namespace", "a")], Some(a_baton), json!([execute("select 2")]));
    assert_eq!(status, 200, "{a2}");
    // A cursor opens a stream too.
    let body = json!({ "baton": null, "batch": { "steps": [{ "stmt": { "sql": "select 1" } }] } });
    let (status, reply) = server.request("POST", "/v3/cursor", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&reply));
    // Closing a stream gives its place back.
    let b_baton = b["baton"].as_str().unwrap();
    server.pipeline_at("/v2/pipeline", &[("x-namespace", "b")], Some(b_baton), json!([close()]));
    let (status, r) = open("c");
    assert_eq!(status, 200, "{r}");
}

/// Many requests asking for a new stream at once, each running a while between the check
/// of the bound and the keeping of its stream: exactly `max` get a baton.
#[test]
fn concurrent_new_streams_never_exceed_max_batons() {
    const MAX: usize = 4;
    const CLIENTS: usize = 32;
    let server = start(|c| c.limits.batons_max = MAX);
    let barrier = Barrier::new(CLIENTS);
    let replies: Vec<(u16, Value)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    server.pipeline(None, json!([execute(SLOW)]))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let batons: Vec<&str> = replies.iter().filter_map(|(_, r)| r["baton"].as_str()).collect();
    for (status, r) in &replies {
        assert!(
            (*status == 200 && r["baton"].is_string()) || (*status == 503 && r["code"] == "STREAMS_EXHAUSTED"),
            "{status} {r}"
        );
    }
    assert_eq!(batons.len(), MAX, "{} streams open with --max-batons {MAX}", batons.len());
    // Each still works, and closing them all makes room for new ones.
    for baton in batons {
        let (status, r) = server.pipeline(Some(baton), json!([close()]));
        assert_eq!(status, 200, "{r}");
    }
    for _ in 0..MAX {
        let (status, r) = server.pipeline(None, json!([execute("select 1")]));
        assert_eq!(status, 200, "{r}");
    }
}

#[test]
fn a_baton_used_on_another_namespace_is_namespace_mismatch_and_its_stream_ends() {
    let server = start(|_| {});
    let on = |ns: &str, baton: Option<&str>, requests: Value| {
        server.pipeline_at("/v2/pipeline", &[("x-namespace", ns)], baton, requests)
    };
    on("a", None, json!([execute("create table t(x)"), close()]));
    let (_, r) = on("a", None, json!([execute("begin immediate"), execute("insert into t values (1)")]));
    let baton = r["baton"].as_str().unwrap().to_string();
    let (status, r) = on("b", Some(&baton), json!([execute("select 1")]));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["code"], "NAMESPACE_MISMATCH");
    assert!(!server.db_path("b").exists(), "the refused request opened namespace b");
    // The baton is used up, its transaction rolled back and the writer lock free.
    let (status, r) = on("a", Some(&baton), json!([execute("commit")]));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["code"], "STREAM_EXPIRED");
    let (status, r) = on("a", None, json!([execute("insert into t values (2)"), execute("select x from t"), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 1), vec![vec![json!("2")]]);
}

#[test]
fn ack_durable_past_its_timeout_is_503_not_durable() {
    // Every upload takes 3 s; a response may wait 300 ms.
    let store = libsql_wal_testkit::object_stores::InstrumentedStore::new();
    store.set_put_delay(Duration::from_secs(3));
    let storage = Storage::with_object_store("memory://slow", store.clone(), Default::default());
    let server = start(move |c| {
        c.storage = Some(storage);
        c.ack = Ack::Durable { timeout: Duration::from_millis(300) };
    });
    let started = std::time::Instant::now();
    let (status, r) = server.pipeline(None, json!([execute("create table t(x)"), close()]));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["code"], "NOT_DURABLE");
    assert!(started.elapsed() < Duration::from_secs(3), "the response waited for the upload: {:?}", started.elapsed());
    // A stream left open by the refused request is ended, not kept behind a baton no one got.
    let (status, r) = server.pipeline(None, json!([execute("insert into t values (1)")]));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["code"], "NOT_DURABLE");
    assert!(r["baton"].is_null());
    // Both commits are in the local log all the same (503 is "not known durable", not "lost").
    let (stopped, dir) = server.stop_keeping_files();
    stopped.unwrap();
    let conn = libsql_wal::open_sqlite_connection(dir.path().join("dbs/default.db")).unwrap();
    let count: i64 = conn.query_row("select count(*) from t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1);
}

/// SQL that never ends is interrupted once its request has run `--max-request-duration`
/// (`SQLITE_INTERRUPT`), in a pipeline and in a cursor, and the stream goes on (before: it
/// ran for ever, on a core, after its client left, and kept shutdown waiting).
#[test]
fn sql_past_the_request_duration_is_interrupted() {
    let server = start(|c| c.limits.request_duration_max = Duration::from_millis(500));
    let forever = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c";
    let began = std::time::Instant::now();
    let (status, r) = server.pipeline(None, json!([execute(forever), execute("select 7")]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(error_code(&r, 0), "SQLITE_INTERRUPT", "{r}");
    assert_eq!(rows(&r, 1), vec![vec![json!("7")]], "the next request of the pipeline ran");
    assert!(began.elapsed() < Duration::from_secs(10), "interrupted after {:?}", began.elapsed());
    let baton = r["baton"].as_str().expect("the stream stays open").to_string();
    let (_, r) = server.pipeline(Some(&baton), json!([execute(SLOW), close()]));
    assert_eq!(rows(&r, 0), vec![vec![json!("200000")]], "a request within the bound runs whole");
    let body =
        serde_json::to_vec(&json!({ "baton": null, "batch": { "steps": [{ "stmt": { "sql": forever } }] } })).unwrap();
    let (status, reply) = server.request("POST", "/v3/cursor", &[], &body);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&reply).contains("SQLITE_INTERRUPT"), "{}", String::from_utf8_lossy(&reply));
}

/// No string or blob larger than a response may carry is built (`SQLITE_LIMIT_LENGTH` is
/// `--max-response-bytes`): `zeroblob(1e9)` is `SQLITE_TOOBIG` at once (before: a gigabyte
/// was allocated, then refused as too large to send; a few such requests at once and the
/// server ran out of memory).
#[test]
fn no_value_larger_than_a_response_is_built() {
    let server = start(|c| c.limits.response_bytes_max = 1 << 20);
    let (_, r) = server.pipeline(
        None,
        json!([
            execute("select zeroblob(1000000000)"),
            execute("select length(randomblob(2000000))"),
            execute("select length(zeroblob(500000))"),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 0), "SQLITE_TOOBIG", "{r}");
    assert_eq!(error_code(&r, 1), "SQLITE_TOOBIG", "{r}");
    assert_eq!(rows(&r, 2), vec![vec![json!("500000")]]);
}

/// A connection over which nothing goes either way for `--idle-connection-timeout` while
/// the server waits for its client is closed, whether it never sends a byte or trickles a
/// request in (before: thousands of idle connections held their descriptors for ever, until
/// the databases ran out of them). A request that takes longer than the timeout to answer
/// is still answered: only waiting for the client counts.
#[test]
fn quiet_connections_are_closed_and_slow_answers_are_not() {
    use std::io::{Read, Write};
    let server = start(|c| c.limits.idle_connection_timeout = Duration::from_millis(300));
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    let mut trickling = std::net::TcpStream::connect(server.addr).unwrap();
    trickling.write_all(b"POST /v2/pipeline HTTP/1.1\r\nHost: x\r\n").unwrap();
    for (what, connection) in [("idle", &mut idle), ("trickling", &mut trickling)] {
        connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let began = std::time::Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match connection.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{what}: still open after {:?}: {e}", began.elapsed()),
            }
        }
        assert!(began.elapsed() < Duration::from_secs(5), "{what}: closed only after {:?}", began.elapsed());
    }
    // A second or more of SQL, several times the timeout: answered.
    let slow =
        "with recursive c(i) as (select 1 union all select i+1 from c where i < 12000000) select count(*) from c";
    let began = std::time::Instant::now();
    let (status, r) = server.pipeline(None, json!([execute(slow), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 0), vec![vec![json!("12000000")]]);
    assert!(began.elapsed() > Duration::from_millis(300), "the slow request was not slow: {:?}", began.elapsed());
}

/// A client that leaves while its request's SQL runs: the SQL stops and the stream ends,
/// rolling back, at once (before: the query ran on until `--max-request-duration`, and its
/// stream then held its write lock until the baton timeout, though nobody could use it).
#[test]
fn a_client_that_leaves_stops_its_sql_and_its_stream() {
    use std::io::Write;
    let server = start(|c| {
        c.limits.request_duration_max = Duration::from_secs(120);
        c.limits.baton_timeout = Duration::from_secs(120);
        c.limits.busy_timeout = Duration::from_millis(10);
    });
    let (_, r) = server.pipeline(None, json!([execute("create table t(x)"), close()]));
    assert_eq!(r["results"][0]["type"], "ok", "{r}");
    let forever = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c";
    let body = serde_json::to_vec(&json!({ "baton": null, "requests": [
        execute("begin immediate"), execute("insert into t values (1)"), execute(forever)
    ] }))
    .unwrap();
    let mut leaving = std::net::TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    leaving.write_all(head.as_bytes()).unwrap();
    leaving.write_all(&body).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(leaving);
    // The write lock comes free within moments, and the abandoned insert is rolled back.
    let began = std::time::Instant::now();
    loop {
        let (_, r) = server.pipeline(None, json!([execute("insert into t values (2)"), close()]));
        if r["results"][0]["type"] == "ok" {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "the abandoned stream still holds the lock: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, r) = server.pipeline(None, json!([execute("select x from t"), close()]));
    assert_eq!(rows(&r, 0), vec![vec![json!("2")]]);
}

/// A cursor whose client leaves after the first line: the batch's SQL stops (before: it ran
/// on until `--max-request-duration`, holding the stream, so the next request on its baton
/// waited that long). The stream stays: its baton came in that first line.
#[test]
fn a_cursor_whose_client_leaves_stops_its_sql() {
    let server = start(|c| {
        c.limits.request_duration_max = Duration::from_secs(120);
        c.limits.baton_timeout = Duration::from_secs(120);
    });
    let forever = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c";
    let (leaving, reader, baton) = cursor_over_tcp(&server, forever);
    drop(reader);
    drop(leaving);
    let began = std::time::Instant::now();
    let (status, r) = server.pipeline(Some(&baton), json!([execute("select 1"), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 0), vec![vec![json!("1")]]);
    assert!(began.elapsed() < Duration::from_secs(10), "the cursor's SQL ran on for {:?}", began.elapsed());
}

/// Reads what the server sends on `connection` until it closes it, for at most `within`;
/// returns the bytes and whether it closed. A reset after the answer counts as closed: the
/// server may close with bytes of ours still unread.
fn read_until_closed(connection: &mut std::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    use std::io::Read;
    let began = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while began.elapsed() < within {
        connection.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        match connection.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (answer, true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    (answer, false)
}

/// A request whose head arrived but whose body stops coming (quiet for
/// `--idle-connection-timeout`), or trickles in for longer than `--body-read-timeout`, ends
/// with 408 `BODY_TIMEOUT` and its connection closed (before: a request being answered was
/// never cut, so a client trickling a body held its connection, a handler and one of
/// `--max-concurrent-requests`' places for ever).
#[test]
fn a_stalled_or_trickled_body_ends_its_request_with_408() {
    use std::io::Write;
    let server = start(|c| {
        c.limits.idle_connection_timeout = Duration::from_millis(300);
        c.limits.body_read_timeout = Duration::from_secs(2);
        // One place: a body that held it for ever would keep every other request out.
        c.limits.concurrent_requests_max = 1;
    });
    let head =
        "POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";

    // Quiet after the first bytes of its body: cut after the idle timeout.
    let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(br#"{"baton":null,"#).unwrap();
    let began = std::time::Instant::now();
    let (answer, closed) = read_until_closed(&mut stalled, Duration::from_secs(10));
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed, "a stalled body still holds its connection after {:?}: {answer}", began.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"BODY_TIMEOUT""#), "{answer}");
    assert!(began.elapsed() < Duration::from_secs(5), "cut only after {:?}", began.elapsed());

    // A byte every 100 ms, never quiet for the idle timeout: cut at --body-read-timeout.
    let mut trickling = std::net::TcpStream::connect(server.addr).unwrap();
    trickling.write_all(head.as_bytes()).unwrap();
    let began = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut closed = false;
    while began.elapsed() < Duration::from_secs(15) {
        // A write may fail once the server has answered and closed: the answer is read all the same.
        let wrote = trickling.write_all(b" ").is_ok();
        let (got, gone) = read_until_closed(&mut trickling, Duration::from_millis(100));
        answer.extend_from_slice(&got);
        if !answer.is_empty() || gone || !wrote {
            closed = gone;
            if !gone {
                let (rest, gone) = read_until_closed(&mut trickling, Duration::from_secs(5));
                answer.extend_from_slice(&rest);
                closed = gone;
            }
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "after {:?}: {answer}", began.elapsed());
    assert!(closed, "the trickling connection stayed open: {answer}");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(8), "cut after {took:?}");

    // The place each held is free again.
    let (status, r) = server.pipeline(None, json!([execute("select 1"), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 0), vec![vec![json!("1")]]);
}

/// A TCP connection to `to` from the loopback address `local` (127.0.0.2: another client
/// than the tests' usual 127.0.0.1, as the server tells clients apart by address).
fn connect_from(local: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(to).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// A `/v2/pipeline` request from `local`; returns (status, parsed body).
fn pipeline_from(local: &str, to: std::net::SocketAddr, baton: Option<&str>, requests: Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let body = serde_json::to_vec(&json!({ "baton": baton, "requests": requests })).unwrap();
    let mut connection = connect_from(local, to);
    let head =
        format!("POST /v2/pipeline HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    connection.write_all(head.as_bytes()).unwrap();
    connection.write_all(&body).unwrap();
    let mut reply = Vec::new();
    connection.read_to_end(&mut reply).unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let status = String::from_utf8_lossy(&reply[..split]).split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_slice(&reply[split + 4..]).unwrap_or(Value::Null))
}

/// With `--max-batons-per-client`, a client that never closes its streams fills its own
/// quota, not the server: one more stream of its own gets 429 `CLIENT_STREAMS_EXHAUSTED`
/// while another client still opens streams (before: one client could hold all of
/// `--max-batons` until its streams expired, and everyone got `STREAMS_EXHAUSTED`).
#[test]
fn a_client_past_its_stream_quota_gets_429_and_others_still_open_streams() {
    let server = start(|c| {
        c.limits.batons_max = 10;
        c.limits.batons_per_client_max = 2;
        c.limits.baton_timeout = Duration::from_secs(120);
    });
    let open = |local: &str| pipeline_from(local, server.addr, None, json!([execute("select 1")]));
    let (_, a) = open("127.0.0.1");
    let (_, b) = open("127.0.0.1");
    let (status, refused) = open("127.0.0.1");
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["code"], "CLIENT_STREAMS_EXHAUSTED", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("--max-batons-per-client"), "{refused}");
    // A cursor opens a stream too.
    let body = json!({ "baton": null, "batch": { "steps": [{ "stmt": { "sql": "select 1" } }] } });
    let (status, reply) = server.request("POST", "/v3/cursor", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&reply));
    // Its own streams go on, and a pipeline that closes its stream needs no place.
    let (status, a) = server.pipeline(Some(a["baton"].as_str().unwrap()), json!([execute("select 2")]));
    assert_eq!(status, 200, "{a}");
    let (status, r) = server.pipeline(None, json!([execute("select 1"), close()]));
    assert_eq!(status, 200, "{r}");
    // Another client opens streams all the same.
    for _ in 0..2 {
        let (status, other) = open("127.0.0.2");
        assert_eq!(status, 200, "{other}");
        assert!(other["baton"].is_string(), "{other}");
    }
    // Closing one of its streams gives the first client a place again.
    let (status, r) = server.pipeline(Some(b["baton"].as_str().unwrap()), json!([close()]));
    assert_eq!(status, 200, "{r}");
    let (status, r) = open("127.0.0.1");
    assert_eq!(status, 200, "{r}");
}

/// A cursor's body streams after its handler returned: while its SQL runs, nothing goes
/// over the connection, however long past `--idle-connection-timeout` (up to
/// `--max-request-duration`, and the `--ack durable` wait). It is a request being answered
/// and is not cut (before: the connection closed mid-body once a step had been quiet for
/// the idle timeout, and the client never got the step's end).
#[test]
fn a_cursor_quiet_while_its_sql_runs_is_not_cut() {
    use std::io::{Read, Write};
    let server = start(|c| c.limits.idle_connection_timeout = Duration::from_millis(300));
    let slow =
        "with recursive c(i) as (select 1 union all select i+1 from c where i < 12000000) select count(*) from c";
    let body = serde_json::to_vec(&json!({ "baton": null, "batch": { "steps": [
        { "stmt": { "sql": "select 1" } }, { "stmt": { "sql": slow } }
    ] } }))
    .unwrap();
    let mut connection = std::net::TcpStream::connect(server.addr).unwrap();
    let head =
        format!("POST /v3/cursor HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    connection.write_all(head.as_bytes()).unwrap();
    connection.write_all(&body).unwrap();
    let began = std::time::Instant::now();
    let mut reply = Vec::new();
    let _ = connection.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(began.elapsed() > Duration::from_millis(300), "the slow step was not slow: {:?}", began.elapsed());
    assert!(reply.contains(r#""value":"12000000""#), "cut after {:?}: {reply}", began.elapsed());
    assert_eq!(reply.matches(r#""type":"step_end""#).count(), 2, "{reply}");
}

/// A cursor whose client stops reading its lines: nothing moves on the connection while
/// the server waits for the client, so it is cut after `--idle-connection-timeout`, and the
/// batch stops at its next line; its stream goes on for the baton of the first line (a
/// cursor counted as answering until its body's end would hold the connection, a thread
/// and the stream for ever).
#[test]
fn a_cursor_whose_client_stops_reading_is_cut_and_its_stream_goes_on() {
    let server = start(|c| {
        c.limits.idle_connection_timeout = Duration::from_millis(300);
        c.limits.baton_timeout = Duration::from_secs(120);
    });
    // About a gigabyte of lines: far more than the socket buffers hold.
    let many = "with recursive c(i) as (select 1 union all select i+1 from c where i < 1000000) \
                select i, randomblob(1000) from c";
    // Kept open to the end, never read again.
    let (_stalled, reader, baton) = cursor_over_tcp(&server, many);
    // Not another byte read: the batch fills the socket's buffers and waits.
    std::thread::sleep(Duration::from_secs(1));
    // On a thread: while the stalled batch holds the stream, this request waits for it.
    let (done, answer) = std::sync::mpsc::channel();
    let addr = server.addr;
    std::thread::spawn(move || {
        let body = serde_json::to_vec(&json!({ "baton": baton, "requests": [execute("select 1"), close()] })).unwrap();
        let _ = done.send(support::http(addr, "POST", "/v2/pipeline", &[], &body));
    });
    let (status, r) = answer.recv_timeout(Duration::from_secs(10)).expect("the stalled cursor still holds its stream");
    let r: Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 0), vec![vec![json!("1")]]);
    drop(reader);
}

/// Opens a `/v3/cursor` of one step `sql` over a raw connection and reads up to its first
/// line (the baton), nothing more: the connection, its reader and the baton.
fn cursor_over_tcp(
    server: &support::Running,
    sql: &str,
) -> (std::net::TcpStream, std::io::BufReader<std::net::TcpStream>, String) {
    use std::io::{BufRead, Write};
    let body =
        serde_json::to_vec(&json!({ "baton": null, "batch": { "steps": [{ "stmt": { "sql": sql } }] } })).unwrap();
    let mut connection = std::net::TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /v3/cursor HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    connection.write_all(head.as_bytes()).unwrap();
    connection.write_all(&body).unwrap();
    let mut reader = std::io::BufReader::new(connection.try_clone().unwrap());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the cursor ended before its first line");
        if let Some(start) = line.find("{\"baton\"") {
            let first: Value = serde_json::from_str(line[start..].trim()).unwrap();
            return (connection, reader, first["baton"].as_str().unwrap().to_string());
        }
    }
}

//! Bad input and limits: malformed bodies, oversize bodies and statements, invalid
//! namespaces, too many requests at once — each an error response naming the problem, the
//! server still healthy after. And the namespace a request lands in, as libSQL chooses it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{close, error_code, execute, rows, start};

#[test]
fn malformed_requests_get_4xx_and_the_server_stays_up() {
    let server = start(|c| {
        c.limits.body_bytes_max = 4096;
        c.limits.statement_bytes_max = 100;
    });
    for body in [
        &b"{not json"[..],
        b"",
        b"[]",
        br#"{"requests":[{"type":"drop_everything"}]}"#,
        br#"{"requests":[{"type":"execute","stmt":{"sql":"select ?","args":[{"type":"integer","value":"1e3"}]}}]}"#,
    ] {
        let (status, reply) = server.request("POST", "/v2/pipeline", &[], body);
        assert_eq!(status, 400, "{}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&reply));
    }
    let big = vec![b' '; 5000];
    assert_eq!(server.request("POST", "/v2/pipeline", &[], &big).0, 413);
    let long_sql = format!("select '{}'", "x".repeat(200));
    let (_, r) = server.pipeline(None, json!([execute(&long_sql), close()]));
    assert_eq!(error_code(&r, 0), "SQL_TOO_LARGE");
    assert_eq!(server.request("GET", "/health", &[], b"").0, 200);
}

#[test]
fn namespaces_are_chosen_as_libsql_does() {
    let server = start(|_| {});
    let ns_of = |path: &str, headers: &[(&str, &str)]| {
        let (status, r) =
            server.pipeline_at(path, headers, None, json!([execute("create table if not exists seen(x)"), close()]));
        assert_eq!(status, 200, "{path} {headers:?}: {r}");
    };
    ns_of("/v2/pipeline", &[("x-namespace", "by-header")]);
    ns_of("/dev/by-path/v2/pipeline", &[]);
    ns_of("/v3/pipeline", &[("host", "by-host.example.com:8080")]);
    // Host names are case-insensitive (before: three spellings, three databases).
    ns_of("/v3/pipeline", &[("host", "By-Host.Example.com")]);
    ns_of("/v3/pipeline", &[("host", "BY-HOST.example.com")]);
    ns_of("/v2/pipeline", &[]);
    for ns in ["by-header", "by-path", "by-host", "default"] {
        assert!(server.db_path(ns).exists(), "no database for namespace {ns}");
    }
    for ns in ["By-Host", "BY-HOST"] {
        assert!(!server.db_path(ns).exists(), "a host name's case made namespace {ns}");
    }
    for bad in ["../escape", ".hidden", "a/b", ""] {
        let (status, _) = server.pipeline_at("/v2/pipeline", &[("x-namespace", bad)], None, json!([close()]));
        assert_eq!(status, 400, "namespace {bad:?} accepted");
    }
    // An IP address is not a name: the default namespace, not "127".
    assert!(!server.db_path("127").exists());
}

#[test]
fn requests_beyond_the_bound_wait_then_get_503() {
    let server = start(|c| {
        c.limits.concurrent_requests_max = 1;
        c.limits.request_queue_timeout = Duration::from_millis(200);
    });
    std::thread::scope(|s| {
        let slow = s.spawn(|| {
            // A statement that runs for a few seconds holds the only permit.
            server.pipeline(None, json!([execute("with recursive c(i) as (select 1 union all select i+1 from c where i < 30000000) select count(*) from c"), close()]))
        });
        std::thread::sleep(Duration::from_millis(300));
        let (status, r) = server.pipeline(None, json!([execute("select 1"), close()]));
        assert_eq!(status, 503, "{r}");
        assert_eq!(r["code"], "SERVER_BUSY");
        let (status, r) = slow.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(rows(&r, 0), vec![vec![json!("30000000")]]);
    });
    assert_eq!(server.pipeline(None, json!([execute("select 1"), close()])).0, 200);
}

#[test]
fn a_cursor_streams_a_batch_and_keeps_its_stream() {
    let server = start(|_| {});
    let body = json!({ "baton": null, "batch": { "steps": [
        { "stmt": { "sql": "create table t(x)" } },
        { "stmt": { "sql": "insert into t values (1), (2)" } },
        { "stmt": { "sql": "select x from t order by x" } },
        { "stmt": { "sql": "select nope" } },
        { "condition": { "type": "error", "step": 3 }, "stmt": { "sql": "select 'ran'" } },
        { "condition": { "type": "ok", "step": 3 }, "stmt": { "sql": "select 'skipped'" } }
    ] } });
    let (status, reply) = server.request("POST", "/v3/cursor", &[], &serde_json::to_vec(&body).unwrap());
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(reply).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let baton = lines[0]["baton"].as_str().unwrap().to_string();
    let kinds: Vec<String> = lines[1..].iter().map(|l| l["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        kinds,
        [
            "step_begin",
            "step_end",
            "step_begin",
            "step_end",
            "step_begin",
            "row",
            "row",
            "step_end",
            "step_error",
            "step_begin",
            "row",
            "step_end"
        ]
    );
    assert_eq!(lines[11]["row"][0]["value"], "ran");
    let (status, r) =
        server.pipeline_at("/v3/pipeline", &[], Some(&baton), json!([execute("select count(*) from t"), close()]));
    assert_eq!(status, 200);
    assert_eq!(rows(&r, 0), vec![vec![json!("2")]]);
}

/// A client reaches other databases only by namespace: `ATTACH 'file'` and `VACUUM INTO
/// 'file'` are refused with SQLITE_AUTH and create nothing (before: a request attached
/// another namespace's file past its credentials, or created a file anywhere the server
/// could write). Plain `VACUUM` and temporary or in-memory attachments still work. And a
/// database stays on our log: `PRAGMA journal_mode=DELETE` is refused (before: it took the
/// database off the WAL for that stream); its schema is SQLite's to write.
#[test]
fn a_client_cannot_attach_files_or_leave_the_wal() {
    let server = start(|_| {});
    let (_, r) = server.pipeline_at(
        "/v2/pipeline",
        &[("x-namespace", "other")],
        None,
        json!([execute("CREATE TABLE secret(x)"), execute("INSERT INTO secret VALUES ('other namespace')"), close()]),
    );
    assert_eq!(r["results"][1]["type"], "ok", "{r}");
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.db");
    let other = server.db_path("other");
    let (_, r) = server.pipeline(
        None,
        json!([
            execute(&format!("ATTACH '{}' AS o", other.display())),
            execute(&format!("ATTACH '{}' AS x", outside.display())),
            execute(&format!("VACUUM INTO '{}'", outside.display())),
            execute("CREATE TABLE t(x)"),
            execute("VACUUM"),
            execute("ATTACH '' AS scratch"),
            execute("ATTACH ':memory:' AS mem"),
            execute("PRAGMA journal_mode=WAL"),
            execute("PRAGMA journal_mode"),
            execute("PRAGMA journal_mode=DELETE"),
            execute("PRAGMA main.journal_mode='memory'"),
            close()
        ]),
    );
    for i in 0..3 {
        assert_eq!(error_code(&r, i), "SQLITE_AUTH", "request {i}: {r}");
    }
    for i in 3..9 {
        assert_eq!(r["results"][i]["type"], "ok", "request {i}: {r}");
    }
    // Off our log, commits would bypass storage and --ack durable.
    for i in 9..11 {
        assert_eq!(error_code(&r, i), "SQLITE_AUTH", "request {i}: {r}");
    }
    let (_, r) = server.pipeline(None, json!([execute("PRAGMA journal_mode"), close()]));
    assert_eq!(rows(&r, 0), vec![vec![json!("wal")]]);
    // Nor rewrite the schema behind SQLite's back (before: a corrupt schema made every later
    // request to the namespace fail, the repair included).
    let (_, r) = server.pipeline(
        None,
        json!([
            execute("PRAGMA writable_schema=ON"),
            execute("PRAGMA schema_version=12345"),
            execute("PRAGMA writable_schema"),
            execute("SELECT count(*) FROM t"),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 0), "SQLITE_AUTH", "{r}");
    assert_eq!(error_code(&r, 1), "SQLITE_AUTH", "{r}");
    assert_eq!(rows(&r, 3), vec![vec![json!("0")]]);
    assert!(!outside.exists(), "a client created a file outside the server's databases");
}

/// An acknowledged commit keeps the promise of the server's `synchronous` (FULL: synced in
/// the local log before the answer): a client may read the setting and raise it, not lower
/// it, in any spelling SQLite takes (before: `PRAGMA synchronous=OFF` on a stream made its
/// commits unsynced, while each answer still said they were in the log).
/// Settings of the whole process are not a client's: one `PRAGMA hard_heap_limit` made every
/// later request of every namespace fail with SQLITE_NOMEM until a restart (adversarial pass).
#[test]
fn a_client_cannot_set_process_wide_pragmas() {
    let server = start(|_| {});
    let setting = [
        "PRAGMA hard_heap_limit=300000",
        "PRAGMA hard_heap_limit(300000)",
        "PRAGMA soft_heap_limit=0",
        "PRAGMA temp_store_directory='/tmp'",
        "PRAGMA data_store_directory='/tmp'",
    ];
    let mut requests: Vec<_> = setting.iter().map(|sql| execute(sql)).collect();
    requests.push(execute("PRAGMA soft_heap_limit"));
    requests.push(execute("SELECT length(randomblob(1000000))"));
    requests.push(close());
    let (_, r) = server.pipeline(None, json!(requests));
    for (i, sql) in setting.iter().enumerate() {
        assert_eq!(error_code(&r, i), "SQLITE_AUTH", "{sql}: {r}");
    }
    assert_eq!(rows(&r, setting.len() + 1), vec![vec![json!("1000000")]], "{r}");
}

#[test]
fn a_client_cannot_lower_synchronous() {
    let server = start(|_| {});
    let lowering = [
        "PRAGMA synchronous=OFF",
        "PRAGMA synchronous = normal",
        "PRAGMA main.synchronous=0",
        "PRAGMA synchronous=1",
        "PRAGMA synchronous='off'",
        "PRAGMA synchronous(false)",
        "PRAGMA synchronous=on",
        // SQLite reads an unknown word as NORMAL and wraps numbers round (this one to OFF):
        // a number past 3 is refused whatever it would land on.
        "PRAGMA synchronous=banana",
        "PRAGMA synchronous=-1",
        "PRAGMA synchronous=99999999999",
        "PRAGMA synchronous=4",
    ];
    let mut requests: Vec<_> = lowering.iter().map(|sql| execute(sql)).collect();
    requests.push(execute("PRAGMA synchronous"));
    requests.push(close());
    let (_, r) = server.pipeline(None, json!(requests));
    for (i, sql) in lowering.iter().enumerate() {
        assert_eq!(error_code(&r, i), "SQLITE_AUTH", "{sql}: {r}");
    }
    assert_eq!(rows(&r, lowering.len()), vec![vec![json!("2")]], "{r}");

    let (_, r) = server.pipeline(
        None,
        json!([
            execute("PRAGMA synchronous=FULL"),
            execute("PRAGMA synchronous = 2"),
            execute("PRAGMA main.synchronous='extra'"),
            execute("PRAGMA synchronous"),
            execute("SELECT * FROM pragma_synchronous"),
            close()
        ]),
    );
    for i in 0..3 {
        assert_eq!(r["results"][i]["type"], "ok", "request {i}: {r}");
    }
    assert_eq!(rows(&r, 3), vec![vec![json!("3")]], "{r}");
    assert_eq!(rows(&r, 4), vec![vec![json!("3")]], "{r}");
}

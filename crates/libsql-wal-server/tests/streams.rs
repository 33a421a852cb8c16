//! Streams: what one client leaves on its connection never reaches another, batons are
//! good once, and an abandoned transaction is rolled back when its baton expires.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{close, error_code, execute, rows, start};

#[test]
fn session_state_never_passes_from_one_stream_to_the_next() {
    let server = start(|_| {});
    let (_, fresh) = server.pipeline(None, json!([execute("pragma cache_size"), close()]));
    let default_cache = rows(&fresh, 0);
    let (status, r) = server.pipeline(
        None,
        json!([
            execute("create table t(x)"),
            execute("insert into t values (7)"),
            execute("create temp table secret(a)"),
            execute("insert into secret values (42)"),
            execute("pragma cache_size = 77"),
            close()
        ]),
    );
    assert_eq!(status, 200, "{r}");
    for _ in 0..3 {
        let (_, r) = server.pipeline(
            None,
            json!([
                execute("select count(*) from temp.sqlite_schema"),
                execute("pragma cache_size"),
                execute("select last_insert_rowid()"),
                close()
            ]),
        );
        assert_eq!(rows(&r, 0), vec![vec![json!("0")]], "another client's TEMP table is visible");
        assert_eq!(rows(&r, 1), default_cache, "another client's PRAGMA is in force");
        assert_eq!(rows(&r, 2), vec![vec![json!("0")]], "another client's last_insert_rowid shows");
    }
}

#[test]
fn a_baton_is_good_for_one_request() {
    let server = start(|_| {});
    let (_, r) = server
        .pipeline(None, json!([execute("create table t(x)"), execute("begin"), execute("insert into t values (1)")]));
    let baton = r["baton"].as_str().unwrap().to_string();
    let (status, r2) = server.pipeline(Some(&baton), json!([execute("select count(*) from t")]));
    assert_eq!(status, 200);
    assert_eq!(rows(&r2, 0), vec![vec![json!("1")]]);
    let (status, again) = server.pipeline(Some(&baton), json!([execute("select 1")]));
    assert_eq!(status, 400, "a used baton was accepted again: {again}");
    assert_eq!(again["code"], "STREAM_EXPIRED");
    let (status, _) = server.pipeline(Some("00000000000000000000000000000000"), json!([execute("select 1")]));
    assert_eq!(status, 400, "a made-up baton was accepted");
    let next = r2["baton"].as_str().unwrap();
    let (_, r3) = server.pipeline(Some(next), json!([execute("commit"), close()]));
    assert!(r3["baton"].is_null(), "a closed stream still has a baton");
}

#[test]
fn an_abandoned_transaction_is_rolled_back_and_its_lock_released() {
    let server = start(|c| c.limits.baton_timeout = Duration::from_millis(300));
    server.pipeline(None, json!([execute("create table t(x)"), close()]));
    let (_, r) = server.pipeline(None, json!([execute("begin immediate"), execute("insert into t values (1)")]));
    let baton = r["baton"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = server.pipeline(Some(&baton), json!([execute("commit")]));
    assert_eq!(status, 400, "an expired stream was still usable");
    // The writer lock is free again and the insert is gone.
    let (_, r) =
        server.pipeline(None, json!([execute("insert into t values (2)"), execute("select x from t"), close()]));
    assert_eq!(rows(&r, 1), vec![vec![json!("2")]]);
}

#[test]
fn statement_errors_carry_libsql_servers_codes() {
    let server = start(|_| {});
    let (_, r) = server.pipeline(
        None,
        json!([execute("create table t(x primary key)"), execute("insert into t values (1)"),
            execute("insert into t values (1)"), execute("selec 1"), execute("select 1; select 2"), execute("  "),
            { "type": "execute", "stmt": { "sql": "select ?, ?", "args": [{ "type": "integer", "value": "1" }] } },
            execute("select * from nope"), close()]),
    );
    assert_eq!(error_code(&r, 2), "SQLITE_CONSTRAINT");
    // sqld parses a statement before SQLite prepares it: a syntax error is its parse error.
    assert_eq!(error_code(&r, 3), "SQL_PARSE_ERROR");
    assert_eq!(error_code(&r, 4), "SQL_MANY_STATEMENTS");
    assert_eq!(error_code(&r, 5), "SQL_NO_STATEMENT");
    assert_eq!(error_code(&r, 6), "ARGS_INVALID");
    assert_eq!(error_code(&r, 7), "SQLITE_UNKNOWN");
    let message = r["results"][7]["error"]["message"].as_str().unwrap();
    assert!(message.contains("no such table: nope"), "{message}");
}

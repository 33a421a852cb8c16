//! Where libSQL's server (sqld) and ours could differ, each as sqld answers: its error codes
//! and message forms, what it refuses as a protocol error (400, plain text, the whole
//! pipeline and its stream gone), its result fields, its plain GET bodies and namespaces.

mod support;

use serde_json::{Value, json};
use support::{close, error_code, execute, rows, start};

fn message(response: &Value, i: usize) -> String {
    response["results"][i]["error"]["message"].as_str().unwrap().to_string()
}

fn stmt(stmt: Value) -> Value {
    json!({ "type": "execute", "stmt": stmt })
}

/// A raw pipeline request: (status, body as text).
fn raw(server: &support::Running, path: &str, body: Value) -> (u16, String) {
    let (status, body) = server.request("POST", path, &[], &serde_json::to_vec(&body).unwrap());
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn sql_errors_are_classified_as_sqld_classifies_them() {
    let server = start(|_| {});
    let (_, r) = server.pipeline(
        None,
        json!([
            execute("create table t(x primary key, y not null)"),
            execute("selec 1"),
            execute("select * from nope"),
            execute("select nope from t"),
            execute("select nope(1)"),
            execute("insert into t values (1, 1)"),
            execute("insert into t values (1, 1)"),
            execute("insert into t values (2, null)"),
            execute("select 'unterminated"),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 1), "SQL_PARSE_ERROR");
    assert_eq!(message(&r, 1), r#"SQL string could not be parsed: near "selec": syntax error"#);
    // SQLite (3.47, sqld's too) places no offset on "no such table": then, as in sqld, it is
    // an SQLite error, SQLITE_ERROR named SQLITE_UNKNOWN.
    assert_eq!(error_code(&r, 2), "SQLITE_UNKNOWN");
    assert_eq!(message(&r, 2), "SQLite error: no such table: nope");
    assert_eq!(error_code(&r, 3), "SQL_INPUT_ERROR");
    assert_eq!(message(&r, 3), "SQL input error: no such column: nope (at offset 7)");
    assert_eq!(error_code(&r, 4), "SQL_INPUT_ERROR");
    assert!(message(&r, 4).starts_with("SQL input error: no such function: nope"), "{r}");
    // Constraint errors: the primary code's name, as sqld (not SQLITE_CONSTRAINT_PRIMARYKEY).
    assert_eq!(error_code(&r, 6), "SQLITE_CONSTRAINT");
    assert_eq!(message(&r, 6), "SQLite error: UNIQUE constraint failed: t.x");
    assert_eq!(error_code(&r, 7), "SQLITE_CONSTRAINT");
    assert_eq!(message(&r, 7), "SQLite error: NOT NULL constraint failed: t.y");
    assert_eq!(error_code(&r, 8), "SQL_PARSE_ERROR");
}

#[test]
fn positional_and_named_arguments_together_are_refused() {
    let server = start(|_| {});
    let (_, r) = server.pipeline(
        None,
        json!([
            stmt(json!({ "sql": "select ?1, :b", "args": [{ "type": "integer", "value": "1" }],
                "named_args": [{ "name": ":b", "value": { "type": "integer", "value": "2" } }] })),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 0), "ARGS_BOTH_POSITIONAL_AND_NAMED");
    assert_eq!(message(&r, 0), "Specifying both positional and named arguments is not supported");
}

#[test]
fn sql_and_sql_id_are_protocol_errors_that_end_the_pipeline_and_its_stream() {
    let server = start(|_| {});
    for (bad, why) in [
        (json!({ "sql": "select 1", "sql_id": 1 }), "Either `sql` or `sql_id` are required, but not both"),
        (json!({}), "Either `sql` or `sql_id` are required"),
        (json!({ "sql_id": 9 }), "SQL text 9 not found"),
    ] {
        let body = json!({ "baton": null, "requests": [
            { "type": "store_sql", "sql_id": 1, "sql": "select 1" },
            execute("create table if not exists t(x)"),
            execute("begin"),
            execute("insert into t values (1)"),
            stmt(bad),
            execute("commit"),
        ] });
        assert_eq!(raw(&server, "/v2/pipeline", body), (400, why.to_string()));
    }
    // The stream was dropped, its transaction rolled back.
    let (_, r) = server.pipeline(None, json!([execute("select count(*) from t"), close()]));
    assert_eq!(rows(&r, 0), vec![vec![json!("0")]]);
}

#[test]
fn store_sql_has_sqlds_codes() {
    let server = start(|c| {
        c.limits.stored_sql_max = 2;
        c.limits.statement_bytes_max = 100;
    });
    let store = |id: i32, sql: &str| json!({ "type": "store_sql", "sql_id": id, "sql": sql });
    let (_, r) = server.pipeline(
        None,
        json!([
            store(1, "select 1"),
            store(2, &format!("select '{}'", "x".repeat(200))),
            store(2, "select 2"),
            store(3, "select 3"),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 1), "SQL_STORE_TOO_LARGE");
    assert_eq!(r["results"][2]["type"], "ok");
    assert_eq!(error_code(&r, 3), "SQL_STORE_TOO_MANY");
    assert_eq!(message(&r, 3), "The server already stores 2 SQL texts, it cannot store more");
    let body = json!({ "baton": null, "requests": [store(1, "select 1"), store(1, "select 1")] });
    assert_eq!(raw(&server, "/v2/pipeline", body), (400, "SQL text 1 already exists".to_string()));
}

#[test]
fn batches_are_checked_before_any_step_runs() {
    let server = start(|_| {});
    let batch = |steps: Value| json!({ "type": "batch", "batch": { "steps": steps } });
    // A condition on a later step (or itself): 400.
    let body = json!({ "baton": null, "requests": [batch(json!([
        { "stmt": { "sql": "select 1" } },
        { "condition": { "type": "ok", "step": 1 }, "stmt": { "sql": "select 2" } }
    ]))] });
    assert_eq!(raw(&server, "/v2/pipeline", body), (400, "Invalid reference to step in a batch condition".into()));
    // A step's text that does not parse fails the whole batch: no step ran.
    let (_, r) = server.pipeline(
        None,
        json!([
            batch(json!([
                { "stmt": { "sql": "create table t(x)" } },
                { "stmt": { "sql": "selec 1" } }
            ])),
            execute("select count(*) from sqlite_schema"),
            close()
        ]),
    );
    assert_eq!(error_code(&r, 0), "SQL_PARSE_ERROR");
    assert_eq!(rows(&r, 1), vec![vec![json!("0")]]);
    // An error the schema shows is the step's own: earlier steps ran.
    let (_, r) = server.pipeline(
        None,
        json!([
            batch(json!([
                { "stmt": { "sql": "create table t(x)" } },
                { "stmt": { "sql": "select * from t" } },
                { "stmt": { "sql": "select nope from t" } }
            ])),
            close()
        ]),
    );
    let result = &r["results"][0]["response"]["result"];
    assert!(result["step_results"][1].is_object(), "{r}");
    assert_eq!(result["step_errors"][2]["code"], "SQL_INPUT_ERROR");
}

#[test]
fn v3_features_are_refused_on_v2() {
    let server = start(|_| {});
    let body = json!({ "baton": null, "requests": [{ "type": "get_autocommit" }, close()] });
    assert_eq!(
        raw(&server, "/v2/pipeline", body.clone()),
        (400, "The `get_autocommit` request is only supported in protocol version hrana3 and higher".into())
    );
    let (status, r) = server.pipeline_at("/v3/pipeline", &[], None, body["requests"].clone());
    assert_eq!(status, 200);
    assert_eq!(r["results"][0]["response"]["is_autocommit"], true);
    let steps = json!([{ "stmt": { "sql": "select 1" } },
        { "condition": { "type": "is_autocommit" }, "stmt": { "sql": "select 2" } }]);
    let body = json!({ "baton": null, "requests": [{ "type": "batch", "batch": { "steps": steps } }, close()] });
    assert_eq!(
        raw(&server, "/v2/pipeline", body.clone()),
        (400, "BatchCond of type `is_autocommit` is only supported in protocol version hrana3 and higher".into())
    );
    assert_eq!(raw(&server, "/v3/pipeline", body).0, 200);
}

#[test]
fn closed_streams_and_bad_batons_get_sqlds_answers() {
    let server = start(|_| {});
    // After `close`: a request that needs the database is a protocol error; others are not.
    let (_, r) = server.pipeline(None, json!([close(), { "type": "close_sql", "sql_id": 1 }, close()]));
    assert_eq!(r["results"][1]["type"], "ok", "{r}");
    let body = json!({ "baton": null, "requests": [close(), execute("select 1")] });
    assert_eq!(raw(&server, "/v2/pipeline", body), (400, "Stream for this baton was closed".into()));
    // A baton we could never have given: sqld's invalid baton.
    let body = json!({ "baton": "not a baton", "requests": [execute("select 1")] });
    assert_eq!(raw(&server, "/v2/pipeline", body), (400, "Received an invalid baton".into()));
    // One of ours that names no stream (used, expired or closed): 400 STREAM_EXPIRED as JSON.
    let (status, r) = server.pipeline(Some("0123456789abcdef0123456789abcdef"), json!([execute("select 1")]));
    assert_eq!((status, r["code"].as_str()), (400, Some("STREAM_EXPIRED")));
}

#[test]
fn malformed_bodies_are_plain_text_protocol_errors() {
    let server = start(|_| {});
    for body in [&b"{not json"[..], br#"{"requests":[{"type":"drop_everything"}]}"#] {
        let (status, reply) = server.request("POST", "/v3/pipeline", &[], body);
        let reply = String::from_utf8(reply).unwrap();
        assert_eq!(status, 400);
        assert!(reply.starts_with("Cannot deserialize client message from JSON: "), "{reply}");
    }
}

#[test]
fn results_carry_sqlds_counters() {
    let server = start(|_| {});
    let (_, r) = server.pipeline(
        None,
        json!([
            execute("create table t(x)"),
            execute("insert into t values (1), (2), (3)"),
            execute("select * from t"),
            execute("update t set x = x + 1 where x > 1"),
            execute("with v(a) as (select 9) insert into t select a from v"),
            { "type": "batch", "batch": { "steps": [
                { "stmt": { "sql": "with recursive c(i) as (select 1 union all select i + 1 from c where i < 200000) select count(*) from c" } },
                { "stmt": { "sql": "replace into t(rowid, x) values (10, 10)" } }
            ] } },
            close()
        ]),
    );
    let result = |i: usize| r["results"][i]["response"]["result"].clone();
    assert_eq!(result(0)["last_insert_rowid"], Value::Null, "{r}");
    assert_eq!(result(1)["last_insert_rowid"], "3");
    assert_eq!((result(1)["rows_written"].as_u64(), result(1)["affected_row_count"].as_u64()), (Some(3), Some(3)));
    assert_eq!(result(2)["last_insert_rowid"], Value::Null, "a SELECT has no rowid of its own");
    assert_eq!(result(2)["rows_read"], 3);
    assert_eq!(result(3)["last_insert_rowid"], Value::Null);
    assert_eq!(result(3)["affected_row_count"], 2);
    assert_eq!(result(4)["last_insert_rowid"], "4", "an INSERT after WITH");
    let steps = &result(5)["step_results"];
    assert!(steps[0]["query_duration_ms"].as_f64().unwrap() > 0.0, "{steps}");
    assert_eq!(steps[1]["last_insert_rowid"], "10");
}

#[test]
fn plain_get_bodies_are_sqlds() {
    let server = start(|_| {});
    let get = |path: &str| {
        let (status, body) = server.request("GET", path, &[], b"");
        (status, String::from_utf8(body).unwrap())
    };
    assert_eq!(get("/v2"), (200, "Hello, this is HTTP API v2 (Hrana over HTTP)".into()));
    assert_eq!(get("/v3"), (200, "Hello, this is HTTP API v2 (Hrana over HTTP)".into()));
    assert_eq!(get("/health"), (200, String::new()));
    let (status, version) = get("/version");
    assert_eq!(status, 200);
    assert!(version.starts_with("libsql-wal-server "), "{version}");
}

#[test]
fn on_dev_paths_the_path_alone_names_the_namespace() {
    let server = start(|_| {});
    let (status, r) = server.pipeline_at(
        "/dev/by-path/v2/pipeline",
        &[("x-namespace", "by-header")],
        None,
        json!([execute("create table seen(x)"), close()]),
    );
    assert_eq!(status, 200, "{r}");
    assert!(server.db_path("by-path").exists());
    assert!(!server.db_path("by-header").exists());
}

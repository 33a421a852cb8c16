//! Running replicas: a primary with auth on follows only a replica that sends a token it
//! accepts (`replica_auth_token`), and a refused replica says why once, in its log and in
//! its metrics; both sides' `/metrics` show the replication lag, which goes back to 0 once
//! the replica has caught up, and a primary's stream series live as long as the stream.
//!
//! Every server of this binary shares the process's metrics recorder, so each test uses
//! namespaces of its own.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libsql_wal_server::auth::Auth;
use serde_json::{Value, json};
use support::{Running, close, error_code, execute, rows, start};

/// Every log line of the process, as the fmt subscriber writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .init();
        logs
    })
}

/// The log lines that mention `namespace` and `what`.
fn lines_with(namespace: &str, what: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    text.lines().filter(|l| l.contains(namespace) && l.contains(what)).map(str::to_string).collect()
}

fn ns(namespace: &str) -> [(&str, &str); 1] {
    [("x-namespace", namespace)]
}

fn sql_in(server: &Running, namespace: &str, statements: &[&str]) -> Value {
    let mut requests: Vec<Value> = statements.iter().map(|s| execute(s)).collect();
    requests.push(close());
    let (status, response) = server.pipeline_at("/v2/pipeline", &ns(namespace), None, json!(requests));
    assert_eq!(status, 200, "{response}");
    response
}

/// The rows of `SELECT count(*) FROM t` in `namespace`, if the server can answer yet.
fn count(server: &Running, namespace: &str) -> Option<i64> {
    let requests = json!([execute("SELECT count(*) FROM t"), close()]);
    let (status, response) = server.pipeline_at("/v2/pipeline", &ns(namespace), None, requests);
    if status != 200 || response["results"][0]["type"] != "ok" {
        return None;
    }
    rows(&response, 0)[0][0].as_str()?.parse().ok()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics(server: &Running) -> String {
    let (status, body) = server.request("GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The value of the series whose line starts with `series` (name and first labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.rsplit_once(' ')?.1.parse().ok())
}

fn replica_with(primary: &Running, token: Option<&str>) -> Running {
    let url = format!("http://{}", primary.addr);
    let token = token.map(str::to_string);
    start(move |config| {
        config.replica_of = Some(url);
        config.replica_auth_token = token;
    })
}

/// A replica asked for `namespace`: it follows it from then on.
fn ask_for(replica: &Running, namespace: &str) {
    let requests = json!([execute("SELECT 1"), close()]);
    let (_, first) = replica.pipeline_at("/v2/pipeline", &ns(namespace), None, requests);
    assert_eq!(error_code(&first, 0), "SQLITE_CANTOPEN", "{first}");
}

#[test]
fn a_replica_follows_a_primary_with_auth_only_with_a_token_it_accepts() {
    logs();
    let primary = start(|config| config.auth = Arc::new(Auth::SharedToken("the-token".into())));
    for namespace in ["auth-none", "auth-wrong", "auth-ok"] {
        let auth = [("authorization", "Bearer the-token"), ("x-namespace", namespace)];
        let statements = json!([execute("CREATE TABLE t(v)"), execute("INSERT INTO t VALUES (1)"), close()]);
        let (status, response) = primary.pipeline_at("/v2/pipeline", &auth, None, statements);
        assert_eq!(status, 200, "{response}");
    }
    let none = replica_with(&primary, None);
    let wrong = replica_with(&primary, Some("not-the-token"));
    let good = replica_with(&primary, Some("the-token"));
    ask_for(&none, "auth-none");
    ask_for(&wrong, "auth-wrong");
    ask_for(&good, "auth-ok");
    wait_until("the replica with the token follows", || count(&good, "auth-ok") == Some(1));
    // Long enough for several retries of the refused ones.
    std::thread::sleep(Duration::from_millis(1500));
    for (replica, namespace, why) in
        [(&none, "auth-none", "Authorization header is required"), (&wrong, "auth-wrong", "the token is not valid")]
    {
        assert_eq!(count(replica, namespace), None, "{namespace} followed without valid credentials");
        let said = lines_with(namespace, "refuses this replica's credentials");
        assert_eq!(said.len(), 1, "logged once, not at every retry: {said:?}");
        assert!(said[0].contains(why) && said[0].contains("401"), "{}", said[0]);
        assert!(!said[0].contains("not-the-token"), "a token in the log: {}", said[0]);
        let refused = format!("libsql_wal_replica_auth_refused{{namespace=\"{namespace}\"}}");
        assert_eq!(sample(&metrics(replica), &refused), Some(1.0), "{namespace}");
        let connected = format!("libsql_wal_replica_connected{{namespace=\"{namespace}\"}}");
        assert_eq!(sample(&metrics(replica), &connected), Some(0.0), "{namespace}");
    }
    let text = metrics(&good);
    assert_eq!(sample(&text, "libsql_wal_replica_auth_refused{namespace=\"auth-ok\"}"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "libsql_wal_replica_connected{namespace=\"auth-ok\"}"), Some(1.0), "{text}");
}

#[test]
fn both_sides_show_the_lag_until_the_replica_catches_up() {
    logs();
    let primary = start(|_| {});
    sql_in(&primary, "lagged", &["CREATE TABLE t(v BLOB)"]);
    let replica = replica_with(&primary, None);
    ask_for(&replica, "lagged");
    wait_until("the replica follows", || count(&replica, "lagged") == Some(0));
    let streams = "libsql_wal_replication_streams{namespace=\"lagged\"}";
    let stream_frames = "libsql_wal_replication_stream_lag_frames{namespace=\"lagged\"";
    wait_until("the primary shows one stream", || sample(&metrics(&primary), streams) == Some(1.0));
    let lag_frames = "libsql_wal_replica_lag_frames{namespace=\"lagged\"}";
    let lag_seconds = "libsql_wal_replica_lag_seconds{namespace=\"lagged\"}";
    // Large transactions: each is applied only once all of it came, so the replica knows
    // of the commit (the info frame before it) a while before it has applied it.
    let (mut most_frames, mut most_seconds) = (0f64, 0f64);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for _ in 0..8 {
                sql_in(
                    &primary,
                    "lagged",
                    &["WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 400) \
                       INSERT INTO t SELECT randomblob(20000) FROM c"],
                );
            }
        });
        while !writer.is_finished() {
            let text = metrics(&replica);
            most_frames = most_frames.max(sample(&text, lag_frames).unwrap_or(0.0));
            most_seconds = most_seconds.max(sample(&text, lag_seconds).unwrap_or(0.0));
        }
    });
    assert!(most_frames > 0.0 && most_seconds > 0.0, "no lag ever shown: {most_frames} frames, {most_seconds} s");
    wait_until("the replica caught up", || count(&replica, "lagged") == Some(3200));
    wait_until("the lag went back to 0", || {
        let text = metrics(&replica);
        sample(&text, lag_frames) == Some(0.0) && sample(&text, lag_seconds) == Some(0.0)
    });
    wait_until("the primary's stream shows no lag", || {
        let text = metrics(&primary);
        sample(&text, stream_frames) == Some(0.0)
            && sample(&text, "libsql_wal_replication_stream_lag_seconds{namespace=\"lagged\"") == Some(0.0)
    });
    let text = metrics(&replica);
    assert_eq!(sample(&text, "libsql_wal_replica_connected{namespace=\"lagged\"}"), Some(1.0), "{text}");
    // The replica gone, its stream's series go too.
    replica.stop().unwrap();
    wait_until("the stream's series are gone", || {
        let text = metrics(&primary);
        sample(&text, stream_frames).is_none() && sample(&text, streams).is_none()
    });
}

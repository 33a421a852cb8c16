//! `GET /metrics` of a server started in process: after a pipeline it shows the library's
//! commit counter, the request counter by route template and status, the open batons; a
//! token sent in `Authorization`, in a query or in a path never appears in the metrics nor
//! in the log lines (spans included) the server writes meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libsql_wal::Storage;
use libsql_wal_server::{Server, ServerConfig};

const SECRET: &str = "SECRET123";

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

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// One HTTP/1.1 request, `Connection: close`; returns the status and the body.
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The log lines of the whole binary (one subscriber per process).
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .init();
        logs
    })
}

/// A server serving on its own runtime until `stop` is sent.
struct Running {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    fn start(config: ServerConfig) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = runtime.block_on(Server::bind(config)).unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running { runtime, addr, stop, serving }
    }

    fn stop(self) {
        self.stop.send(()).unwrap();
        self.runtime.block_on(self.serving).unwrap().unwrap();
    }
}

#[test]
fn metrics_show_the_work_and_never_a_secret() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf()));
    let addr = running.addr;

    // A pipeline that writes and closes its stream, and one that keeps its stream (a baton).
    let write = r#"{"baton":null,"requests":[
        {"type":"execute","stmt":{"sql":"CREATE TABLE t(x)"}},
        {"type":"execute","stmt":{"sql":"INSERT INTO t VALUES (1), (2)"}},
        {"type":"close"}]}"#;
    let (status, body) = request(addr, "POST", "/v2/pipeline", &[JSON], write);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"error\""), "{body}");
    let keep = r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT count(*) FROM t"}}]}"#;
    let (status, body) = request(addr, "POST", "/v2/pipeline", &[JSON], keep);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"baton\":\""), "the stream stays open: {body}");
    // The same through a namespace in the path, so the route's template is what counts.
    let (status, body) = request(addr, "POST", "/dev/other/v3/pipeline", &[JSON], write);
    assert_eq!(status, 200, "{body}");

    // A secret wherever a client might put one: a header, a query, a path, a baton.
    let auth = ("Authorization", "Bearer SECRET123");
    let close = r#"{"baton":null,"requests":[{"type":"close"}]}"#;
    assert_eq!(request(addr, "POST", "/v2/pipeline?token=SECRET123", &[JSON, auth], close).0, 200);
    assert_eq!(request(addr, "GET", "/SECRET123", &[auth], "").0, 404);
    let stolen = r#"{"baton":"SECRET123","requests":[{"type":"close"}]}"#;
    assert_eq!(request(addr, "POST", "/v3/pipeline", &[JSON, auth], stolen).0, 400);

    let (status, text) = request(addr, "GET", "/metrics", &[auth], "");
    assert_eq!(status, 200, "{text}");
    assert!(sample(&text, "libsql_wal_commits_total").is_some_and(|n| n >= 2.0), "{text}");
    assert!(sample(&text, "libsql_wal_frames_written_total").is_some_and(|n| n >= 2.0), "{text}");
    assert!(text.contains("# TYPE libsql_wal_commits_total counter"), "{text}");
    let pipeline_ok = r#"libsql_wal_http_requests_total{route="/v2/pipeline",status="200"}"#;
    assert!(sample(&text, pipeline_ok).is_some_and(|n| n >= 3.0), "{text}");
    let dev_ok = r#"libsql_wal_http_requests_total{route="/dev/{namespace}/v3/pipeline",status="200"}"#;
    assert_eq!(sample(&text, dev_ok), Some(1.0), "{text}");
    let expired = r#"libsql_wal_http_requests_total{route="/v3/pipeline",status="400"}"#;
    assert_eq!(sample(&text, expired), Some(1.0), "{text}");
    assert!(text.contains("libsql_wal_http_request_duration_seconds_bucket{route=\"/v2/pipeline\",le="), "{text}");
    assert_eq!(sample(&text, "libsql_wal_open_batons"), Some(1.0), "{text}");
    assert!(sample(&text, "libsql_wal_open_logs").is_some_and(|n| n >= 1.0), "{text}");
    assert!(!text.contains("namespace=\"other\""), "no namespace series without storage: {text}");
    assert!(!text.contains(SECRET), "a secret in the metrics: {text}");

    // A second scrape counts the first one (the other test of this binary scrapes too).
    let (_, again) = request(addr, "GET", "/metrics", &[], "");
    let scraped = sample(&again, r#"libsql_wal_http_requests_total{route="/metrics",status="200"}"#);
    assert!(scraped.is_some_and(|n| n >= 1.0), "{again}");

    running.stop();
    let logs = logs.text();
    assert!(logs.contains("request{method=POST route=/v2/pipeline"), "a span per request: {logs}");
    assert!(!logs.contains(SECRET), "a secret in the logs: {logs}");
}

/// With storage, an open log has its namespace's durable and lag series; once the log is
/// closed they are gone from the next scrape (the exporter drops gauges a scrape did not
/// refresh), so namespaces used once never pile up series.
#[test]
fn namespace_series_exist_only_while_the_log_is_open() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("dbs"));
    config.storage = Some(Storage::open(&format!("file://{}", dir.path().join("store").display())).unwrap());
    // A stream's connection closes with it: once the pipeline ends the log is idle.
    let running = Running::start(config);
    let addr = running.addr;
    let write = r#"{"baton":null,"requests":[
        {"type":"execute","stmt":{"sql":"CREATE TABLE t(x)"}},
        {"type":"execute","stmt":{"sql":"INSERT INTO t VALUES (1)"}},
        {"type":"close"}]}"#;
    let (status, body) = request(addr, "POST", "/dev/shipped-ns/v2/pipeline", &[JSON], write);
    assert_eq!(status, 200, "{body}");

    let lag = r#"libsql_wal_storage_lag_frames{namespace="shipped-ns"}"#;
    let (_, text) = request(addr, "GET", "/metrics", &[], "");
    assert!(sample(&text, lag).is_some(), "{text}");
    assert!(sample(&text, r#"libsql_wal_storage_lag_seconds{namespace="shipped-ns"}"#).is_some(), "{text}");

    // Close the idle log (as the descriptor bound would), then scrape past the idle timeout.
    libsql_wal::set_idle_open_files_max(0);
    libsql_wal::set_idle_open_files_max(libsql_wal::DEFAULT_IDLE_OPEN_FILES_MAX);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, text) = request(addr, "GET", "/metrics", &[], "");
    assert!(!text.contains("namespace=\"shipped-ns\""), "a closed log's series: {text}");
    running.stop();
}

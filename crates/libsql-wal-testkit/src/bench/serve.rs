//! `libsql-wal bench serve`: the server under load beside the same workload through the
//! library in process (the server's overhead is the ratio), and many namespaces touched
//! once (descriptors and memory must stay bounded).
//!
//! The server runs in this process on loopback; clients are threads with one keep-alive
//! connection each (libSQL's clients keep theirs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libsql_wal::{Checkpointer, LibsqlWalManager, WalConfig, io::StdIo, open_connection};
use libsql_wal_server::{Server, ServerConfig};

use crate::http::Client;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub clients: usize,
    pub namespaces: usize,
    pub seconds: u64,
    /// Percent of operations that write (an upsert); the rest read a row by key.
    pub write_percent: u32,
    /// Rows in each namespace's table before the run.
    pub rows: u64,
}

/// One side's figures.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone)]
pub struct ServeLoadReport {
    pub server: LoadReport,
    pub in_process: LoadReport,
}

/// A server on `dir` in this process, stopped when dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    pub(crate) fn start(dir: &Path) -> Result<Running, String> {
        Running::start_with(ServerConfig::new("127.0.0.1:0".parse().expect("an address"), dir.to_path_buf()))
    }

    pub(crate) fn start_with(config: ServerConfig) -> Result<Running, String> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let server = Server::bind(config).await?;
                let _ = addr_tx.send(server.local_addr().map_err(|e| e.to_string()));
                server
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = addr_rx.recv().map_err(|_| "the server did not start".to_string())??;
        Ok(Running { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub(crate) fn stop(mut self) -> Result<(), String> {
        self.stop_now()
    }

    fn stop_now(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| "the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_now();
    }
}

fn manager() -> LibsqlWalManager {
    let config = WalConfig { keep_open_when_idle: true, ..WalConfig::default() };
    LibsqlWalManager::new(StdIo::shared(), config).with_checkpointer(Checkpointer::global())
}

fn namespace(i: usize) -> String {
    format!("ns{i:05}")
}

fn prepare(dir: &Path, config: &LoadConfig) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let manager = manager();
    for i in 0..config.namespaces {
        let conn = open_connection(dir.join(format!("{}.db", namespace(i))), &manager).map_err(|e| e.to_string())?;
        conn.execute_batch(&format!(
            "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {})
             INSERT INTO kv SELECT i, printf('%.100c', 'v') FROM c;",
            config.rows
        ))
        .map_err(|e| e.to_string())?;
    }
    libsql_wal::close_idle_logs();
    Ok(())
}

/// What one operation is: the namespace, a key, whether it writes.
fn next_op(rng: &mut fastrand::Rng, config: &LoadConfig) -> (usize, u64, bool) {
    (rng.usize(..config.namespaces), rng.u64(1..=config.rows), rng.u32(..100) < config.write_percent)
}

fn summarize(mut latencies_us: Vec<u32>, errors: u64, elapsed: Duration) -> LoadReport {
    latencies_us.sort_unstable();
    let at = |q: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 * q) as usize).min(latencies_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    LoadReport {
        requests: latencies_us.len() as u64,
        errors,
        per_sec: latencies_us.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// Runs `op` on `clients` threads until the time is up; `op` returns whether it succeeded.
fn drive<S>(
    config: &LoadConfig,
    mut state: impl FnMut() -> S + Send + Sync,
    op: impl Fn(&mut S, (usize, u64, bool)) -> bool + Send + Sync,
) -> LoadReport
where
    S: Send,
{
    let deadline = Instant::now() + Duration::from_secs(config.seconds);
    let started = Instant::now();
    let states: Vec<S> = (0..config.clients).map(|_| state()).collect();
    let results: Vec<(Vec<u32>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(i, mut st)| {
                let op = &op;
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(i as u64 + 1);
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    while Instant::now() < deadline {
                        let next = next_op(&mut rng, config);
                        let t = Instant::now();
                        if op(&mut st, next) {
                            latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        } else {
                            errors += 1;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = started.elapsed();
    let errors = results.iter().map(|(_, e)| e).sum();
    summarize(results.into_iter().flat_map(|(l, _)| l).collect(), errors, elapsed)
}

fn sql_of((_, key, write): (usize, u64, bool)) -> String {
    if write {
        format!("INSERT OR REPLACE INTO kv VALUES ({key}, printf('%.100c', 'w'))")
    } else {
        format!("SELECT v FROM kv WHERE k = {key}")
    }
}

/// The mixed workload through `serve`, then through the library in process.
pub fn serve_load(dir: &Path, config: &LoadConfig) -> Result<ServeLoadReport, String> {
    let served = dir.join("served");
    let local = dir.join("in-process");
    prepare(&served, config)?;
    prepare(&local, config)?;

    let running = Running::start(&served)?;
    let addr = running.addr;
    let server = drive(
        config,
        || Client::new(addr),
        |client, op| {
            let body = format!(
                r#"{{"baton":null,"requests":[{{"type":"execute","stmt":{{"sql":{}}}}},{{"type":"close"}}]}}"#,
                serde_json::to_string(&sql_of(op)).unwrap_or_default()
            );
            let ns = namespace(op.0);
            match client.post("/v2/pipeline", &[("x-namespace", &ns)], body.as_bytes()) {
                Ok((200, reply)) => !reply.windows(15).any(|w| w == br#""type":"error""#),
                _ => false,
            }
        },
    );
    running.stop()?;

    let manager = manager();
    let in_process = drive(
        config,
        || (),
        |(), op| {
            // As the server does: a connection per request, the log kept open between them.
            let path: PathBuf = local.join(format!("{}.db", namespace(op.0)));
            let Ok(conn) = open_connection(&path, &manager) else { return false };
            if conn.busy_timeout(Duration::from_secs(5)).is_err() {
                return false;
            }
            let sql = sql_of(op);
            if op.2 { conn.execute(&sql, []).is_ok() } else { conn.query_row(&sql, [], |_| Ok(())).is_ok() }
        },
    );
    libsql_wal::close_idle_logs();
    Ok(ServeLoadReport { server, in_process })
}

#[derive(Debug, Clone)]
pub struct NamespacesReport {
    pub namespaces: usize,
    pub per_sec: f64,
    pub errors: u64,
    pub peak_open_fds: usize,
    pub final_open_fds: usize,
    pub peak_rss_mib: f64,
    pub final_rss_mib: f64,
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `n` namespaces, each created and written once through `serve`.
pub fn many_namespaces(dir: &Path, n: usize) -> Result<NamespacesReport, String> {
    let running = Running::start(&dir.join("many"))?;
    let mut client = Client::new(running.addr);
    let body = br#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"CREATE TABLE t(x)"}},{"type":"execute","stmt":{"sql":"INSERT INTO t VALUES (randomblob(100))"}},{"type":"close"}]}"#;
    let (mut peak_fds, mut peak_rss, mut errors) = (0, 0f64, 0u64);
    let started = Instant::now();
    for i in 0..n {
        let ns = namespace(i);
        match client.post("/v2/pipeline", &[("x-namespace", &ns)], body) {
            Ok((200, reply)) if !reply.windows(15).any(|w| w == br#""type":"error""#) => {}
            _ => errors += 1,
        }
        if i % 100 == 0 {
            peak_fds = peak_fds.max(open_fds());
            peak_rss = peak_rss.max(rss_mib());
        }
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    let (final_open_fds, final_rss_mib) = (open_fds(), rss_mib());
    running.stop()?;
    Ok(NamespacesReport {
        namespaces: n,
        per_sec,
        errors,
        peak_open_fds: peak_fds.max(final_open_fds),
        final_open_fds,
        peak_rss_mib: peak_rss.max(final_rss_mib),
        final_rss_mib,
    })
}

/// `--ack durable` against `local`, on the same S3 server on loopback.
#[derive(Debug, Clone)]
pub struct AckReport {
    pub clients: usize,
    pub local: LoadReport,
    pub durable: LoadReport,
    /// Commits acknowledged durable, and segment objects they were uploaded in.
    pub durable_commits: u64,
    pub durable_uploads: usize,
    /// Median of single 4 KiB PUTs to the same server: the round trip a flush costs at least.
    pub put_ms: f64,
    /// One client alone with `--ack durable`: every commit waits for a flush of its own
    /// (seal, listing, PUT of the segment, listing), so its p50 is what one flush costs.
    pub durable_alone: LoadReport,
}

/// `clients` threads, each committing one row per request, for `seconds`, first with
/// `--ack local` then `--ack durable`, both shipping to an `s3s-fs` server on loopback.
pub fn ack_latency(dir: &Path, clients: usize, seconds: u64) -> Result<AckReport, String> {
    use crate::bench::loopback_s3::S3Server;
    use libsql_wal_server::Ack;
    let s3 = S3Server::start(&dir.join("s3")).map_err(|e| e.to_string())?;
    let put_ms = put_round_trip_ms(&s3)?;
    let run = |name: &str, clients: usize, ack: Ack| -> Result<(LoadReport, usize), String> {
        let config = LoadConfig { clients, namespaces: 1, seconds, write_percent: 100, rows: 1 };
        let storage = s3.storage(name, Default::default()).map_err(|e| e.to_string())?;
        let mut server_config = ServerConfig::new("127.0.0.1:0".parse().expect("an address"), dir.join(name));
        server_config.storage = Some(storage.clone());
        server_config.ack = ack;
        let running = Running::start_with(server_config)?;
        let addr = running.addr;
        let mut setup = Client::new(addr);
        let create =
            br#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"CREATE TABLE t(x)"}},{"type":"close"}]}"#;
        setup.post("/v2/pipeline", &[], create).map_err(|e| e.to_string())?;
        let before = storage.list("default").map(|o| o.len()).unwrap_or(0);
        let report = drive(
            &config,
            || Client::new(addr),
            |client, _| {
                let insert = br#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"INSERT INTO t VALUES (randomblob(64))"}},{"type":"close"}]}"#;
                matches!(client.post("/v2/pipeline", &[], insert), Ok((200, reply)) if !reply.windows(15).any(|w| w == br#""type":"error""#))
            },
        );
        let uploads = storage.list("default").map(|o| o.len()).unwrap_or(0).saturating_sub(before);
        running.stop()?;
        Ok((report, uploads))
    };
    let durable_ack = Ack::Durable { timeout: Duration::from_secs(30) };
    let (local, _) = run("ack-local", clients, Ack::Local)?;
    let (durable, durable_uploads) = run("ack-durable", clients, durable_ack)?;
    let (durable_alone, _) = run("ack-durable-alone", 1, durable_ack)?;
    Ok(AckReport { clients, durable_commits: durable.requests, local, durable, durable_uploads, put_ms, durable_alone })
}

fn put_round_trip_ms(s3: &crate::bench::loopback_s3::S3Server) -> Result<f64, String> {
    use crate::bench::loopback_s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
    use libsql_wal::object_store::{ObjectStore, PutPayload, aws::AmazonS3Builder, path::Path as ObjectPath};
    let store = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{}", s3.port()))
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region("us-east-1")
        .build()
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut times = Vec::new();
        for i in 0..21 {
            let key = ObjectPath::from(format!("probe/{i}"));
            let t = Instant::now();
            store.put(&key, PutPayload::from(vec![0u8; 4096])).await.map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    })
}

//! `libsql-wal bench replication`: a primary `serve` and replicas (`--replica-of`) in this
//! process on loopback.
//!
//! - **Lag**: commits paced at a rate, each noted when acknowledged; an observer asks the
//!   replica where it is (`x-libsql-wal-frame-no`) as often as it can: a commit's lag runs
//!   from its acknowledgement to the first answer at or past it (at most one round trip to
//!   the replica late).
//! - **Throughput**: the primary's commits/s alone and with `replicas` streams read and
//!   dropped (its own cost of serving them: the replicas' work is on other machines),
//!   alternating for 3 rounds, medians; then with `replicas` real replicas on this machine
//!   (their work shares its 2 cores and disk), and optionally with their files elsewhere.
//! - **Catch-up**: a new replica of a database of `catchup_mib`, timed until it holds the
//!   primary's last commit: from the primary (image, then stream), then with `--storage`
//!   (restore from a local-directory store, then the primary's tail).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libsql_wal_server::ServerConfig;

use super::serve::Running;
use crate::http::Client;

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub commits_per_sec: u32,
    pub lag_seconds: u64,
    pub replicas: usize,
    pub clients: usize,
    pub throughput_seconds: u64,
    pub catchup_mib: u64,
    /// Where the throughput figure's replicas keep their files besides the run's directory
    /// (e.g. a tmpfs, standing for disks of their own: on one machine they otherwise share
    /// the primary's disk and its syncs).
    pub replicas_elsewhere: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct ReplicationReport {
    pub lag_samples: usize,
    pub achieved_per_sec: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub lag_errors: u64,
    pub alone_per_sec: f64,
    pub with_replicas_per_sec: f64,
    /// With the replicas' files in `replicas_elsewhere`, if given.
    pub with_replicas_elsewhere_per_sec: Option<f64>,
    /// With `replicas` streams read and dropped on arrival: the primary's own cost of
    /// serving them, the replicas' work being elsewhere (other machines).
    pub with_streams_only_per_sec: f64,
    pub throughput_errors: u64,
    pub catchup_bytes: u64,
    /// A new replica from the primary (image, then stream).
    pub catchup_seconds: f64,
    /// A new replica with `--storage` (restore from a local-directory store, then the
    /// primary's tail).
    pub storage_catchup_seconds: f64,
}

const SETUP: &str = "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, at INTEGER, v BLOB)";

fn pipeline(client: &mut Client, headers: &[(&str, &str)], sql: &str) -> Result<Option<u64>, String> {
    let body = format!(
        r#"{{"baton":null,"requests":[{{"type":"execute","stmt":{{"sql":{}}}}},{{"type":"close"}}]}}"#,
        serde_json::to_string(sql).map_err(|e| e.to_string())?
    );
    let (status, head, reply) =
        client.post_with_head("/v2/pipeline", headers, body.as_bytes()).map_err(|e| e.to_string())?;
    if status != 200 || reply.windows(15).any(|w| w == br#""type":"error""#) {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&reply)));
    }
    Ok(crate::http::header_value(&head, "x-libsql-wal-frame-no").and_then(|v| v.parse().ok()))
}

fn replica_of(primary: SocketAddr, dir: &Path) -> Result<Running, String> {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("an address"), dir.to_path_buf());
    config.replica_of = Some(format!("http://{primary}"));
    config.limits.request_duration_max = Duration::from_secs(600);
    Running::start_with(config)
}

/// Waits on `replica` until it holds `frame_no` (a read naming it).
fn wait_for(client: &mut Client, frame_no: u64) -> Result<(), String> {
    let wanted = frame_no.to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match pipeline(client, &[("x-libsql-wal-wait-frame-no", &wanted)], "SELECT 1") {
            Ok(_) => return Ok(()),
            // Before the replica holds the namespace: SQLITE_CANTOPEN, asked again.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e),
        }
    }
}

pub fn run(dir: &Path, config: &ReplicationConfig) -> Result<ReplicationReport, String> {
    let mut report = ReplicationReport::default();
    lag(dir, config, &mut report)?;
    throughput(dir, config, &mut report)?;
    catchup(dir, config, &mut report)?;
    Ok(report)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

fn lag(dir: &Path, config: &ReplicationConfig, report: &mut ReplicationReport) -> Result<(), String> {
    let primary = Running::start(&dir.join("lag-primary"))?;
    let replica = replica_of(primary.addr, &dir.join("lag-replica"))?;
    let first = pipeline(&mut Client::new(primary.addr), &[], SETUP)?.ok_or("no frame_no in the response")?;
    wait_for(&mut Client::new(replica.addr), first)?;

    // Writers pace the commits and note when each was acknowledged; an observer asks the
    // replica where it is (`x-libsql-wal-frame-no`) as often as it can, noting when each
    // answer came. A commit's lag: from its acknowledgement to the first answer at or past
    // it that came after it (so at most one round trip to the replica late).
    let writers = 4usize;
    let interval = Duration::from_secs_f64(writers as f64 / config.commits_per_sec.max(1) as f64);
    let acks = Mutex::new(Vec::<(u64, Instant)>::new());
    let seen = Mutex::new(Vec::<(u64, Instant)>::new());
    let errors = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let end = started + Duration::from_secs(config.lag_seconds);
    let writing = std::sync::atomic::AtomicUsize::new(writers);
    std::thread::scope(|s| {
        for w in 0..writers {
            let (acks, errors, writing) = (&acks, &errors, &writing);
            s.spawn(move || {
                let mut client = Client::new(primary.addr);
                let mut next = Instant::now() + interval.mul_f64(w as f64 / writers as f64);
                while next < end {
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    next += interval;
                    let sql = "INSERT INTO log(at, v) VALUES (unixepoch('subsec'), randomblob(100))";
                    match pipeline(&mut client, &[], sql) {
                        Ok(Some(frame_no)) => {
                            acks.lock().unwrap_or_else(|e| e.into_inner()).push((frame_no, Instant::now()))
                        }
                        _ => drop(errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                    }
                }
                writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let (seen, writing, acks) = (&seen, &writing, &acks);
        s.spawn(move || {
            let mut client = Client::new(replica.addr);
            let mut last_wanted = None;
            loop {
                if let Ok(Some(frame_no)) = pipeline(&mut client, &[], "SELECT 1") {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push((frame_no, Instant::now()));
                    if last_wanted.is_some_and(|w| frame_no >= w) {
                        return;
                    }
                }
                if last_wanted.is_none() && writing.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    last_wanted = acks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|a| a.0).max();
                }
                if Instant::now() > end + Duration::from_secs(60) {
                    return;
                }
            }
        });
    });
    let elapsed = started.elapsed().as_secs_f64();
    let acks = acks.into_inner().unwrap_or_else(|e| e.into_inner());
    let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut lags: Vec<f64> = acks
        .iter()
        .filter_map(|&(frame_no, acked)| {
            let at = seen.iter().find(|&&(f, t)| f >= frame_no && t >= acked)?;
            Some(at.1.duration_since(acked).as_secs_f64() * 1e3)
        })
        .collect();
    report.lag_errors = errors.into_inner() + (acks.len() - lags.len()) as u64;
    lags.sort_by(f64::total_cmp);
    report.lag_samples = lags.len();
    report.achieved_per_sec = acks.len() as f64 / elapsed.min(config.lag_seconds as f64).max(f64::MIN_POSITIVE);
    report.lag_p50_ms = quantile(&lags, 0.50);
    report.lag_p99_ms = quantile(&lags, 0.99);
    report.lag_max_ms = lags.last().copied().unwrap_or(0.0);
    replica.stop()?;
    primary.stop()
}

/// Commits/s of `clients` writing as fast as they can for `seconds`.
fn commit_rate(primary: SocketAddr, clients: usize, seconds: u64) -> (f64, u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let mut client = Client::new(primary);
                    let (mut ok, mut failed) = (0, 0);
                    while Instant::now() < end {
                        match pipeline(&mut client, &[], "INSERT INTO log(at, v) VALUES (0, randomblob(100))") {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    (ok as f64 / started.elapsed().as_secs_f64(), counts.iter().map(|c| c.1).sum())
}

/// A replica's stream of the primary's log from its current image's position, read and
/// dropped until `stop`; returns the bytes read.
fn drain_stream(primary: SocketAddr, stop: &std::sync::atomic::AtomicBool) -> Result<u64, String> {
    use std::io::{Read, Write};
    let (status, image) = crate::http::http(primary, "GET", "/replication/v1/image", &[], b"");
    let mark = image.get(72..92).filter(|_| status == 200).ok_or("no image")?;
    let mut frame_no = [0u8; 8];
    frame_no[..6].copy_from_slice(&mark[..6]);
    let u32_at = |at: usize| u32::from_le_bytes(mark[at..at + 4].try_into().expect("4 bytes"));
    let position = format!("{:08x}-{}-{:08x}", u32_at(10), u64::from_le_bytes(frame_no), u32_at(14));
    let mut stream = std::net::TcpStream::connect(primary).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    write!(stream, "GET /replication/v1/frames?position={position} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return Err("the primary ended the stream".into()),
            Ok(n) => bytes += n as u64,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(bytes)
}

/// Rounds of the primary alone and with streams only, alternating; the medians are reported.
const THROUGHPUT_ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The primary's commits/s while `replicas` streams are read and dropped.
fn rate_with_streams(primary: SocketAddr, config: &ReplicationConfig) -> Result<(f64, u64), String> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(f64, u64), String> {
        let readers: Vec<_> = (0..config.replicas).map(|_| s.spawn(|| drain_stream(primary, &stop))).collect();
        let measured = commit_rate(primary, config.clients, config.throughput_seconds);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for reader in readers {
            reader.join().map_err(|_| "a stream reader panicked".to_string())??;
        }
        Ok(measured)
    })
}

fn throughput(dir: &Path, config: &ReplicationConfig, report: &mut ReplicationReport) -> Result<(), String> {
    let primary = Running::start(&dir.join("tp-primary"))?;
    let first = pipeline(&mut Client::new(primary.addr), &[], SETUP)?.ok_or("no frame_no in the response")?;
    let (mut alone, mut streams) = (Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_ROUNDS {
        let (rate, errors) = commit_rate(primary.addr, config.clients, config.throughput_seconds);
        alone.push(rate);
        report.throughput_errors += errors;
        let (rate, errors) = rate_with_streams(primary.addr, config)?;
        streams.push(rate);
        report.throughput_errors += errors;
    }
    report.alone_per_sec = median(alone);
    report.with_streams_only_per_sec = median(streams);
    let mut replicas = Vec::new();
    for i in 0..config.replicas {
        let replica = replica_of(primary.addr, &dir.join(format!("tp-replica-{i}")))?;
        wait_for(&mut Client::new(replica.addr), first)?;
        replicas.push(replica);
    }
    let (with, errors_with) = commit_rate(primary.addr, config.clients, config.throughput_seconds);
    report.with_replicas_per_sec = with;
    report.throughput_errors += errors_with;
    for replica in replicas {
        replica.stop()?;
    }
    if let Some(elsewhere) = &config.replicas_elsewhere {
        let scratch = elsewhere.join(format!("libsql-wal-bench-replicas-{}", std::process::id()));
        let mut replicas = Vec::new();
        for i in 0..config.replicas {
            let replica = replica_of(primary.addr, &scratch.join(format!("replica-{i}")))?;
            let now = pipeline(&mut Client::new(primary.addr), &[], "SELECT 1")?.ok_or("no frame_no")?;
            wait_for(&mut Client::new(replica.addr), now)?;
            replicas.push(replica);
        }
        let (elsewhere, errors) = commit_rate(primary.addr, config.clients, config.throughput_seconds);
        report.with_replicas_elsewhere_per_sec = Some(elsewhere);
        report.throughput_errors += errors;
        for replica in replicas {
            replica.stop()?;
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    primary.stop()
}

fn catchup(dir: &Path, config: &ReplicationConfig, report: &mut ReplicationReport) -> Result<(), String> {
    let primary_dir = dir.join("cu-primary");
    let store = dir.join("cu-store");
    std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
    let storage =
        libsql_wal::storage::Storage::open(&format!("file://{}", store.display())).map_err(|e| e.to_string())?;
    let with_storage = |db_dir: &Path| {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("an address"), db_dir.to_path_buf());
        config.storage = Some(storage.clone());
        config
    };
    let primary = Running::start_with(with_storage(&primary_dir))?;
    let mut client = Client::new(primary.addr);
    pipeline(&mut client, &[], SETUP)?;
    // 1 MiB per commit: 1024 rows of 1000 bytes.
    for _ in 0..config.catchup_mib {
        let sql = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1024) \
                   INSERT INTO log(at, v) SELECT 0, randomblob(1000) FROM c";
        pipeline(&mut client, &[], sql)?;
    }
    // A clean stop flushes every commit to storage; the restarted primary goes on.
    primary.stop()?;
    let primary = Running::start_with(with_storage(&primary_dir))?;
    let last = pipeline(&mut Client::new(primary.addr), &[], "INSERT INTO log(at, v) VALUES (1, x'00')")?
        .ok_or("no frame_no in the response")?;
    report.catchup_bytes = std::fs::metadata(primary_dir.join("default.db")).map(|m| m.len()).unwrap_or(0);

    let started = Instant::now();
    let replica = replica_of(primary.addr, &dir.join("cu-replica"))?;
    wait_for(&mut Client::new(replica.addr), last)?;
    report.catchup_seconds = started.elapsed().as_secs_f64();
    replica.stop()?;
    let _ = std::fs::remove_dir_all(dir.join("cu-replica"));

    let mut config = with_storage(&dir.join("cu-replica-storage"));
    config.replica_of = Some(format!("http://{}", primary.addr));
    config.limits.request_duration_max = Duration::from_secs(600);
    let started = Instant::now();
    let replica = Running::start_with(config)?;
    wait_for(&mut Client::new(replica.addr), last)?;
    report.storage_catchup_seconds = started.elapsed().as_secs_f64();
    replica.stop()?;
    primary.stop()
}

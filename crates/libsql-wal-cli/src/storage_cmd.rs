//! The storage side of the CLI: `--storage`/`--namespace` on database commands, `restore`,
//! and `storage ls`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use libsql_wal::{LibsqlWalManager, LogInfo, Storage};

/// How often a waiting `exec` says what it waits for.
const WAIT_REPORT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Args, Debug, Clone, Default)]
pub struct StorageArgs {
    /// Ship sealed segments to this store: file:///dir, s3://bucket/prefix, gs://bucket,
    /// az://container, memory://name. Credentials and endpoints come from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, AWS_ALLOW_HTTP, GOOGLE_*, AZURE_*).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// The database's namespace in the store (default: the file name without extension).
    #[arg(long, value_name = "NS", requires = "storage")]
    pub namespace: Option<String>,
    /// Ship this database to the store and namespace given even though its log was shipped
    /// to another one (its durable record counts there): without this flag that is refused,
    /// since a mistyped --storage or --namespace would re-target the log. The history is
    /// then uploaded to the new namespace from scratch. (exec and checkpoint; info and
    /// verify change nothing.)
    #[arg(long, requires = "storage")]
    pub move_to_store: bool,
}

impl StorageArgs {
    /// The default manager (background checkpointer), with storage if asked for.
    pub fn manager(&self, db: &Path) -> Result<LibsqlWalManager, String> {
        self.attach(db, LibsqlWalManager::default())
    }

    pub fn attach(&self, db: &Path, manager: LibsqlWalManager) -> Result<LibsqlWalManager, String> {
        let Some(url) = &self.storage else { return Ok(manager) };
        let namespace = match &self.namespace {
            Some(namespace) => namespace.clone(),
            None => libsql_wal::namespace_of(db).map_err(|e| format!("{e} (name it with --namespace)"))?,
        };
        let storage = Storage::open(url).map_err(|e| e.to_string())?;
        manager
            .with_storage(storage)
            .with_move_to_store(self.move_to_store)
            .with_namespace(namespace)
            .map_err(|e| e.to_string())
    }
}

#[derive(Subcommand)]
pub enum StorageCommand {
    /// List the namespaces of a store, or the objects of one namespace with their frame
    /// ranges and times.
    Ls {
        #[arg(value_name = "URL")]
        url: String,
        #[arg(value_name = "NS")]
        namespace: Option<String>,
        /// One JSON document: for a namespace, its restorable window (`durable_frame_no`,
        /// `first_frame_no`, `last_frame_no`, `first_time`, `last_time`, `gaps`) and objects.
        #[arg(long)]
        json: bool,
    },
    /// Compact a namespace: write a snapshot of the latest state when its history has grown,
    /// pack small segments into larger objects, and delete what no restorable point of the
    /// retention window (and no branch) needs. The process that ships a namespace does this
    /// online too; this runs one step now.
    Compact {
        #[arg(value_name = "URL")]
        url: String,
        #[arg(value_name = "NS")]
        namespace: String,
        /// Every commit of the last DUR restores exactly (90s, 15m, 24h, 7d; default 7d).
        #[arg(long, value_name = "DUR", value_parser = libsql_wal::storage::history::parse_duration)]
        retention: Option<Duration>,
        /// Pack segments once this many bytes of consecutive ones are kept (default 32 MiB).
        #[arg(long, value_name = "BYTES")]
        pack_bytes_min: Option<u64>,
        /// Write a snapshot once the history after the newest one holds this many bytes
        /// (and a quarter of the database; default 4 MiB).
        #[arg(long, value_name = "BYTES")]
        snapshot_bytes_min: Option<u64>,
    },
    /// Make NEW_NS a branch of NS at a commit: its history is NS's up to there, then its own.
    /// No segment data is copied; NS keeps what the branch needs until `storage rm URL NEW_NS`.
    Branch {
        #[arg(value_name = "URL")]
        url: String,
        #[arg(value_name = "NS")]
        namespace: String,
        /// The last commit at or before this frame_no.
        #[arg(long, value_name = "N", conflicts_with = "timestamp", required_unless_present = "timestamp")]
        frame_no: Option<u64>,
        /// The last commit made at or before this time (RFC 3339).
        #[arg(long, value_name = "T", value_parser = libsql_wal::storage::history::parse_time)]
        timestamp: Option<u64>,
        #[arg(value_name = "NEW_NS")]
        new_namespace: String,
    },
    /// Remove a namespace from the store (refused while it has branches).
    Rm {
        #[arg(value_name = "URL")]
        url: String,
        #[arg(value_name = "NS")]
        namespace: String,
    },
}

pub fn run(command: StorageCommand) -> Result<ExitCode, String> {
    match command {
        StorageCommand::Ls { url, namespace, json } => ls(&url, namespace.as_deref(), json),
        StorageCommand::Compact { url, namespace, retention, pack_bytes_min, snapshot_bytes_min } => {
            let mut config = libsql_wal::storage::compaction::CompactionConfig::default();
            config.retention = retention.unwrap_or(config.retention);
            config.pack_bytes_min = pack_bytes_min.unwrap_or(config.pack_bytes_min);
            config.snapshot_bytes_min = snapshot_bytes_min.unwrap_or(config.snapshot_bytes_min);
            compact(&url, &namespace, &config)
        }
        StorageCommand::Branch { url, namespace, frame_no, timestamp, new_namespace } => {
            use libsql_wal::storage::history::RestorePoint;
            let point = match (frame_no, timestamp) {
                (Some(n), _) => RestorePoint::FrameNo(n),
                (None, Some(t)) => RestorePoint::Time(t),
                (None, None) => return Err("give --frame-no N or --timestamp T".into()),
            };
            let storage = Storage::open(&url).map_err(|e| e.to_string())?;
            let report = libsql_wal::storage::branch::create(&storage, &namespace, point, &new_namespace)
                .map_err(|e| e.to_string())?;
            let when =
                report.commit_unix_ms.map_or("time not recorded".into(), libsql_wal::storage::layout::format_unix_ms);
            outln!("{new_namespace} is a branch of {namespace} at frame_no {} (committed {when})", report.frame_no);
            Ok(ExitCode::SUCCESS)
        }
        StorageCommand::Rm { url, namespace } => {
            let storage = Storage::open(&url).map_err(|e| e.to_string())?;
            let deleted = libsql_wal::storage::branch::remove(&storage, &namespace).map_err(|e| e.to_string())?;
            if deleted == 0 {
                outln!("namespace {namespace} holds nothing in {}: nothing removed", storage.url());
            } else {
                outln!("removed namespace {namespace}: {deleted} objects deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn compact(
    url: &str,
    namespace: &str,
    config: &libsql_wal::storage::compaction::CompactionConfig,
) -> Result<ExitCode, String> {
    let storage = Storage::open(url).map_err(|e| e.to_string())?;
    let report = libsql_wal::storage::compaction::compact(&storage, namespace, config).map_err(|e| e.to_string())?;
    for key in &report.snapshots {
        outln!("snapshot written: {key}");
    }
    for key in &report.packs {
        outln!("pack written: {key}");
    }
    outln!(
        "compacted {namespace}: {} snapshot(s), {} pack(s) written; {} object(s) deleted ({} bytes); {} branch(es) kept restorable",
        report.snapshots.len(),
        report.packs.len(),
        report.deleted.len(),
        report.deleted_bytes,
        report.branches
    );
    if report.delete_failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &report.delete_failures {
        errln!("delete failed: {failure}");
    }
    Err(format!("{} delete(s) failed; the objects stay and the next compaction retries", report.delete_failures.len()))
}

fn ls(url: &str, namespace: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let storage = Storage::open(url).map_err(|e| e.to_string())?;
    if json {
        return ls_json(&storage, namespace);
    }
    let Some(namespace) = namespace else {
        for namespace in storage.list_namespaces().map_err(|e| e.to_string())? {
            let chain = storage.chain(&namespace).map_err(|e| e.to_string())?;
            outln!("{namespace}  durable up to frame {}  ({} bytes to restore)", chain.end_frame_no, chain.bytes());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let objects = storage.list(namespace).map_err(|e| e.to_string())?;
    let chain = libsql_wal::storage::layout::chain(&objects);
    outln!("namespace {namespace} in {}: {} objects", storage.url(), objects.len());
    for object in &objects {
        let used = chain.objects().any(|o| o.key == object.key);
        let stranded = chain.stranded.iter().any(|o| o.key == object.key);
        let conflicting = chain.conflicts.iter().any(|o| o.key == object.key);
        let note = if used {
            ""
        } else if conflicting {
            "  (another history for the same frames: restore refuses the namespace)"
        } else if stranded {
            "  (after a gap: not restorable)"
        } else {
            "  (superseded)"
        };
        outln!("  {object}{note}");
    }
    outln!("durable up to frame {}", chain.end_frame_no);
    let window = libsql_wal::storage::history::window(&objects);
    let time = |t: Option<u64>| t.map_or("time not recorded".into(), libsql_wal::storage::layout::format_unix_ms);
    for (i, span) in window.spans.iter().enumerate() {
        if i > 0 {
            outln!(
                "gap: frames {}..={} are in no stored object",
                window.spans[i - 1].last_frame_no + 1,
                span.first_frame_no - 1
            );
        }
        outln!(
            "restorable: frames {}..={}, commits {} .. {}",
            span.first_frame_no,
            span.last_frame_no,
            time(span.first_time),
            time(span.last_time)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `storage ls --json`: the namespaces of a store, or one namespace's window and objects.
fn ls_json(storage: &Storage, namespace: Option<&str>) -> Result<ExitCode, String> {
    use libsql_wal::storage::layout::format_unix_ms;
    use serde_json::json;
    let Some(namespace) = namespace else {
        let mut namespaces = Vec::new();
        for namespace in storage.list_namespaces().map_err(|e| e.to_string())? {
            let chain = storage.chain(&namespace).map_err(|e| e.to_string())?;
            namespaces.push(
                json!({ "namespace": namespace, "durable_frame_no": chain.end_frame_no, "bytes": chain.bytes() }),
            );
        }
        outln!("{}", json!({ "url": storage.url(), "namespaces": namespaces }));
        return Ok(ExitCode::SUCCESS);
    };
    let objects = storage.list(namespace).map_err(|e| e.to_string())?;
    let chain = libsql_wal::storage::layout::chain(&objects);
    let window = libsql_wal::storage::history::window(&objects);
    let time = |t: Option<u64>| t.map(format_unix_ms);
    let gaps: Vec<_> = window
        .spans
        .windows(2)
        .map(|w| {
            json!({
                "from_frame_no": w[0].last_frame_no + 1,
                "to_frame_no": w[1].first_frame_no - 1,
                "after_time": time(w[0].last_time),
                "before_time": time(w[1].first_time),
            })
        })
        .collect();
    let listed: Vec<_> = objects
        .iter()
        .map(|o| {
            let in_chain = chain.objects().any(|c| c.key == o.key);
            json!({ "key": o.key, "size": o.size, "first_frame_no": first_frame(o), "last_frame_no": o.end_frame_no(), "in_latest_chain": in_chain })
        })
        .collect();
    let doc = json!({
        "namespace": namespace,
        "url": storage.url(),
        "durable_frame_no": chain.end_frame_no,
        "first_frame_no": window.first().map(|s| s.first_frame_no),
        "last_frame_no": window.last().map(|s| s.last_frame_no),
        "first_time": window.first().and_then(|s| time(s.first_time)),
        "last_time": window.last().and_then(|s| time(s.last_time)),
        "first_time_unix_ms": window.first().and_then(|s| s.first_time),
        "last_time_unix_ms": window.last().and_then(|s| s.last_time),
        "gaps": gaps,
        "objects": listed,
    });
    outln!("{doc}");
    Ok(ExitCode::SUCCESS)
}

fn first_frame(object: &libsql_wal::storage::layout::StoredObject) -> u64 {
    match object.kind {
        libsql_wal::storage::layout::ObjectKind::Segment { start_frame_no, .. } => start_frame_no,
        _ => object.first_frame_no(),
    }
}

/// Seals the log and waits until storage has every commit, saying so while it waits (an
/// outage makes this wait as long as the outage; `--no-wait` skips it).
pub fn wait_until_durable(db: &Path, manager: &LibsqlWalManager) -> Result<(), String> {
    loop {
        match libsql_wal::flush_to_storage(db, Some(WAIT_REPORT_INTERVAL), manager).map_err(|e| e.to_string())? {
            Some(_) => return Ok(()),
            None => {
                let info = libsql_wal::inspect(db, manager).map_err(|e| e.to_string())?;
                let durable = info.durability.as_ref().and_then(|d| d.durable_frame_no);
                let error = info.durability.as_ref().and_then(|d| d.last_error.clone()).unwrap_or_default();
                errln!(
                    "waiting for storage: durable up to {} of {} ({error}); --no-wait skips this",
                    durable.map_or("unknown".into(), |d| d.to_string()),
                    info.last_frame_no
                );
            }
        }
    }
}

pub fn print_durability(info: &LogInfo) {
    let Some(durability) = &info.durability else { return };
    match (&durability.storage_url, &durability.namespace) {
        (Some(url), Some(namespace)) => outln!("storage: {url} namespace {namespace}"),
        _ => outln!("storage: not configured here, but this log has a durable record: segments stay until uploaded"),
    }
    match durability.durable_frame_no {
        Some(durable) => {
            outln!("durable frame_no: {durable} (lag {} frames)", info.last_frame_no.saturating_sub(durable))
        }
        None if durability.diverged.is_some() => outln!("durable frame_no: unknown (this log diverged, below)"),
        None if !durability.notes.is_empty() => outln!("durable frame_no: unknown (see the note below)"),
        None => outln!("durable frame_no: unknown (storage not reached yet)"),
    }
    outln!(
        "uploads: {} ({} bytes), failed requests: {}",
        durability.uploads,
        durability.uploaded_bytes,
        durability.failures
    );
    if let Some(error) = &durability.last_error {
        outln!("last storage error: {error}");
    }
    for note in &durability.notes {
        outln!("note: {note}");
    }
    if let Some(reason) = &durability.diverged {
        outln!("diverged: {reason}");
        outln!("  nothing more is uploaded; every commit stays in the local log");
    }
}

pub fn restore(
    url: &str,
    namespace: &str,
    out: &Path,
    options: &libsql_wal::RestoreOptions,
) -> Result<ExitCode, String> {
    let storage = Storage::open(url).map_err(|e| e.to_string())?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("restoring {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    bar.set_message(namespace.to_string());
    let report = libsql_wal::restore_with(&storage, namespace, out, options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| e.to_string())?;
    let landed = match report.commit_unix_ms {
        Some(t) => {
            format!("frame_no {}, committed {}", report.frame_no, libsql_wal::storage::layout::format_unix_ms(t))
        }
        None => format!("frame_no {} (commit time not recorded)", report.frame_no),
    };
    if report.dry_run {
        outln!("restore of {namespace} to {} would land on the commit at {landed}", out.display());
        outln!("plan: {} objects, {} bytes (nothing written)", report.objects, report.bytes);
        for key in &report.keys {
            outln!("  {key}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "restored {namespace} to {} at the commit at {landed}: {} pages from {} objects ({} bytes)",
        out.display(),
        report.db_pages,
        report.objects,
        report.bytes
    );
    if report.stranded > 0 {
        outln!(
            "stopped at frame_no {} (--allow-gap): {} segments after a gap in storage were not applied",
            report.frame_no,
            report.stranded
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The sizes `bench storage` works with.
pub struct BenchSizes {
    pub upload_mib: u64,
    pub restore_mib: u64,
    pub history_mib: u64,
    pub idle_seconds: u64,
}

/// `bench storage`: rows (store, metric, value).
pub fn bench(
    seconds: u64,
    rate: u32,
    segment_frames: u32,
    sizes: BenchSizes,
    dir: Option<std::path::PathBuf>,
    json: bool,
) -> Result<ExitCode, String> {
    let BenchSizes { upload_mib, restore_mib, history_mib, idle_seconds } = sizes;
    use libsql_wal_testkit::bench::loopback_s3::s3s_fs_binary;
    use libsql_wal_testkit::bench::storage::{durable_lag, upload_throughput};
    let tmp = std::env::temp_dir().join(format!("libsql-wal-bench-storage-{}", std::process::id()));
    let base = dir.unwrap_or_else(|| tmp.clone());
    let config = libsql_wal::WalConfig { segment_frames_max: segment_frames.max(1), ..Default::default() };
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    let mut stores = vec![BenchStore::LocalDir];
    if s3s_fs_binary().is_some() {
        stores.push(BenchStore::S3Loopback);
    } else {
        errln!("s3s-fs not found: S3 rows skipped (cargo install s3s-fs@0.14.1 --features binary --locked)");
    }
    for store in stores {
        let name = store.name();
        let runs = ["lag", "upload", "restore", "history"].map(|what| (what, base.join(format!("{name}-{what}"))));
        for (what, run) in runs {
            if what == "history" && matches!(store, BenchStore::S3Loopback) {
                continue; // the history rows measure compaction, the same on every store
            }
            std::fs::create_dir_all(&run).map_err(|e| format!("{}: {e}", run.display()))?;
            let (storage, _server) = store.open(&run)?;
            if what == "lag" {
                errln!("{name}: {rate} commits/s for {seconds} s...");
                let lag = durable_lag(&run, &storage, config.clone(), rate, Duration::from_secs(seconds))
                    .map_err(|e| e.to_string())?;
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                rows.push((name.to_string(), "commits/s reached".into(), lag.rate));
                rows.push((name.to_string(), "durable lag p50 (ms)".into(), ms(lag.p50)));
                rows.push((name.to_string(), "durable lag p99 (ms)".into(), ms(lag.p99)));
                rows.push((name.to_string(), "durable lag max (ms)".into(), ms(lag.max)));
            } else if what == "upload" {
                errln!("{name}: uploading a {upload_mib} MiB backlog...");
                let mb_s = upload_throughput(&run, &storage, upload_mib << 20).map_err(|e| e.to_string())?;
                rows.push((name.to_string(), "upload MB/s".into(), mb_s));
            } else if what == "restore" {
                errln!("{name}: restoring a {restore_mib} MiB database beside a plain copy...");
                let measured = libsql_wal_testkit::bench::history::restore_speed(&run, &storage, restore_mib << 20)
                    .map_err(|e| e.to_string())?;
                rows.extend(measured.into_iter().map(|(metric, value)| (name.to_string(), metric, value)));
            } else {
                errln!("{name}: a {history_mib} MiB database with 1x and 100x its size of history...");
                let measured = libsql_wal_testkit::bench::history::history_cost(&run, &storage, history_mib << 20)
                    .map_err(|e| e.to_string())?;
                rows.extend(measured.into_iter().map(|(metric, value)| (name.to_string(), metric, value)));
            }
            let _ = std::fs::remove_dir_all(&run);
        }
    }
    {
        errln!("idle namespace: counting requests for {idle_seconds} s...");
        let run = base.join("idle");
        std::fs::create_dir_all(&run).map_err(|e| format!("{}: {e}", run.display()))?;
        let measured = libsql_wal_testkit::bench::history::idle_requests(&run, Duration::from_secs(idle_seconds))
            .map_err(|e| e.to_string())?;
        rows.extend(measured.into_iter().map(|(metric, value)| ("counting".to_string(), metric, value)));
        let _ = std::fs::remove_dir_all(&run);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(store, metric, value)| {
                serde_json::json!({ "store": store, "metric": metric, "value": crate::round_to(*value, 3) })
            })
            .collect();
        let doc = serde_json::json!({
            "workload": "storage",
            "rate": rate,
            "seconds": seconds,
            "segment_frames": segment_frames,
            "rows": items,
        });
        outln!("{doc}");
    } else {
        outln!(
            "storage: {rate} commits/s for {seconds} s, {segment_frames}-frame segments; {upload_mib} MiB backlog upload"
        );
        outln!("{:<12} {:<36} {:>12}", "store", "metric", "value");
        for (store, metric, value) in &rows {
            outln!("{store:<12} {metric:<36} {value:>12.2}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The lag and upload rows measure the upload path alone: no online compaction step runs
/// beside them (the history rows run compaction themselves, and measure it).
fn bench_config() -> libsql_wal::StorageConfig {
    let mut config = libsql_wal::StorageConfig::default();
    config.compaction.online = false;
    config
}

/// Where `bench storage` uploads to.
#[derive(Clone, Copy)]
enum BenchStore {
    LocalDir,
    S3Loopback,
}

impl BenchStore {
    fn name(self) -> &'static str {
        match self {
            BenchStore::LocalDir => "local-dir",
            BenchStore::S3Loopback => "s3-loopback",
        }
    }

    /// A fresh store under `run` (and the server behind it, kept alive by the caller).
    fn open(self, run: &Path) -> Result<(Storage, Option<libsql_wal_testkit::bench::loopback_s3::S3Server>), String> {
        match self {
            BenchStore::LocalDir => {
                let url = format!("file://{}", run.join("store").display());
                Ok((Storage::open_with(&url, &[], bench_config()).map_err(|e| e.to_string())?, None))
            }
            BenchStore::S3Loopback => {
                let server = libsql_wal_testkit::bench::loopback_s3::S3Server::start(&run.join("s3"))
                    .map_err(|e| e.to_string())?;
                let storage = server.storage("bench", bench_config()).map_err(|e| e.to_string())?;
                Ok((storage, Some(server)))
            }
        }
    }
}

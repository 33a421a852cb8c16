//! `libsql-wal`: run SQL on our WAL (or SQLite's, to compare), checkpoint, inspect.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use libsql_wal::{CheckpointMode, LibsqlWalManager};

/// `println!` that never panics (see `output`): a failed write to stdout is reported at exit.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::out_line(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics (see `output`): a failed write to stderr is ignored.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::err_line(format_args!($($arg)*)) };
}

mod bench_cmd;
mod output;
mod script;
mod serve_cmd;
mod split;
mod storage_cmd;

use storage_cmd::StorageArgs;

#[derive(Parser)]
#[command(name = "libsql-wal", version, about = "A segmented, shared write-ahead log for libSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run SQL statements in order, printing rows like `sqlite3` (list mode).
    Exec {
        /// Which WAL to run on: ours (libsql) or SQLite's own, for comparison.
        #[arg(long, value_enum, default_value_t = WalKind::Libsql)]
        wal: WalKind,
        /// Replace random() and randomblob(N) by deterministic functions seeded with this.
        #[arg(long)]
        seed: Option<u64>,
        /// The database file (created if missing).
        db: PathBuf,
        /// SQL to run (omit with -f). May start with `-` (a `-- comment`, say): it is still
        /// the SQL, not an option. Its bytes go to SQLite as they are, UTF-8 or not.
        #[arg(allow_hyphen_values = true)]
        sql: Option<OsString>,
        /// Read the SQL from this file.
        #[arg(short = 'f', long = "file", conflicts_with = "sql")]
        file: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageArgs,
        /// With --storage: return without waiting for the commits to be durable (the next
        /// process to open the database uploads what is left).
        #[arg(long, requires = "storage")]
        no_wait: bool,
    },
    /// Checkpoint the log into the database file and print `busy|log|checkpointed`.
    Checkpoint {
        db: PathBuf,
        #[arg(long, value_enum, default_value_t = ModeArg::Passive)]
        mode: ModeArg,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Describe a database's log: segments, frame ranges, sizes, pages, what the next open
    /// would recover, and with --storage the durable frame_no and the lag (the store is
    /// listed). Changes nothing: no recovery, upload or checkpoint, no file created. Refused
    /// ("in use", exit 1) while another process holds the database.
    Info {
        db: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Check a database and its log (checksums, seals, indexes, frame continuity, then
    /// SQLite's integrity_check) and report; exits 1 on any error.
    Verify {
        db: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Rebuild a database from storage alone: at the namespace's durable frame_no, or at
    /// the last commit at or before --frame-no N or --timestamp T.
    Restore {
        /// The store, as a URL: file:///dir, s3://bucket/prefix, gs://..., az://..., memory://name.
        #[arg(long, value_name = "URL")]
        storage: String,
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// Restore the last commit at or before this frame_no (see `storage ls URL NS`).
        #[arg(long, value_name = "N", conflicts_with = "timestamp")]
        frame_no: Option<u64>,
        /// Restore the last commit made at or before this time (RFC 3339, e.g.
        /// 2026-12-01T10:15:00.250Z).
        #[arg(long, value_name = "T", value_parser = libsql_wal::storage::history::parse_time)]
        timestamp: Option<u64>,
        /// Print the plan (objects, bytes, the commit it lands on) and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// If the stored chain has a gap (a missing segment), restore the state before it
        /// instead of refusing; the output says which frame_no it stopped at.
        #[arg(long)]
        allow_gap: bool,
        /// The database file to create (must not exist).
        out: PathBuf,
    },
    /// Serve every database of a directory over HTTP, in Hrana as libSQL's server speaks it
    /// (`/v2/pipeline`, `/v3/pipeline`, `/v3/cursor`), for libSQL's clients. Stops cleanly
    /// on SIGTERM or Ctrl-C.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Look into a store.
    Storage {
        #[command(subcommand)]
        command: storage_cmd::StorageCommand,
    },
    /// Benchmarks against SQLite's own WAL, side by side in one run, with ratios. Without a
    /// subcommand: every workload, with the target ratios (`--quick`: under a minute).
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        workload: Option<BenchWorkload>,
        #[command(flatten)]
        suite: bench_cmd::SuiteArgs,
    },
    /// Concurrency stress: a writer moves money between accounts while readers check every
    /// snapshot (constant total, counter never backwards) and checkpoints run. Exits 1 on any
    /// violation or corruption error.
    Stress {
        /// Database file to use (created; default: a fresh temporary directory).
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Reader threads (each with its own connection), at most 4096.
        #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=4096))]
        readers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seal segments at this many frames (small values mean many swaps and checkpoints).
        #[arg(long, default_value_t = 256)]
        segment_frames: u32,
    },
}

#[derive(Subcommand)]
enum BenchWorkload {
    /// Durable-frame lag (commit to durable, p50/p99/max) at a steady commit rate, and upload
    /// MB/s of a backlog, to a local-directory store and to an S3 server (s3s-fs) on loopback.
    Storage {
        /// Seconds of steady commits per store.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Commits per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Frames per segment (a frame is durable once its segment is sealed and uploaded).
        #[arg(long, default_value_t = 4096)]
        segment_frames: u32,
        /// Size of the backlog uploaded for the MB/s figure, in MiB.
        #[arg(long, default_value_t = 128)]
        upload_mib: u64,
        /// Size of the database restored for the restore MB/s figure, in MiB.
        #[arg(long, default_value_t = 64)]
        restore_mib: u64,
        /// Size of the database whose history grows 100× for the history rows, in MiB.
        #[arg(long, default_value_t = 2)]
        history_mib: u64,
        /// Seconds an idle namespace is watched for requests.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// `serve` under load: clients over namespaces, mixed reads and writes, beside the same
    /// workload through the library in process (the ratio is the server's overhead); then
    /// namespaces touched once each, with descriptors and memory.
    Serve {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Percent of operations that write.
        #[arg(long, default_value_t = 20)]
        write_percent: u32,
        /// Namespaces touched once each, for the descriptor and memory figures.
        #[arg(long, default_value_t = 10_000)]
        touch_namespaces: usize,
        /// Clients committing at once for the `--ack durable` figures (against an s3s-fs
        /// server on loopback; 0 skips them).
        #[arg(long, default_value_t = 16)]
        ack_clients: usize,
        /// Seconds per `--ack` mode.
        #[arg(long, default_value_t = 10)]
        ack_seconds: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Replication on loopback (a primary `serve` and `--replica-of` replicas in process):
    /// lag p50/p99 at a commit rate (a read-your-writes read on a replica per commit), the
    /// primary's commits/s with replicas beside none, and a new replica's catch-up MB/s.
    Replication {
        /// Commits per second for the lag figures.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of commits for the lag figures.
        #[arg(long, default_value_t = 10)]
        lag_seconds: u64,
        /// Replicas attached for the throughput figure.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Clients committing as fast as they can for the throughput figure.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per side (no replica, then replicas) for the throughput figure.
        #[arg(long, default_value_t = 10)]
        throughput_seconds: u64,
        /// Size of the database a new replica catches up with, in MiB.
        #[arg(long, default_value_t = 256)]
        catchup_mib: u64,
        /// Also measure throughput with the replicas' files here (a tmpfs such as /dev/shm
        /// stands for disks of their own; on one machine they otherwise share the primary's).
        #[arg(long)]
        replicas_dir: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Commits per second, one small row per transaction, synchronous=FULL and NORMAL, with
    /// a bare pwrite+fdatasync loop as the disk's limit.
    Commits {
        /// Transactions per side, mode and round.
        #[arg(long, default_value_t = 2000)]
        commits: usize,
        /// Rounds, alternating sides; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Commit latency (p50/p99/max) while a large log is checkpointed: SQLite's
    /// autocheckpoint on the committing connection vs our background checkpointer.
    CheckpointLatency {
        /// Size of the log to checkpoint, in MiB.
        #[arg(long, default_value_t = 1024)]
        log_mib: u64,
        /// Transactions measured per side and round.
        #[arg(long, default_value_t = 3000)]
        commits: usize,
        /// Rows (pages) updated per transaction.
        #[arg(long, default_value_t = 8)]
        rows_per_commit: usize,
        /// Rounds per side, alternating; the median of each figure is reported.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Where the databases go (default: a temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum WalKind {
    Libsql,
    Sqlite,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Passive,
    Full,
    Restart,
    Truncate,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIBSQL_WAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Never panic on a failed write to stderr (full disk, 2>/dev/full): drop the event.
        .with_writer(|| output::Stderr)
        .log_internal_errors(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    let result = match cli.command {
        Command::Exec { wal, seed, db, sql, file, storage, no_wait } => {
            exec(wal, seed, &db, sql, file, &storage, no_wait)
        }
        Command::Checkpoint { db, mode, storage } => checkpoint(&db, mode, &storage),
        Command::Info { db, storage } => info(&db, &storage),
        Command::Verify { db, storage } => verify(&db, &storage),
        Command::Restore { storage, namespace, frame_no, timestamp, dry_run, allow_gap, out } => {
            use libsql_wal::storage::history::RestorePoint;
            let point = match (frame_no, timestamp) {
                (Some(n), _) => RestorePoint::FrameNo(n),
                (None, Some(t)) => RestorePoint::Time(t),
                (None, None) => RestorePoint::Latest,
            };
            let options = libsql_wal::RestoreOptions { allow_prefix: allow_gap, point, dry_run };
            storage_cmd::restore(&storage, &namespace, &out, &options)
        }
        Command::Serve(args) => serve_cmd::run(*args),
        Command::Storage { command } => storage_cmd::run(command),
        Command::Bench { workload: Some(workload), .. } => bench(workload),
        Command::Bench { workload: None, suite } => bench_cmd::run(&suite),
        Command::Stress { db, seconds, readers, seed, segment_frames } => {
            stress(db, seconds, readers, seed, segment_frames)
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(message) => {
            errln!("Error: {message}");
            ExitCode::FAILURE
        }
    };
    // Results that did not reach stdout make the command fail, though it ran.
    match output::stdout_error() {
        Some(error) => {
            errln!("Error: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
        None => code,
    }
}

/// What clap's own exit does (print help, version or the usage error, then exit with its
/// code), except that help or version that could not be written to stdout (a full disk,
/// `>/dev/full`, a closed pipe) fail the command, with a message on stderr.
fn clap_exit(error: &clap::Error) -> ExitCode {
    let printed = error.print().and_then(|()| std::io::stdout().flush());
    if error.use_stderr() {
        // A usage error, already on stderr (nowhere left to report a failure to print it).
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("Error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exec(
    wal: WalKind,
    seed: Option<u64>,
    db: &Path,
    sql: Option<OsString>,
    file: Option<PathBuf>,
    storage: &StorageArgs,
    no_wait: bool,
) -> Result<ExitCode, String> {
    let sql = match (sql, file) {
        (Some(sql), None) => os_bytes(sql),
        (None, Some(file)) => std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        _ => return Err("give the SQL as an argument or with -f FILE".into()),
    };
    let mut out = output::Stdout::lock();
    let ok = match wal {
        WalKind::Libsql => {
            let manager = storage.manager(db)?;
            let conn = libsql_wal::open_connection(db, &manager).map_err(|e| e.to_string())?;
            let ok = script::run(&conn, &sql, seed, &mut out, &mut output::Stderr);
            if manager.storage().is_some() && !no_wait {
                storage_cmd::wait_until_durable(db, &manager)?;
            }
            ok
        }
        WalKind::Sqlite if storage.storage.is_some() => {
            return Err("--storage works with our WAL only (--wal libsql)".into());
        }
        WalKind::Sqlite => {
            let conn = libsql_wal::open_sqlite_connection(db).map_err(|e| e.to_string())?;
            script::run(&conn, &sql, seed, &mut out, &mut output::Stderr)
        }
    };
    // A failed write is reported by `main`, as for every command.
    let _ = out.flush();
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// An argument's bytes as given (on Unix any bytes; elsewhere its text, lossily).
fn os_bytes(arg: OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        std::os::unix::ffi::OsStringExt::into_vec(arg)
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

fn checkpoint(db: &Path, mode: ModeArg, storage: &StorageArgs) -> Result<ExitCode, String> {
    let mode = match mode {
        ModeArg::Passive => CheckpointMode::Passive,
        ModeArg::Full => CheckpointMode::Full,
        ModeArg::Restart => CheckpointMode::Restart,
        ModeArg::Truncate => CheckpointMode::Truncate,
    };
    if !db.exists() {
        return Err(format!("no database at {}", db.display()));
    }
    let manager = storage.manager(db)?;
    // Held across the checkpoint, so the log stays open and its durability state (known
    // only once storage answered) is still there to explain a checkpoint held back.
    let _held = libsql_wal::open_connection(db, &manager).map_err(|e| e.to_string())?;
    let r = libsql_wal::checkpoint(db, mode, &manager).map_err(|e| e.to_string())?;
    outln!("{}|{}|{}", r.busy as u8, r.log_frames, r.checkpointed_frames);
    if r.busy || r.checkpointed_frames < r.log_frames {
        let info = libsql_wal::inspect(db, &manager).map_err(|e| e.to_string())?;
        if let Some(reason) = held_back_by_storage(&info, storage.storage.is_some()) {
            errln!("{reason}");
        }
    }
    Ok(if r.busy { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Why a checkpoint left frames in the log, when the reason is storage: a segment is
/// copied into the database only once durable (SQLite's three numbers cannot say so).
fn held_back_by_storage(info: &libsql_wal::LogInfo, storage_given: bool) -> Option<String> {
    let durability = info.durability.as_ref()?;
    let hint = if storage_given { "" } else { "; give --storage URL to upload them" };
    match durability.durable_frame_no {
        Some(durable) if durable >= info.last_frame_no => None,
        Some(durable) => Some(format!(
            "checkpoint held back: {} frames are not yet in storage (durable up to {durable} of {}){hint}",
            info.last_frame_no - durable,
            info.last_frame_no
        )),
        None => Some(format!(
            "checkpoint held back: frames up to {} are not known to be in storage (storage not reached yet){hint}",
            info.last_frame_no
        )),
    }
}

fn info(db: &Path, storage: &StorageArgs) -> Result<ExitCode, String> {
    if !db.exists() {
        return Err(format!("no database at {}", db.display()));
    }
    // Read-only: the log is read as an open would recover it, storage is listed, and
    // nothing is written, uploaded or checkpointed (see `inspect_read_only`).
    let config = libsql_wal::WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let manager = storage.attach(db, LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config))?;
    let info = libsql_wal::inspect_read_only(db, &manager).map_err(|e| e.to_string())?;
    outln!("database: {}", db.display());
    outln!("db pages (last commit): {}", info.db_pages);
    outln!("db file pages: {}", info.db_file_pages);
    outln!("last frame_no: {}", info.last_frame_no);
    outln!("checkpointed frame_no: {}", info.checkpointed_frame_no);
    match info.upstream {
        Some(libsql_wal::UpstreamInfo::At(p)) => {
            outln!("replica of: lineage {:08x}, at its frame_no {} (chain {:08x})", p.lineage, p.frame_no, p.chain)
        }
        Some(libsql_wal::UpstreamInfo::Unknown) => {
            outln!(
                "replica of: position unknown (the upstream record does not name the last commit: it starts again from an image)"
            )
        }
        None => {}
    }
    storage_cmd::print_durability(&info);
    let frames: u64 = info.segments.iter().map(|s| s.frames as u64).sum();
    outln!("segments: {} ({frames} frames in the log)", info.segments.len());
    for (i, s) in info.segments.iter().enumerate() {
        let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let state = match (s.sealed, i + 1 == info.segments.len()) {
            (true, _) => "sealed",
            (false, true) => "current",
            // Full, its seal not done yet (background seals).
            (false, false) => "full",
        };
        let range = if s.frames == 0 {
            "empty".to_string()
        } else {
            format!("frames {}..={}", s.start_frame_no, s.last_frame_no)
        };
        outln!("  {name}  {state:7}  {range}  ({} frames, {} bytes)", s.frames, s.bytes);
    }
    if !info.recovery.is_empty() {
        outln!("the next open recovers the log:");
        for line in &info.recovery {
            outln!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stress(
    db: Option<PathBuf>,
    seconds: u64,
    readers: usize,
    seed: u64,
    segment_frames: u32,
) -> Result<ExitCode, String> {
    use libsql_wal_testkit::stress::{StressConfig, run_bank};
    let tmp = std::env::temp_dir().join(format!("libsql-wal-stress-{}", std::process::id()));
    let db = match db {
        Some(db) => db,
        None => {
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            tmp.join("bank.db")
        }
    };
    let config = libsql_wal::WalConfig { segment_frames_max: segment_frames.max(1), ..Default::default() };
    let manager = LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config)
        .with_checkpointer(libsql_wal::Checkpointer::global());
    let stress = StressConfig { duration: std::time::Duration::from_secs(seconds), readers, seed };
    outln!("stress: {seconds} s, {readers} readers, 1 writer, checkpoints, seed {seed}, db {}", db.display());
    let report = run_bank(&db, &manager, &stress);
    // Removed whatever happened (the scratch database is ours, made for this run).
    let _ = std::fs::remove_dir_all(&tmp);
    let report = report.map_err(|e| e.to_string())?;
    outln!(
        "commits {} | snapshots checked {} | checkpoints {} | violations {} | corrupt {} | other errors {}",
        report.commits,
        report.snapshots_checked,
        report.checkpoints,
        report.violations,
        report.corrupt_errors,
        report.other_errors
    );
    if let Some(problem) = &report.first_problem {
        outln!("first problem: {problem}");
    }
    let clean = report.violations == 0 && report.corrupt_errors == 0 && report.other_errors == 0;
    Ok(if clean && report.commits > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn bench(workload: BenchWorkload) -> Result<ExitCode, String> {
    match workload {
        BenchWorkload::Storage {
            seconds,
            rate,
            segment_frames,
            upload_mib,
            restore_mib,
            history_mib,
            idle_seconds,
            dir,
            json,
        } => {
            let sizes = storage_cmd::BenchSizes { upload_mib, restore_mib, history_mib, idle_seconds };
            storage_cmd::bench(seconds, rate, segment_frames, sizes, dir, json)
        }
        BenchWorkload::Commits { commits, rounds, dir, json } => bench_commits(commits, rounds, dir, json),
        BenchWorkload::Serve {
            clients,
            namespaces,
            seconds,
            write_percent,
            touch_namespaces,
            ack_clients,
            ack_seconds,
            dir,
        } => {
            let load = ServeLoad { clients, namespaces, seconds, write_percent, touch: touch_namespaces };
            bench_serve(&load, ack_clients, ack_seconds, dir)
        }
        BenchWorkload::Replication {
            rate,
            lag_seconds,
            replicas,
            clients,
            throughput_seconds,
            catchup_mib,
            replicas_dir,
            dir,
        } => {
            let config = libsql_wal_testkit::bench::replication::ReplicationConfig {
                commits_per_sec: rate,
                lag_seconds,
                replicas,
                clients,
                throughput_seconds,
                catchup_mib,
                replicas_elsewhere: replicas_dir,
            };
            bench_replication(&config, dir)
        }
        BenchWorkload::CheckpointLatency { log_mib, commits, rows_per_commit, rounds, dir, json } => {
            bench_checkpoint_latency(log_mib, commits, rows_per_commit, rounds, dir, json)
        }
    }
}

fn bench_replication(
    config: &libsql_wal_testkit::bench::replication::ReplicationConfig,
    dir: Option<PathBuf>,
) -> Result<ExitCode, String> {
    let tmp = tempfile_dir(dir)?;
    let r = libsql_wal_testkit::bench::replication::run(tmp.path(), config)?;
    outln!(
        "lag at {} commits/s asked ({:.0}/s done, {} samples, {} errors): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        config.commits_per_sec,
        r.achieved_per_sec,
        r.lag_samples,
        r.lag_errors,
        r.lag_p50_ms,
        r.lag_p99_ms,
        r.lag_max_ms
    );
    outln!(
        "primary commits/s, {} clients: {:.0} alone, {:.0} with {} replicas ({:.2}x; {} errors)",
        config.clients,
        r.alone_per_sec,
        r.with_replicas_per_sec,
        config.replicas,
        r.with_replicas_per_sec / r.alone_per_sec.max(f64::MIN_POSITIVE),
        r.throughput_errors
    );
    outln!(
        "primary commits/s with {} streams read and dropped (the replicas' own work elsewhere): {:.0} ({:.2}x)",
        config.replicas,
        r.with_streams_only_per_sec,
        r.with_streams_only_per_sec / r.alone_per_sec.max(f64::MIN_POSITIVE)
    );
    if let (Some(elsewhere), Some(dir)) = (r.with_replicas_elsewhere_per_sec, &config.replicas_elsewhere) {
        outln!(
            "primary commits/s with {} replicas whose files are in {}: {elsewhere:.0} ({:.2}x)",
            config.replicas,
            dir.display(),
            elsewhere / r.alone_per_sec.max(f64::MIN_POSITIVE)
        );
    }
    let mib = r.catchup_bytes as f64 / (1 << 20) as f64;
    outln!(
        "catch-up of {mib:.0} MiB: from the primary {:.2} s ({:.1} MiB/s), from storage (file://) {:.2} s ({:.1} MiB/s)",
        r.catchup_seconds,
        mib / r.catchup_seconds.max(f64::MIN_POSITIVE),
        r.storage_catchup_seconds,
        mib / r.storage_catchup_seconds.max(f64::MIN_POSITIVE)
    );
    let errors = r.lag_errors + r.throughput_errors;
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct ServeLoad {
    clients: usize,
    namespaces: usize,
    seconds: u64,
    write_percent: u32,
    touch: usize,
}

fn bench_serve(
    load: &ServeLoad,
    ack_clients: usize,
    ack_seconds: u64,
    dir: Option<PathBuf>,
) -> Result<ExitCode, String> {
    use libsql_wal_testkit::bench::serve::{LoadConfig, ack_latency, many_namespaces, serve_load};
    let &ServeLoad { clients, namespaces, seconds, write_percent, touch } = load;
    let tmp = tempfile_dir(dir)?;
    let config = LoadConfig { clients, namespaces: namespaces.max(1), seconds, write_percent, rows: 1000 };
    outln!("{clients} clients over {namespaces} namespaces, {write_percent}% writes, {seconds} s per side");
    let report = serve_load(tmp.path(), &config)?;
    outln!("{:<12} {:>10} {:>8} {:>9} {:>9}", "side", "req/s", "errors", "p50 ms", "p99 ms");
    for (side, r) in [("serve", &report.server), ("in-process", &report.in_process)] {
        outln!("{side:<12} {:>10.0} {:>8} {:>9.2} {:>9.2}", r.per_sec, r.errors, r.p50_ms, r.p99_ms);
    }
    outln!(
        "serve / in-process: {:.2}x the throughput, p50 {:.2}x, p99 {:.2}x",
        report.server.per_sec / report.in_process.per_sec.max(f64::MIN_POSITIVE),
        report.server.p50_ms / report.in_process.p50_ms.max(0.001),
        report.server.p99_ms / report.in_process.p99_ms.max(0.001)
    );
    let many = many_namespaces(tmp.path(), touch)?;
    outln!(
        "{} namespaces touched once: {:.0}/s, {} errors, open descriptors peak {} (end {}), RSS peak {:.1} MiB (end {:.1} MiB)",
        many.namespaces,
        many.per_sec,
        many.errors,
        many.peak_open_fds,
        many.final_open_fds,
        many.peak_rss_mib,
        many.final_rss_mib
    );
    let mut errors = report.server.errors + report.in_process.errors + many.errors;
    let have_s3 = libsql_wal_testkit::bench::loopback_s3::s3s_fs_binary().is_some();
    if ack_clients > 0 && !have_s3 {
        errln!("s3s-fs not found: --ack rows skipped (cargo install s3s-fs@0.14.1 --features binary --locked)");
    }
    if ack_clients > 0 && have_s3 {
        let ack = ack_latency(tmp.path(), ack_clients, ack_seconds)?;
        outln!("{} clients committing, storage s3s-fs on loopback (one 4 KiB PUT: {:.2} ms)", ack.clients, ack.put_ms);
        for (mode, r) in [("--ack local", &ack.local), ("--ack durable", &ack.durable)] {
            outln!(
                "{mode:<14} {:>8.0} commits/s {:>6} errors  p50 {:>7.2} ms  p99 {:>7.2} ms",
                r.per_sec,
                r.errors,
                r.p50_ms,
                r.p99_ms
            );
        }
        let alone = &ack.durable_alone;
        outln!(
            "--ack durable, 1 client alone: p50 {:.2} ms  p99 {:.2} ms (one flush per commit)",
            alone.p50_ms,
            alone.p99_ms
        );
        let added = ack.durable.p50_ms - ack.local.p50_ms;
        outln!(
            "with {} clients durable adds p50 {:.2} ms: {:.2}x one flush alone ({:.1} 4 KiB PUT round trips); {} commits in {} uploads ({:.1} commits per upload)",
            ack.clients,
            added,
            added / alone.p50_ms.max(0.001),
            added / ack.put_ms.max(0.001),
            ack.durable_commits,
            ack.durable_uploads,
            ack.durable_commits as f64 / ack.durable_uploads.max(1) as f64
        );
        errors += ack.local.errors + ack.durable.errors + alone.errors;
    }
    Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// A scratch directory under `dir` (or the system's temporary directory), removed at the end.
fn tempfile_dir(dir: Option<PathBuf>) -> Result<tempfile::TempDir, String> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            tempfile::tempdir_in(dir).map_err(|e| e.to_string())
        }
        None => tempfile::tempdir().map_err(|e| e.to_string()),
    }
}

fn bench_commits(commits: usize, rounds: usize, dir: Option<PathBuf>, json: bool) -> Result<ExitCode, String> {
    use libsql_wal_testkit::bench::{Side, Synchronous, commits_per_sec, raw_sync_loop_per_sec};
    let tmp = std::env::temp_dir().join(format!("libsql-wal-bench-{}", std::process::id()));
    let base = dir.unwrap_or_else(|| tmp.clone());
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let (mut theirs, mut ours) = (Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            for side in [Side::Sqlite, Side::Ours] {
                let run_dir = base.join(format!("round{round}-{}-{sync:?}", side.name()));
                std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
                errln!("round {round}: {} {sync:?} commits...", side.name());
                let rate = commits_per_sec(&run_dir, side, sync, commits).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&run_dir);
                if side == Side::Sqlite { theirs.push(rate) } else { ours.push(rate) }
            }
        }
        rows.push((format!("commits/s {sync:?}"), median(theirs), median(ours)));
    }
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    for _ in 0..rounds.max(1) {
        raw.push(raw_sync_loop_per_sec(&base, commits).map_err(|e| e.to_string())?);
    }
    let raw = median(raw);
    let _ = std::fs::remove_dir_all(&tmp);
    if json {
        let doc = serde_json::json!({
            "workload": "commits",
            "commits": commits,
            "rounds": rounds.max(1),
            "raw_sync_loop_per_sec": round_to(raw, 1),
            "rows": json_rows(&rows),
        });
        outln!("{doc}");
    } else {
        outln!("commits: {commits} one-row transactions per side and mode, median of {} round(s)", rounds.max(1));
        print_rows(&rows);
        outln!(
            "{:<22} {:>12.1}   (pwrite + fdatasync loop: the disk's limit for FULL commits)",
            "raw sync loop/s",
            raw
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_checkpoint_latency(
    log_mib: u64,
    commits: usize,
    rows_per_commit: usize,
    rounds: usize,
    dir: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, String> {
    use libsql_wal_testkit::bench::{CheckpointLatencyConfig, LatencyReport, Side, checkpoint_latency};
    let tmp = std::env::temp_dir().join(format!("libsql-wal-bench-{}", std::process::id()));
    let base = dir.unwrap_or_else(|| tmp.clone());
    let config = CheckpointLatencyConfig { log_bytes: log_mib << 20, commits, rows_per_commit, seed: 7 };
    let mut results: Vec<LatencyReport> = Vec::new();
    for round in 0..rounds.max(1) {
        for side in [Side::Sqlite, Side::Ours] {
            let run_dir = base.join(format!("round{round}-{}", side.name()));
            std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
            errln!("round {round}: {} ({log_mib} MiB log, {commits} commits)...", side.name());
            let report = checkpoint_latency(&run_dir, side, &config).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&run_dir);
            results.push(report);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let median = |side: Side, f: &dyn Fn(&LatencyReport) -> f64| -> f64 {
        let mut v: Vec<f64> = results.iter().filter(|r| r.side == side).map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let rows: Vec<(&str, f64, f64)> = vec![
        ("commit p50 (ms)", median(Side::Sqlite, &|r| ms(r.p50)), median(Side::Ours, &|r| ms(r.p50))),
        ("commit p99 (ms)", median(Side::Sqlite, &|r| ms(r.p99)), median(Side::Ours, &|r| ms(r.p99))),
        ("commit max (ms)", median(Side::Sqlite, &|r| ms(r.max)), median(Side::Ours, &|r| ms(r.max))),
        (
            "checkpoint time (ms)",
            median(Side::Sqlite, &|r| ms(r.checkpoint_time)),
            median(Side::Ours, &|r| ms(r.checkpoint_time)),
        ),
    ];
    let overlapped = results.iter().filter(|r| r.side == Side::Ours).all(|r| r.checkpoint_still_running_at_end);
    if json {
        let doc = serde_json::json!({
            "workload": "checkpoint-latency",
            "log_mib": log_mib,
            "commits": commits,
            "rounds": rounds.max(1),
            "ours_checkpoint_overlapped_all_commits": overlapped,
            "rows": json_rows(&rows),
        });
        outln!("{doc}");
    } else {
        outln!(
            "checkpoint-latency: {log_mib} MiB log, {commits} commits of {rows_per_commit} rows, synchronous=NORMAL, median of {} round(s)",
            rounds.max(1)
        );
        print_rows(&rows);
        outln!("our background checkpoint still running when the last measured commit returned: {overlapped}");
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(db: &Path, storage: &StorageArgs) -> Result<ExitCode, String> {
    if !db.exists() {
        return Err(format!("no database at {}", db.display()));
    }
    // Verify repairs nothing of its own: no checkpoint on close, no background checkpointer.
    let config = libsql_wal::WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let manager = storage.attach(db, LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), config))?;
    let report = libsql_wal::verify(db, &manager).map_err(|e| e.to_string())?;
    outln!("verify {}", db.display());
    for line in &report.lines {
        outln!("  {line}");
    }
    outln!("{} errors, {} warnings", report.errors, report.warnings);
    Ok(if report.errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Benchmark rows (metric, SQLite, ours) as JSON objects with their ratio.
fn json_rows<S: AsRef<str>>(rows: &[(S, f64, f64)]) -> serde_json::Value {
    rows.iter()
        .map(|(name, a, b)| {
            serde_json::json!({
                "metric": name.as_ref(),
                "sqlite": round_to(*a, 3),
                "ours": round_to(*b, 3),
                "ratio": round_to(b / a, 3),
            })
        })
        .collect()
}

/// `value` rounded to `decimals` places for printing, or `None` (JSON `null`) when it is
/// not a number (a ratio over a zero measurement).
pub(crate) fn round_to(value: f64, decimals: i32) -> Option<f64> {
    let scale = 10f64.powi(decimals);
    value.is_finite().then(|| (value * scale).round() / scale)
}

/// Benchmark rows (metric, SQLite, ours) as a table with their ratio.
fn print_rows<S: AsRef<str>>(rows: &[(S, f64, f64)]) {
    outln!("{:<22} {:>12} {:>12} {:>8}", "metric", "sqlite", "libsql-wal", "ratio");
    for (name, a, b) in rows {
        outln!("{:<22} {a:>12.3} {b:>12.3} {:>8.3}", name.as_ref(), b / a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_rows_are_json_with_names_escaped_and_unmeasured_ratios_null() {
        let rows = [("commits/s \"full\"", 100.0, 150.0), ("reads/s", 0.0, 10.0)];
        let text = json_rows(&rows).to_string();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["metric"], "commits/s \"full\"");
        assert_eq!(parsed[0]["ratio"], 1.5);
        assert!(parsed[1]["ratio"].is_null(), "a ratio over zero is not a number: {text}");
        assert_eq!(round_to(2.0 / 3.0, 3), Some(0.667));
    }
}

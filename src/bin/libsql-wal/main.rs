//! `libsql-wal`: run SQL on our WAL (or SQLite's, to compare), checkpoint, inspect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use libsql_wal::{CheckpointMode, LibsqlWalManager};

mod script;

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
        /// SQL to run (omit with -f).
        sql: Option<String>,
        /// Read the SQL from this file.
        #[arg(short = 'f', long = "file", conflicts_with = "sql")]
        file: Option<PathBuf>,
    },
    /// Checkpoint the log into the database file and print `busy|log|checkpointed`.
    Checkpoint {
        db: PathBuf,
        #[arg(long, value_enum, default_value_t = ModeArg::Passive)]
        mode: ModeArg,
    },
    /// Describe a database's log: segments, frame ranges, sizes, pages.
    Info { db: PathBuf },
    /// Concurrency stress: a writer moves money between accounts while readers check every
    /// snapshot (constant total, counter never backwards) and checkpoints run. Exits 1 on any
    /// violation or corruption error.
    Stress {
        /// Database file to use (created; default: a fresh temporary directory).
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        readers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seal segments at this many frames (small values mean many swaps and checkpoints).
        #[arg(long, default_value_t = 256)]
        segment_frames: u32,
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
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec { wal, seed, db, sql, file } => exec(wal, seed, &db, sql, file),
        Command::Checkpoint { db, mode } => checkpoint(&db, mode),
        Command::Info { db } => info(&db),
        Command::Stress { db, seconds, readers, seed, segment_frames } => {
            stress(db, seconds, readers, seed, segment_frames)
        }
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn exec(
    wal: WalKind,
    seed: Option<u64>,
    db: &Path,
    sql: Option<String>,
    file: Option<PathBuf>,
) -> Result<ExitCode, String> {
    let sql = match (sql, file) {
        (Some(sql), None) => sql,
        (None, Some(file)) => {
            let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return Err("give the SQL as an argument or with -f FILE".into()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let ok = match wal {
        WalKind::Libsql => {
            let manager = LibsqlWalManager::default();
            let conn = libsql_wal::open_connection(db, &manager).map_err(|e| e.to_string())?;
            script::run(&conn, &sql, seed, &mut out)
        }
        WalKind::Sqlite => {
            let conn = libsql_wal::open_sqlite_connection(db).map_err(|e| e.to_string())?;
            script::run(&conn, &sql, seed, &mut out)
        }
    };
    out.flush().map_err(|e| e.to_string())?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn checkpoint(db: &Path, mode: ModeArg) -> Result<ExitCode, String> {
    let mode = match mode {
        ModeArg::Passive => CheckpointMode::Passive,
        ModeArg::Full => CheckpointMode::Full,
        ModeArg::Restart => CheckpointMode::Restart,
        ModeArg::Truncate => CheckpointMode::Truncate,
    };
    if !db.exists() {
        return Err(format!("no database at {}", db.display()));
    }
    let manager = LibsqlWalManager::default();
    let r = libsql_wal::checkpoint(db, mode, &manager).map_err(|e| e.to_string())?;
    println!("{}|{}|{}", r.busy as u8, r.log_frames, r.checkpointed_frames);
    Ok(if r.busy { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn info(db: &Path) -> Result<ExitCode, String> {
    if !db.exists() {
        return Err(format!("no database at {}", db.display()));
    }
    let manager = LibsqlWalManager::default();
    let info = libsql_wal::inspect(db, &manager).map_err(|e| e.to_string())?;
    println!("database: {}", db.display());
    println!("db pages (last commit): {}", info.db_pages);
    println!("db file pages: {}", info.db_file_pages);
    println!("last frame_no: {}", info.last_frame_no);
    println!("checkpoint errors: {}", info.checkpoint_errors);
    if let Some(error) = &info.last_checkpoint_error {
        println!("last checkpoint error: {error}");
    }
    let frames: u64 = info.segments.iter().map(|s| s.frames as u64).sum();
    println!("segments: {} ({frames} frames in the log)", info.segments.len());
    for s in &info.segments {
        let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let state = if s.sealed { "sealed" } else { "current" };
        let range = if s.frames == 0 {
            "empty".to_string()
        } else {
            format!("frames {}..={}", s.start_frame_no, s.last_frame_no)
        };
        println!("  {name}  {state:7}  {range}  ({} frames, {} bytes)", s.frames, s.bytes);
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
    use libsql_wal::stress::{StressConfig, run_bank};
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
    println!("stress: {seconds} s, {readers} readers, 1 writer, checkpoints, seed {seed}, db {}", db.display());
    let report = run_bank(&db, &manager, &stress).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "commits {} | snapshots checked {} | checkpoints {} | violations {} | corrupt {} | other errors {}",
        report.commits,
        report.snapshots_checked,
        report.checkpoints,
        report.violations,
        report.corrupt_errors,
        report.other_errors
    );
    if let Some(problem) = &report.first_problem {
        println!("first problem: {problem}");
    }
    let clean = report.violations == 0 && report.corrupt_errors == 0 && report.other_errors == 0;
    Ok(if clean && report.commits > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

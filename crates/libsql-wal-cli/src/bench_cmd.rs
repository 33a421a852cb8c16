//! `libsql-wal bench` without a subcommand: every workload on SQLite's WAL and ours, side by
//! side, alternating sides, `--rounds` times (median reported), with the target ratios.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use libsql_wal_testkit::bench::scale::{ScaleConfig, idle_databases};
use libsql_wal_testkit::bench::workloads::{ReadTable, bulk_load, mixed, point_reads};
use libsql_wal_testkit::bench::{
    CheckpointLatencyConfig, Side, Synchronous, checkpoint_latency, commits_per_sec, raw_sync_loop_per_sec, settle,
};

#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Small sizes and short runs: the whole suite in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rounds per workload and side, alternating sides; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Where the databases go (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only these workloads (comma-separated): full, normal, bulk, reads, mixed,
    /// latency, limit, scale. Default: all of them.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Workload>,
    /// Run one side only (for profiling one WAL): sqlite or libsql. Ratios need both.
    #[arg(long, value_parser = ["sqlite", "libsql"])]
    pub side: Option<String>,
}

/// The suite's workloads, as `--only` names them.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Full,
    Normal,
    Bulk,
    Reads,
    Mixed,
    Latency,
    Limit,
    Scale,
}

/// Sizes of one suite run.
struct Sizes {
    full_commits: usize,
    normal_commits: usize,
    bulk_bytes: u64,
    read_table_bytes: u64,
    read_time: Duration,
    latency_log_mib: u64,
    latency_commits: usize,
    scale_databases: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                full_commits: 300,
                normal_commits: 3000,
                bulk_bytes: 32 << 20,
                read_table_bytes: 24 << 20,
                read_time: Duration::from_millis(500),
                latency_log_mib: 32,
                latency_commits: 300,
                scale_databases: 1000,
            }
        } else {
            Sizes {
                full_commits: 2000,
                normal_commits: 20_000,
                bulk_bytes: 256 << 20,
                read_table_bytes: 128 << 20,
                read_time: Duration::from_secs(3),
                latency_log_mib: 1024,
                latency_commits: 3000,
                scale_databases: 10_000,
            }
        }
    }
}

/// What a row must reach.
#[derive(Clone, Copy)]
enum Target {
    /// ours ÷ SQLite at least this (rates).
    RatioAtLeast(f64),
    /// ours ÷ SQLite at most this (latencies).
    RatioAtMost(f64),
    /// Ours alone at most this (costs with no SQLite counterpart).
    AtMost(f64),
    /// Shown for information.
    None,
}

/// One row of the table: a metric measured on one or both sides, and its target.
struct Row {
    metric: String,
    target: Target,
    sqlite: Vec<f64>,
    ours: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Row {
    /// ours ÷ SQLite, when both sides were measured.
    fn ratio(&self) -> Option<f64> {
        (!self.sqlite.is_empty() && !self.ours.is_empty()).then(|| median(&self.ours) / median(&self.sqlite))
    }

    fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(t) => self.ratio().map(|r| r >= t),
            Target::RatioAtMost(t) => self.ratio().map(|r| r <= t),
            Target::AtMost(t) => (!self.ours.is_empty()).then(|| median(&self.ours) <= t),
            Target::None => None,
        }
    }

    fn target_text(&self, ascii: bool) -> String {
        let (ge, le) = if ascii { (">=", "<=") } else { ("≥", "≤") };
        match self.target {
            Target::RatioAtLeast(t) => format!("{ge}{t}"),
            Target::RatioAtMost(t) => format!("{le}{t}"),
            Target::AtMost(t) => format!("{le}{t} abs"),
            Target::None => String::new(),
        }
    }
}

struct Suite {
    rows: Vec<Row>,
}

impl Suite {
    fn record(&mut self, metric: &str, target: Target, side: Side, value: f64) {
        let row = match self.rows.iter().position(|r| r.metric == metric) {
            Some(p) => &mut self.rows[p],
            None => {
                self.rows.push(Row { metric: metric.to_string(), target, sqlite: Vec::new(), ours: Vec::new() });
                self.rows.last_mut().expect("just pushed")
            }
        };
        match side {
            Side::Sqlite => row.sqlite.push(value),
            Side::Ours => row.ours.push(value),
        }
    }
}

pub fn run(args: &SuiteArgs) -> Result<ExitCode, String> {
    let sizes = Sizes::new(args.quick);
    let rounds = args.rounds.max(1);
    let tmp = std::env::temp_dir().join(format!("libsql-wal-bench-suite-{}", std::process::id()));
    let base = args.dir.clone().unwrap_or_else(|| tmp.clone());
    let runs = |w: Workload| args.only.is_empty() || args.only.contains(&w);
    // Per side: FULL, NORMAL, bulk, three read points, mixed, latency; then scale and limit.
    let steps_per_round = 2 * 8 + 2;
    let bar = ProgressBar::new((rounds * steps_per_round) as u64);
    bar.set_style(
        ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut suite = Suite { rows: Vec::new() };
    let result = (|| -> Result<(), String> {
        for round in 0..rounds {
            // Alternate which side goes first, round by round.
            let sides = if round % 2 == 0 { [Side::Sqlite, Side::Ours] } else { [Side::Ours, Side::Sqlite] };
            for side in sides {
                if args.side.as_deref().is_some_and(|only| (only == "sqlite") != (side == Side::Sqlite)) {
                    bar.inc(8);
                    continue;
                }
                let dir = fresh_dir(&base, round, side)?;
                let progress = |what: &str| bar.set_message(format!("round {} {}: {what}", round + 1, side.name()));
                let result = run_side(&mut suite, &dir, side, &sizes, &runs, &progress, &|n| bar.inc(n));
                let _ = std::fs::remove_dir_all(&dir);
                result?;
            }
            // Once: its figures are counts, not timings, and creating 10,000 files costs a
            // minute of file-system work.
            if round == 0 && runs(Workload::Scale) && args.side.as_deref() != Some("sqlite") {
                bar.set_message(format!("round {}: {} idle databases", round + 1, sizes.scale_databases));
                let dir = fresh_dir(&base, round, Side::Ours)?;
                settle(&dir).map_err(s)?;
                scale(&mut suite, &dir, sizes.scale_databases)?;
                let _ = std::fs::remove_dir_all(&dir);
            }
            bar.inc(1);
            if !runs(Workload::Limit) {
                bar.inc(1);
                continue;
            }
            // The disk's own limit for FULL commits, measured in the same run.
            bar.set_message(format!("round {}: bare pwrite+fdatasync loop", round + 1));
            let dir = fresh_dir(&base, round, Side::Sqlite)?;
            settle(&dir).map_err(s)?;
            let raw = raw_sync_loop_per_sec(&dir, sizes.full_commits).map_err(s)?;
            let _ = std::fs::remove_dir_all(&dir);
            suite.record(
                "sync-loop limit: ours FULL vs pwrite+fdatasync loop/s",
                Target::RatioAtLeast(0.9),
                Side::Sqlite,
                raw,
            );
            bar.inc(1);
        }
        Ok(())
    })();
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    // The limit row compares our FULL rate with the loop: its "ours" column is our FULL.
    let full_ours =
        suite.rows.iter().find(|r| r.metric.starts_with("commits/s synchronous=FULL")).map(|r| r.ours.clone());
    if let (Some(full), Some(limit)) = (full_ours, suite.rows.iter_mut().find(|r| r.metric.starts_with("sync-loop"))) {
        limit.ours = full;
    }
    print(&suite, args, rounds, &sizes);
    Ok(ExitCode::SUCCESS)
}

/// One side's workloads of one round, in `dir`, each on an idle file system (`settle`).
/// `progress` names the workload running; `advance` moves the bar by that many steps (eight
/// per side, skipped workloads included).
fn run_side(
    suite: &mut Suite,
    dir: &Path,
    side: Side,
    sizes: &Sizes,
    runs: &dyn Fn(Workload) -> bool,
    progress: &dyn Fn(&str),
    advance: &dyn Fn(u64),
) -> Result<(), String> {
    let step = |what: &str| -> Result<(), String> {
        progress(what);
        settle(dir).map_err(s)
    };
    if runs(Workload::Full) {
        step("FULL commits")?;
        let full = commits_per_sec(dir, side, Synchronous::Full, sizes.full_commits).map_err(s)?;
        suite.record("commits/s synchronous=FULL", Target::RatioAtLeast(1.2), side, full);
    }
    advance(1);
    if runs(Workload::Normal) {
        step("NORMAL commits")?;
        let normal = commits_per_sec(dir, side, Synchronous::Normal, sizes.normal_commits).map_err(s)?;
        suite.record("commits/s synchronous=NORMAL", Target::RatioAtLeast(1.0), side, normal);
    }
    advance(1);
    if runs(Workload::Bulk) {
        step("bulk load")?;
        let bulk = bulk_load(dir, side, sizes.bulk_bytes).map_err(s)?;
        suite.record("bulk load MB/s (one transaction)", Target::RatioAtLeast(1.0), side, bulk);
    }
    advance(1);
    if runs(Workload::Reads) || runs(Workload::Mixed) {
        step("point reads")?;
        let table = ReadTable::create(dir, side, sizes.read_table_bytes).map_err(s)?;
        for (threads, metric) in
            [(1, "point reads/s, 1 thread"), (2, "point reads/s, 2 threads"), (4, "point reads/s, 4 threads")]
        {
            if runs(Workload::Reads) {
                let reads = point_reads(&table, threads, sizes.read_time).map_err(s)?;
                suite.record(metric, Target::RatioAtLeast(1.0), side, reads);
            }
            advance(1);
        }
        if runs(Workload::Mixed) {
            step("mixed")?;
            let report = mixed(&table, sizes.read_time).map_err(s)?;
            let mixed_target = Target::RatioAtLeast(1.5);
            suite.record("mixed: reads/s (2 readers + 1 writer)", mixed_target, side, report.reads_per_sec);
            suite.record("mixed: commits/s (2 readers + 1 writer)", mixed_target, side, report.commits_per_sec);
        }
    } else {
        advance(3);
    }
    advance(1);
    if runs(Workload::Latency) {
        step("commit latency during a checkpoint")?;
        let config = CheckpointLatencyConfig {
            log_bytes: sizes.latency_log_mib << 20,
            commits: sizes.latency_commits,
            rows_per_commit: 8,
            seed: 7,
        };
        let latency = checkpoint_latency(dir, side, &config).map_err(s)?;
        suite.record("commit p99 during a checkpoint (ms)", Target::RatioAtMost(0.5), side, ms(latency.p99));
        suite.record("commit max during a checkpoint (ms)", Target::RatioAtMost(0.5), side, ms(latency.max));
    }
    advance(1);
    Ok(())
}

/// The scale workload (ours only: SQLite keeps a database open only with a connection, three
/// descriptors each): `databases` databases used a little and left idle, within a bound on
/// the descriptors idle logs hold.
fn scale(suite: &mut Suite, dir: &Path, databases: usize) -> Result<(), String> {
    let bound = idle_files_bound(databases);
    let config = ScaleConfig { databases, commits_per_database: 3, idle_open_files_max: bound };
    let report = idle_databases(dir, &config).map_err(s)?;
    let ours = Side::Ours;
    // Evicted logs cost nothing: the per-log row is the one the target bounds.
    suite.record(
        &format!("scale: KiB resident per database, all {databases} idle"),
        Target::None,
        ours,
        report.kib_per_idle_database,
    );
    suite.record(
        "scale: KiB resident per idle log kept open",
        Target::AtMost(64.0),
        ours,
        report.kib_per_warm_idle_database,
    );
    suite.record(
        &format!("scale: descriptors held by the idle databases (bound {bound})"),
        Target::AtMost(bound as f64),
        ours,
        report.open_files as f64,
    );
    suite.record("scale: descriptors at the peak of the run", Target::None, ours, report.open_files_peak as f64);
    suite.record("scale: idle logs kept open", Target::None, ours, report.idle_logs_open as f64);
    suite.record("scale: reopen + read an idle database (ms)", Target::None, ours, ms(report.reopen_warm));
    suite.record(
        "scale: reopen + read an evicted database (ms)",
        Target::None,
        ours,
        report.reopen_cold.map_or(f64::NAN, ms),
    );
    Ok(())
}

/// The bound on idle descriptors the scale workload runs with: room for a tenth of the
/// databases' logs (three descriptors each; at most 3,000 descriptors), or half the process's
/// descriptor limit when that is lower. The rest are evicted, so both kinds are measured.
fn idle_files_bound(databases: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let soft =
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur as usize } else { 1024 };
    (3 * databases / 10).clamp(3, 3000).min(soft / 2)
}

fn s(e: libsql_wal::Error) -> String {
    e.to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fresh_dir(base: &Path, round: usize, side: Side) -> Result<PathBuf, String> {
    let dir = base.join(format!("round{round}-{}", side.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// A number for JSON, to 3 decimals: `null` when not measured.
fn json_number(value: Option<f64>) -> Option<f64> {
    value.and_then(|v| crate::round_to(v, 3))
}

fn some_median(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

fn print(suite: &Suite, args: &SuiteArgs, rounds: usize, sizes: &Sizes) {
    if args.json {
        let results: Vec<serde_json::Value> = suite
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.metric,
                    "sqlite": json_number(some_median(&r.sqlite)),
                    "ours": json_number(some_median(&r.ours)),
                    "ratio": json_number(r.ratio()),
                    "target": r.target_text(true),
                    "met": r.met(),
                })
            })
            .collect();
        let doc = serde_json::json!({ "quick": args.quick, "rounds": rounds, "results": results });
        outln!("{doc}");
        return;
    }
    outln!(
        "libsql-wal bench{}: median of {rounds} alternating round(s); ratio = ours ÷ SQLite's WAL \
         (sync-loop row: ours ÷ the bare loop; \"abs\": a bound on our own figure)",
        if args.quick { " --quick" } else { "" }
    );
    outln!(
        "sizes: {} FULL / {} NORMAL commits, bulk {} MiB, read table {} MiB for {:?} per point, \
         checkpoint of a {} MiB log, {} idle databases",
        sizes.full_commits,
        sizes.normal_commits,
        sizes.bulk_bytes >> 20,
        sizes.read_table_bytes >> 20,
        sizes.read_time,
        sizes.latency_log_mib,
        sizes.scale_databases
    );
    outln!("{:<60} {:>12} {:>12} {:>7} {:>10}", "workload", "sqlite", "libsql-wal", "ratio", "target");
    let cell = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or("—".to_string(), |v| format!("{v:.1}"));
    for r in &suite.rows {
        let verdict = if r.met() == Some(false) { "  (missed)" } else { "" };
        outln!(
            "{:<60} {:>12} {:>12} {:>7} {:>10}{verdict}",
            r.metric,
            cell(some_median(&r.sqlite)),
            cell(some_median(&r.ours)),
            r.ratio().filter(|v| v.is_finite()).map_or("—".to_string(), |v| format!("{v:.2}")),
            r.target_text(false)
        );
    }
}

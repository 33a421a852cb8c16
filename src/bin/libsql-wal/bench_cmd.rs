//! `libsql-wal bench` without a subcommand: every workload on SQLite's WAL and ours, side by
//! side, alternating sides, `--rounds` times (median reported), with the target ratios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use libsql_wal::bench::workloads::{ReadTable, bulk_load, mixed, point_reads};
use libsql_wal::bench::{
    CheckpointLatencyConfig, Side, Synchronous, checkpoint_latency, commits_per_sec, raw_sync_loop_per_sec,
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
            }
        }
    }
}

/// One row of the table: a metric measured on both sides, and the ratio it should reach.
struct Row {
    metric: &'static str,
    /// Higher is better (rates), or lower (latencies).
    higher_is_better: bool,
    target: f64,
    sqlite: Vec<f64>,
    ours: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Row {
    fn ratio(&self) -> f64 {
        median(&self.ours) / median(&self.sqlite)
    }

    fn met(&self) -> bool {
        if self.higher_is_better { self.ratio() >= self.target } else { self.ratio() <= self.target }
    }
}

struct Suite {
    rows: BTreeMap<usize, Row>,
    order: Vec<&'static str>,
}

impl Suite {
    fn record(&mut self, metric: &'static str, higher_is_better: bool, target: f64, side: Side, value: f64) {
        let position = match self.order.iter().position(|m| *m == metric) {
            Some(p) => p,
            None => {
                self.order.push(metric);
                self.order.len() - 1
            }
        };
        let row = self.rows.entry(position).or_insert(Row {
            metric,
            higher_is_better,
            target,
            sqlite: Vec::new(),
            ours: Vec::new(),
        });
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
    let steps_per_round = 2 * 7 + 1;
    let bar = ProgressBar::new((rounds * steps_per_round) as u64);
    bar.set_style(
        ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut suite = Suite { rows: BTreeMap::new(), order: Vec::new() };
    let result = (|| -> Result<(), String> {
        for round in 0..rounds {
            // Alternate which side goes first, round by round.
            let sides = if round % 2 == 0 { [Side::Sqlite, Side::Ours] } else { [Side::Ours, Side::Sqlite] };
            for side in sides {
                let dir = fresh_dir(&base, round, side)?;
                let step = |what: &str| {
                    bar.set_message(format!("round {} {}: {what}", round + 1, side.name()));
                };
                step("FULL commits");
                let full = commits_per_sec(&dir, side, Synchronous::Full, sizes.full_commits).map_err(s)?;
                suite.record("commits/s synchronous=FULL", true, 1.2, side, full);
                bar.inc(1);
                step("NORMAL commits");
                let normal = commits_per_sec(&dir, side, Synchronous::Normal, sizes.normal_commits).map_err(s)?;
                suite.record("commits/s synchronous=NORMAL", true, 1.0, side, normal);
                bar.inc(1);
                step("bulk load");
                let bulk = bulk_load(&dir, side, sizes.bulk_bytes).map_err(s)?;
                suite.record("bulk load MB/s (one transaction)", true, 1.0, side, bulk);
                bar.inc(1);
                step("point reads");
                let table = ReadTable::create(&dir, side, sizes.read_table_bytes).map_err(s)?;
                for (threads, metric) in
                    [(1, "point reads/s, 1 thread"), (2, "point reads/s, 2 threads"), (4, "point reads/s, 4 threads")]
                {
                    let reads = point_reads(&table, threads, sizes.read_time).map_err(s)?;
                    suite.record(metric, true, 1.0, side, reads);
                    bar.inc(1);
                }
                step("mixed");
                let report = mixed(&table, sizes.read_time).map_err(s)?;
                suite.record("mixed: reads/s (2 readers + 1 writer)", true, 1.5, side, report.reads_per_sec);
                suite.record("mixed: commits/s (2 readers + 1 writer)", true, 1.5, side, report.commits_per_sec);
                drop(table);
                bar.inc(1);
                step("commit latency during a checkpoint");
                let config = CheckpointLatencyConfig {
                    log_bytes: sizes.latency_log_mib << 20,
                    commits: sizes.latency_commits,
                    rows_per_commit: 8,
                    seed: 7,
                };
                let latency = checkpoint_latency(&dir, side, &config).map_err(s)?;
                suite.record("commit p99 during a checkpoint (ms)", false, 0.5, side, ms(latency.p99));
                suite.record("commit max during a checkpoint (ms)", false, 0.5, side, ms(latency.max));
                bar.inc(1);
                let _ = std::fs::remove_dir_all(&dir);
            }
            // The disk's own limit for FULL commits, measured in the same run.
            bar.set_message(format!("round {}: bare pwrite+fdatasync loop", round + 1));
            let dir = fresh_dir(&base, round, Side::Sqlite)?;
            let raw = raw_sync_loop_per_sec(&dir, sizes.full_commits).map_err(s)?;
            let _ = std::fs::remove_dir_all(&dir);
            suite.record("sync-loop limit: ours FULL vs pwrite+fdatasync loop/s", true, 0.9, Side::Sqlite, raw);
            bar.inc(1);
        }
        Ok(())
    })();
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    // The limit row compares our FULL rate with the loop: its "ours" column is our FULL.
    let full_ours =
        suite.rows.values().find(|r| r.metric.starts_with("commits/s synchronous=FULL")).map(|r| r.ours.clone());
    if let (Some(full), Some(limit)) = (full_ours, suite.rows.values_mut().find(|r| r.metric.starts_with("sync-loop")))
    {
        limit.ours = full;
    }
    print(&suite, args, rounds, &sizes);
    Ok(ExitCode::SUCCESS)
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

fn print(suite: &Suite, args: &SuiteArgs, rounds: usize, sizes: &Sizes) {
    let rows: Vec<&Row> = suite.rows.values().collect();
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"workload\":\"{}\",\"sqlite\":{:.3},\"ours\":{:.3},\"ratio\":{:.3},\"target\":\"{}{}\",\"met\":{}}}",
                    r.metric,
                    median(&r.sqlite),
                    median(&r.ours),
                    r.ratio(),
                    if r.higher_is_better { ">=" } else { "<=" },
                    r.target,
                    r.met()
                )
            })
            .collect();
        println!("{{\"quick\":{},\"rounds\":{rounds},\"results\":[{}]}}", args.quick, items.join(","));
        return;
    }
    println!(
        "libsql-wal bench{}: median of {rounds} alternating round(s); ratio = ours ÷ SQLite's WAL \
         (last row: ours ÷ the bare loop)",
        if args.quick { " --quick" } else { "" }
    );
    println!(
        "sizes: {} FULL / {} NORMAL commits, bulk {} MiB, read table {} MiB for {:?} per point, checkpoint of a {} MiB log",
        sizes.full_commits,
        sizes.normal_commits,
        sizes.bulk_bytes >> 20,
        sizes.read_table_bytes >> 20,
        sizes.read_time,
        sizes.latency_log_mib
    );
    println!("{:<56} {:>12} {:>12} {:>7} {:>8}", "workload", "sqlite", "libsql-wal", "ratio", "target");
    for r in rows {
        let target = format!("{}{}", if r.higher_is_better { "≥" } else { "≤" }, r.target);
        let verdict = if r.met() { "" } else { "  (missed)" };
        println!(
            "{:<56} {:>12.1} {:>12.1} {:>7.2} {:>8}{verdict}",
            r.metric,
            median(&r.sqlite),
            median(&r.ours),
            r.ratio(),
            target
        );
    }
}

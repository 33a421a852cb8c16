//! Micro-benchmarks of the hot paths: append a frame, find a page's frame in a current and a
//! sealed segment, and a whole commit through SQLite on our WAL.
//! `cargo bench -p libsql-wal-testkit --bench hot_paths`; `cargo test --workspace --all-targets` runs each once, as a test.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use libsql_wal::bench_internals::SegmentBench;
use libsql_wal::io::StdIo;
use libsql_wal::{LibsqlWalManager, WalConfig, open_connection};

const PAGES: u32 = 4096;

fn filled(dir: &std::path::Path, sealed: bool) -> SegmentBench {
    let segment = SegmentBench::create(dir).unwrap();
    let page = vec![0x5A; 4096];
    for i in 0..PAGES {
        segment.append_commit(i % 1024 + 1, &page).unwrap();
    }
    if sealed {
        segment.seal().unwrap();
    }
    segment
}

/// Appends run into segments of `PAGES` frames, as the log's default swap does: a fresh
/// segment (not timed) every `PAGES` appends, so the file never grows past a real segment.
fn append(c: &mut Criterion) {
    let page = vec![0x5A; 4096];
    let dir = tempfile::tempdir().unwrap();
    c.bench_function("append a committed frame (no sync)", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(PAGES as u64);
                let segment = SegmentBench::create(dir.path()).unwrap();
                let started = Instant::now();
                for i in 0..batch {
                    segment.append_commit(i as u32 % 1024 + 1, &page).unwrap();
                }
                timed += started.elapsed();
                segment.remove().unwrap();
                left -= batch;
            }
            timed
        })
    });
}

fn find(c: &mut Criterion) {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let segment = filled(dir.path(), sealed);
        let name = if sealed { "find_frame in a sealed segment" } else { "find_frame in the current segment" };
        let mut page_no = 0u32;
        c.bench_function(name, |b| {
            b.iter(|| {
                page_no = page_no % 2048 + 1; // half present, half absent
                segment.find(page_no)
            })
        });
    }
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default());
    let conn = open_connection(dir.path().join("bench.db"), &manager).unwrap();
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(x INTEGER PRIMARY KEY, v BLOB)").unwrap();
    let mut insert = conn.prepare("INSERT INTO t(v) VALUES (zeroblob(100))").unwrap();
    c.bench_function("commit one row (synchronous=NORMAL)", |b| b.iter(|| insert.execute([]).unwrap()));
}

criterion_group!(benches, append, find, commit);
criterion_main!(benches);

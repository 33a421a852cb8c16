//! The serve benchmarks in small: the mixed load runs with no error on both sides, and a
//! thousand namespaces touched once leave descriptors within the registry's bound.
//! (`libsql-wal bench serve` runs the full sizes: 64 clients × 100 namespaces × 60 s, 10,000
//! namespaces.)

use libsql_wal_testkit::bench::serve::{LoadConfig, many_namespaces, serve_load};

#[test]
fn a_short_mixed_load_has_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = LoadConfig { clients: 8, namespaces: 6, seconds: 2, write_percent: 20, rows: 100 };
    let report = serve_load(dir.path(), &config).unwrap();
    for (side, r) in [("server", &report.server), ("in process", &report.in_process)] {
        assert_eq!(r.errors, 0, "{side}: {r:?}");
        assert!(r.requests > 50, "{side}: {r:?}");
    }
}

#[test]
fn many_namespaces_touched_once_stay_within_the_descriptor_bound() {
    let dir = tempfile::tempdir().unwrap();
    let report = many_namespaces(dir.path(), 1000).unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    // Idle logs are bounded by the registry (DEFAULT_IDLE_OPEN_FILES_MAX descriptors); the
    // rest is the test process's own (listener, clients, runtime).
    let bound = libsql_wal::DEFAULT_IDLE_OPEN_FILES_MAX + 64;
    assert!(report.peak_open_fds <= bound, "{report:?}: more than {bound} descriptors");
}

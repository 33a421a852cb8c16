//! What the tests, benchmarks and the CLI's `stress` and `bench` commands use around
//! `libsql-wal`, kept out of the library people `cargo add`:
//!
//! - [`faulty`]: a fault-injecting [`libsql_wal::io::Io`] (failed and torn writes, power
//!   cuts that lose unsynced data) for the crash-safety tests, and `HookIo` (the real file
//!   system with a hook before every call).
//! - [`support`]: `TestIo` (slow or failing writes to database files, counters) and helpers
//!   shared by the integration tests of the testkit and the CLI.
//! - [`object_stores`]: an in-memory object store that counts requests, can refuse
//!   deletes and slow uploads down (the idle, benchmark, garbage-collection and
//!   `--ack durable` tests).
//! - [`http`]: a bare HTTP/1.1 client for the tests of `libsql-wal serve`.
//! - [`proxy`]: a TCP proxy on loopback that a test stalls, cuts and retargets (the
//!   replication fault tests).
//! - [`stress`]: the bank workload (`libsql-wal stress`, tests/concurrency.rs).
//! - [`bench`]: the workloads of `libsql-wal bench`, side by side with SQLite's own WAL, and
//!   [`bench::loopback_s3`], an S3-compatible server (`s3s-fs`) on loopback that the tests
//!   start, SIGKILL and restart.
//!
//! Everything here goes through the library's public API (the micro-benchmarks use its
//! `bench-internals` feature).

pub mod bench;
pub mod faulty;
pub mod http;
pub mod object_stores;
pub mod proxy;
pub mod serve_process;
pub mod stress;
pub mod support;

//! `--max-sqlite-memory` bounds what SQLite allocates in the whole process. A test binary
//! of its own: the bound is process-wide, and other tests must not run under it.

mod support;

use serde_json::json;
use support::{close, error_code, execute, rows, start};

/// An in-memory database filled past the bound fails with `SQLITE_NOMEM`; the server stays
/// up and serves the next request (before: 20 inserts of 100 MB into `ATTACH ':memory:'`
/// took 2.3 GB).
#[test]
fn sqlite_memory_past_the_bound_is_sqlite_nomem_and_the_server_goes_on() {
    let server = start(|c| c.limits.sqlite_memory_max = 64 << 20);
    let fill = "insert into mem.t select randomblob(1000000) from \
                (with recursive c(i) as (select 1 union all select i + 1 from c where i < 200) select i from c)";
    let (status, r) = server.pipeline(
        None,
        json!([execute("attach ':memory:' as mem"), execute("create table mem.t(b)"), execute(fill), close()]),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(error_code(&r, 2), "SQLITE_NOMEM", "{r}");
    let (status, r) = server.pipeline(None, json!([execute("select 1 + 1"), close()]));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r, 0), vec![vec![json!("2")]]);
}

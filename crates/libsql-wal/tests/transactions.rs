//! Savepoints, rollbacks and transactions bigger than the page cache (SQLite spills them
//! into the log before commit): uncommitted frames are never visible to other connections
//! (invariant 2), rolled-back ones never come back, and the result is a sound database.

use libsql_sys::rusqlite::Connection;
use libsql_wal::{LibsqlWalManager, open_connection};

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

#[test]
fn savepoints_roll_back_to_the_right_place() {
    let dir = tempfile::tempdir().unwrap();
    let manager = LibsqlWalManager::default();
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(x);
         BEGIN;
         INSERT INTO t VALUES ('a');
         SAVEPOINT one;
         INSERT INTO t VALUES ('b');
         SAVEPOINT two;
         INSERT INTO t VALUES ('c');
         ROLLBACK TO two;
         INSERT INTO t VALUES ('d');
         ROLLBACK TO one;
         INSERT INTO t VALUES ('e');
         RELEASE one;
         COMMIT;",
    )
    .unwrap();
    let rows: Vec<String> = conn
        .prepare("SELECT x FROM t ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, ["a", "e"]);
    assert_eq!(integrity(&conn), "ok");
}

#[test]
fn rollback_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let manager = LibsqlWalManager::default();
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    conn.execute_batch("BEGIN; INSERT INTO t VALUES (2); INSERT INTO t VALUES (3); ROLLBACK;").unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 1);
    drop(conn);
    let conn = open_connection(dir.path().join("d.db"), &manager).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), 1);
}

/// A transaction far larger than the page cache: SQLite writes (spills) its pages into the
/// log long before the commit. Another connection must not see any of it; a rollback must
/// drop all of it, savepoint rollbacks inside the spill too.
#[test]
fn spilled_transaction_is_invisible_until_commit_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let manager = LibsqlWalManager::default();
    let writer = open_connection(&path, &manager).unwrap();
    let reader = open_connection(&path, &manager).unwrap();
    writer
        .execute_batch("PRAGMA cache_size = 10; CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB); INSERT INTO t VALUES (0, zeroblob(500));")
        .unwrap();
    let rows = 5000;
    let insert = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows}) INSERT INTO t SELECT i, randomblob(500) FROM c;"
    );
    writer.execute_batch("BEGIN").unwrap();
    writer.execute_batch(&insert).unwrap();
    writer.execute_batch("SAVEPOINT s; UPDATE t SET pad = zeroblob(10) WHERE x % 2 = 0;").unwrap();
    let info = libsql_wal::inspect(&path, &manager).unwrap();
    let in_file: u32 = info.segments.iter().map(|s| s.frames_in_file).sum();
    let committed: u32 = info.segments.iter().map(|s| s.frames).sum();
    assert!(in_file > committed + 100, "the transaction did not spill: {in_file} frames, {committed} committed");
    assert_eq!(count(&reader, "SELECT count(*) FROM t"), 1, "uncommitted spilled frames are visible");
    writer.execute_batch("ROLLBACK TO s; RELEASE s;").unwrap();
    assert_eq!(count(&writer, "SELECT count(*) FROM t WHERE length(pad) = 500"), rows + 1);
    writer.execute_batch("ROLLBACK").unwrap();
    assert_eq!(count(&writer, "SELECT count(*) FROM t"), 1);
    assert_eq!(count(&reader, "SELECT count(*) FROM t"), 1);
    assert_eq!(integrity(&writer), "ok");

    // The same transaction committed is visible in full, and survives a reopen.
    writer.execute_batch("BEGIN").unwrap();
    writer.execute_batch(&insert).unwrap();
    writer.execute_batch("UPDATE t SET pad = zeroblob(7) WHERE x % 3 = 0; COMMIT;").unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM t"), rows + 1);
    assert_eq!(count(&reader, "SELECT count(*) FROM t WHERE length(pad) = 7"), rows / 3 + 1);
    drop(writer);
    drop(reader);
    let conn = open_connection(&path, &manager).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM t"), rows + 1);
    assert_eq!(integrity(&conn), "ok");
}

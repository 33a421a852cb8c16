//! Open connections on libsql-wal from a Rust program.
//!
//! Run with `cargo run --example basic [DB_PATH]` (default: a file in a temp directory).

use libsql_wal::{LibsqlWalManager, WalConfig, inspect, io::StdIo, open_connection};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::temp_dir().join(format!("libsql-wal-example-{}.db", std::process::id())),
    };
    // One manager for the program: clones share the process-wide registry, so every
    // connection to one file shares one log.
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig { segment_frames_max: 64, ..Default::default() });

    let writer = open_connection(&path, &manager)?;
    writer.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )?;
    for i in 0..200 {
        writer.execute("INSERT INTO notes(body) VALUES (?1)", [format!("note {i}")])?;
    }

    // A second connection (it could live on another thread) sees every commit.
    let reader = open_connection(&path, &manager)?;
    let count: i64 = reader.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?;
    println!("{} holds {count} notes", path.display());

    let log = inspect(&path, &manager)?;
    println!("log: {} segments, last frame_no {}", log.segments.len(), log.last_frame_no);

    // Checkpoint by hand, as SQLite would: busy | frames in log | frames checkpointed.
    let (busy, in_log, done): (i64, i64, i64) =
        writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    println!("checkpoint: {busy}|{in_log}|{done}");

    // Closing the last connection checkpoints everything: the file is plain SQLite again.
    drop(reader);
    drop(writer);
    println!("log directory left behind: {}", libsql_wal_dir_exists(&path));
    Ok(())
}

fn libsql_wal_dir_exists(db: &std::path::Path) -> bool {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-wal");
    std::path::Path::new(&dir).exists()
}

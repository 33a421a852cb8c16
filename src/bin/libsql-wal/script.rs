//! Runs a SQL script statement by statement and prints rows the way `sqlite3` does in its
//! default list mode: columns joined by `|`, NULL as nothing, one row per line.

use std::ffi::{CStr, CString, c_char};
use std::io::Write;
use std::sync::{Arc, Mutex};

use libsql_sys::rusqlite::{self, Connection, ffi, functions::FunctionFlags};

use crate::split;

/// Runs every statement of `sql`; returns false if any failed (each failure prints
/// `Error: <SQLite's message>` and execution goes on, like `sqlite3` without `-bail`).
pub fn run(conn: &Connection, sql: &str, seed: Option<u64>, out: &mut impl Write) -> bool {
    if let Some(seed) = seed
        && let Err(e) = register_seeded_randomness(conn, seed)
    {
        let _ = writeln!(out, "Error: {e}");
        return false;
    }
    let mut ok = true;
    for (i, statement) in split::statements(sql.as_bytes()).into_iter().enumerate() {
        if let Some(seed) = seed {
            reseed_sqlite_prng(seed.wrapping_add(i as u64));
        }
        // Split at ASCII bytes only, so each piece of a `str` is UTF-8 still.
        ok &= run_statement(conn, &String::from_utf8_lossy(statement), out);
        // Flush per statement: whoever reads our output (a test killing us, say) sees every
        // row of every statement that finished.
        let _ = out.flush();
    }
    ok
}

fn errmsg(db: *mut ffi::sqlite3) -> String {
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }.to_string_lossy().into_owned()
}

fn run_statement(conn: &Connection, statement: &str, out: &mut impl Write) -> bool {
    let Ok(text) = CString::new(statement.replace('\0', " ")) else { return false };
    let db = unsafe { conn.handle() };
    let mut rest: *const c_char = text.as_ptr();
    let mut ok = true;
    loop {
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        let rc = unsafe { ffi::sqlite3_prepare_v2(db, rest, -1, &mut stmt, &mut tail) };
        if rc != ffi::SQLITE_OK {
            let _ = writeln!(out, "Error: {}", errmsg(db));
            return false;
        }
        if stmt.is_null() {
            return ok; // only whitespace or comments left
        }
        ok &= step_all(db, stmt, out);
        unsafe { ffi::sqlite3_finalize(stmt) };
        if tail.is_null() || unsafe { *tail } == 0 {
            return ok;
        }
        rest = tail;
    }
}

fn step_all(db: *mut ffi::sqlite3, stmt: *mut ffi::sqlite3_stmt, out: &mut impl Write) -> bool {
    loop {
        match unsafe { ffi::sqlite3_step(stmt) } {
            ffi::SQLITE_ROW => write_row(stmt, out),
            ffi::SQLITE_DONE => return true,
            _ => {
                let _ = writeln!(out, "Error: {}", errmsg(db));
                return false;
            }
        }
    }
}

fn write_row(stmt: *mut ffi::sqlite3_stmt, out: &mut impl Write) {
    let columns = unsafe { ffi::sqlite3_column_count(stmt) };
    let mut line: Vec<u8> = Vec::new();
    for i in 0..columns {
        if i > 0 {
            line.push(b'|');
        }
        let text = unsafe { ffi::sqlite3_column_text(stmt, i) };
        if !text.is_null() {
            let len = unsafe { ffi::sqlite3_column_bytes(stmt, i) } as usize;
            line.extend_from_slice(unsafe { std::slice::from_raw_parts(text, len) });
        }
    }
    line.push(b'\n');
    let _ = out.write_all(&line);
}

/// SQLite draws on its own PRNG too (to make duplicate column names unique, for WAL salts).
/// Its WAL draws at moments ours does not, so a script run in oracle mode reseeds the PRNG
/// before each statement: both WALs then give the statement the same values.
fn reseed_sqlite_prng(seed: u64) {
    unsafe {
        ffi::sqlite3_test_control(
            ffi::SQLITE_TESTCTRL_PRNG_SEED,
            seed as u32 as i32,
            std::ptr::null_mut::<ffi::sqlite3>(),
        );
    }
}

/// `random()` and `randomblob(N)` with the same values on every run with the same seed,
/// so a script gives the same output on SQLite's WAL and ours.
fn register_seeded_randomness(conn: &Connection, seed: u64) -> rusqlite::Result<()> {
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let r = rng.clone();
    conn.create_scalar_function("random", 0, FunctionFlags::SQLITE_UTF8, move |_| {
        Ok(r.lock().unwrap_or_else(|e| e.into_inner()).i64(..))
    })?;
    conn.create_scalar_function("randomblob", 1, FunctionFlags::SQLITE_UTF8, move |ctx| {
        let n: i64 = ctx.get::<Option<i64>>(0)?.unwrap_or(1).max(1);
        let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
        Ok((0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>())
    })
}

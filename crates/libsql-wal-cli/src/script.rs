//! Runs a SQL script statement by statement and prints rows the way `sqlite3` does in its
//! default list mode: columns joined by `|`, NULL as nothing, one row per line.

use std::ffi::{CStr, c_char, c_int};
use std::io::Write;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use libsql_sys::rusqlite::{self, Connection, ffi, functions::FunctionFlags};

use crate::split;

/// Runs every statement of `sql`, rows to `out`; returns false if any failed (each failure
/// prints `Error: <SQLite's message>` to `err`, as `sqlite3` prints errors to stderr, and
/// execution goes on, like `sqlite3` without `-bail`). `sql` is raw bytes, handed to SQLite
/// as they are (not necessarily UTF-8), as `sqlite3` does.
pub fn run(conn: &Connection, sql: &[u8], seed: Option<u64>, out: &mut impl Write, err: &mut impl Write) -> bool {
    if let Some(seed) = seed
        && let Err(e) = register_seeded_randomness(conn, seed)
    {
        write_error(out, err, e.to_string().as_bytes());
        return false;
    }
    let mut ok = true;
    for (i, statement) in split::statements(sql).into_iter().enumerate() {
        if let Some(seed) = seed {
            reseed_sqlite_prng(seed.wrapping_add(i as u64));
        }
        ok &= run_statement(conn, statement, out, err);
        // Flush per statement: whoever reads our output (a test killing us, say) sees every
        // row of every statement that finished.
        let _ = out.flush();
    }
    ok
}

/// Prints `Error: <message>` to `err`, the message's bytes as SQLite gave them. The rows
/// printed before it are flushed first, so a terminal showing both streams shows them in
/// order.
fn write_error(out: &mut impl Write, err: &mut impl Write, message: &[u8]) {
    let _ = out.flush();
    let mut line = b"Error: ".to_vec();
    line.extend_from_slice(message);
    line.push(b'\n');
    let _ = err.write_all(&line);
    let _ = err.flush();
}

/// Runs the statement(s) in `sql` (one from the splitter, or a few a trigger-like text holds)
/// one after the other, stopping at the first that fails.
fn run_statement(conn: &Connection, sql: &[u8], out: &mut impl Write, err: &mut impl Write) -> bool {
    let mut rest = sql;
    let mut ok = true;
    loop {
        match Prepared::new(conn, rest) {
            Err(message) => {
                write_error(out, err, &message);
                return false;
            }
            Ok((None, tail)) if rest[tail..].first() == Some(&0) => {
                // SQLite reads a NUL as the end of the text: say so rather than skip the rest.
                write_error(out, err, b"a NUL byte in the SQL text: SQLite reads no further, the rest is not run");
                return false;
            }
            Ok((None, _)) => return ok, // only whitespace or comments left
            Ok((Some(stmt), tail)) => {
                ok &= step_all(&stmt, out, err);
                if tail == 0 || tail >= rest.len() {
                    return ok;
                }
                rest = &rest[tail..];
            }
        }
    }
}

/// Steps `stmt` to the end, printing its rows; false (and the error printed) if it failed.
fn step_all(stmt: &Prepared, out: &mut impl Write, err: &mut impl Write) -> bool {
    let mut line: Vec<u8> = Vec::new();
    loop {
        match stmt.step() {
            Ok(false) => return true,
            Ok(true) => {
                line.clear();
                for i in 0..stmt.column_count() {
                    if i > 0 {
                        line.push(b'|');
                    }
                    stmt.column_text(i, &mut line);
                }
                line.push(b'\n');
                let _ = out.write_all(&line);
            }
            Err(message) => {
                write_error(out, err, &message);
                return false;
            }
        }
    }
}

/// A statement prepared from raw bytes (rusqlite's `prepare` takes `&str`, which cannot
/// hold what is not UTF-8); finalized when dropped. All the FFI of running a script is
/// here, behind safe methods.
struct Prepared<'c> {
    conn: &'c Connection,
    stmt: NonNull<ffi::sqlite3_stmt>,
}

impl<'c> Prepared<'c> {
    /// Prepares the first statement of `sql`: the statement (`None` if only whitespace or
    /// comments came first) and the offset in `sql` where SQLite stopped reading, or
    /// SQLite's error message.
    fn new(conn: &'c Connection, sql: &[u8]) -> Result<(Option<Prepared<'c>>, usize), Vec<u8>> {
        let Ok(len) = c_int::try_from(sql.len()) else {
            return Err(format!("statement too long: {} bytes", sql.len()).into_bytes());
        };
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        // SAFETY: the handle is the live connection `conn` borrows; SQLite reads exactly
        // `len` bytes of `sql` (no NUL terminator needed with an explicit length) and sets
        // `stmt` and `tail` (a pointer into `sql`, or null).
        let rc = unsafe { ffi::sqlite3_prepare_v2(conn.handle(), sql.as_ptr().cast(), len, &mut stmt, &mut tail) };
        if rc != ffi::SQLITE_OK {
            return Err(errmsg(conn));
        }
        let read = if tail.is_null() { sql.len() } else { (tail as usize).saturating_sub(sql.as_ptr() as usize) };
        let prepared = NonNull::new(stmt).map(|stmt| Prepared { conn, stmt });
        Ok((prepared, read.min(sql.len())))
    }

    /// One step: `Ok(true)` for a row, `Ok(false)` when done, else SQLite's error message.
    fn step(&self) -> Result<bool, Vec<u8>> {
        // SAFETY: `stmt` is a live statement of `conn`, finalized only in `drop`.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            _ => Err(errmsg(self.conn)),
        }
    }

    fn column_count(&self) -> c_int {
        // SAFETY: as in `step`.
        unsafe { ffi::sqlite3_column_count(self.stmt.as_ptr()) }
    }

    /// Appends column `i` of the current row as `sqlite3` prints it: SQLite's text for the
    /// value (a blob's raw bytes), nothing for NULL.
    fn column_text(&self, i: c_int, line: &mut Vec<u8>) {
        // SAFETY: as in `step`, on a row just stepped to; the text pointer and length stay
        // valid until the next step or column call, and are copied out before either.
        unsafe {
            let text = ffi::sqlite3_column_text(self.stmt.as_ptr(), i);
            if !text.is_null() {
                let len = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), i) as usize;
                line.extend_from_slice(std::slice::from_raw_parts(text, len));
            }
        }
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        // SAFETY: `stmt` is live and finalized only here, once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The connection's last error message, as SQLite's bytes.
fn errmsg(conn: &Connection) -> Vec<u8> {
    // SAFETY: the handle is live; sqlite3_errmsg returns a NUL-terminated string valid until
    // the next call on the connection, copied out at once.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(conn.handle())) }.to_bytes().to_vec()
}

/// SQLite draws on its own PRNG too (to make duplicate column names unique, for WAL salts).
/// Its WAL draws at moments ours does not, so a script run in oracle mode reseeds the PRNG
/// before each statement: both WALs then give the statement the same values.
fn reseed_sqlite_prng(seed: u64) {
    // SAFETY: the PRNG_SEED test control takes an int seed and a (null) connection.
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

//! Printing that never panics. `println!` and `eprintln!` panic when a write fails (stdout
//! or stderr on a full disk, `2>/dev/full`, a closed pipe), and a panic inside SQLite's
//! callbacks (where the log's tracing events come from) aborts the process. So this CLI
//! prints only through `outln!`, `errln!` and the writers here:
//!
//! - stderr (messages and tracing's events): a failed write is ignored, there is nowhere
//!   left to report it;
//! - stdout (results): the first failed write is remembered, and `main` reports it on
//!   stderr and exits with a failure code once the command is done.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// The first write to stdout that failed.
static STDOUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);

fn remember(error: io::Error) {
    let mut first = STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner());
    first.get_or_insert(error);
}

/// Flushes stdout and returns the first error any write to it met, if one did.
pub fn stdout_error() -> Option<io::Error> {
    let _ = Stdout::lock().flush();
    STDOUT_ERROR.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Locked stdout whose errors are also remembered for `stdout_error`.
pub struct Stdout(io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Stdout {
        Stdout(io::stdout().lock())
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).inspect_err(|e| remember(io::Error::new(e.kind(), e.to_string())))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().inspect_err(|e| remember(io::Error::new(e.kind(), e.to_string())))
    }
}

/// Stderr that reports every write as done: for tracing's events and our messages. (Given
/// an error, tracing-subscriber would `eprintln!` about it, which panics.)
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// What `outln!` does: one line on stdout.
pub fn out_line(args: fmt::Arguments) {
    let _ = Stdout::lock().write_all(format!("{args}\n").as_bytes());
}

/// What `errln!` does: one line on stderr.
pub fn err_line(args: fmt::Arguments) {
    // One write per line, so lines from several threads do not interleave.
    let _ = Stderr.write_all(format!("{args}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    /// Every print of the binary goes through `outln!`/`errln!` or the writers above: the
    /// std macros panic on a failed write. (Code merged in with one fails here.)
    #[test]
    fn no_panicking_print_macro_in_the_binary() {
        let sources = [
            ("main.rs", include_str!("main.rs")),
            ("script.rs", include_str!("script.rs")),
            ("split.rs", include_str!("split.rs")),
            ("storage_cmd.rs", include_str!("storage_cmd.rs")),
            ("bench_cmd.rs", include_str!("bench_cmd.rs")),
        ];
        // Spelled in pieces, so this file does not match itself.
        let macros = ["print", "eprint", "dbg"].map(|name| [format!("{name}!("), format!("{name}ln!(")]);
        for (file, source) in sources {
            for call in macros.iter().flatten() {
                assert!(!source.contains(call.as_str()), "{file} calls {call}: use outln!/errln! (see output.rs)");
            }
        }
    }
}

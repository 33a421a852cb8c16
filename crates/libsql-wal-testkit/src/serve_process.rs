//! `libsql-wal serve` as a child process on a port of its own choosing (`--listen
//! 127.0.0.1:0`), its address read from its "serving … on http://ADDR" line: a port picked by
//! a test and released before `serve` binds it could be taken meanwhile by another test's
//! server. For tests that kill and restart servers (the binary's path is the caller's
//! `env!("CARGO_BIN_EXE_libsql-wal")`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::http;

pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `bin serve --db-dir DB_DIR EXTRA…` and waits until it answers `/health`.
    pub fn start(bin: &str, db_dir: &Path, extra: &[&str]) -> ServeProcess {
        ServeProcess::start_on("127.0.0.1:0", bin, db_dir, extra)
    }

    /// As [`ServeProcess::start`], listening on `listen` (a restart on the same port).
    pub fn start_on(listen: &str, bin: &str, db_dir: &Path, extra: &[&str]) -> ServeProcess {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen, "--db-dir"])
            .arg(db_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start libsql-wal serve");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(" on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not say where it listens within 20 s");
        };
        let addr: SocketAddr = addr.parse().expect("an address");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(addr, "GET", "/health", &[], b"").0 != 200 {
            assert!(Instant::now() < deadline, "serve did not answer /health within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        ServeProcess { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// SIGKILL and wait.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

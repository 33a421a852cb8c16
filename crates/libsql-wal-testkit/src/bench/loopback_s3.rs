//! An S3-compatible server on loopback for benchmarks and tests: the `s3s-fs` binary
//! (crates.io; `.ci/test` installs it) serving a directory, killable (SIGKILL) and
//! restartable on the same port and data.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libsql_wal::storage::{Storage, StorageConfig};
use libsql_wal::{Error, Result};

/// The bucket every server serves (a directory under its root).
pub const BUCKET: &str = "bucket";
pub const ACCESS_KEY: &str = "loopback-key";
pub const SECRET_KEY: &str = "loopback-secret";

/// The `s3s-fs` binary: `$S3S_FS`, or on `PATH`, or in cargo's bin directory.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("S3S_FS") {
        return Some(path.into());
    }
    let mut candidates: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("s3s-fs")).collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

pub struct S3Server {
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server for `root` (created) on a free loopback port.
    pub fn start(root: &Path) -> Result<S3Server> {
        let bucket = root.join(BUCKET);
        std::fs::create_dir_all(&bucket).map_err(libsql_wal::Error::io(libsql_wal::IoAction::Create, &bucket))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(libsql_wal::Error::io(libsql_wal::IoAction::Bind, "127.0.0.1:0"))?
            .port();
        let mut server = S3Server { root: root.into(), port, child: None };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again (after `kill`), same port, same data.
    pub fn restart(&mut self) -> Result<()> {
        let binary = s3s_fs_binary().ok_or_else(|| Error::CannotOpen {
            path: "s3s-fs".into(),
            reason: "not found: cargo install s3s-fs@0.14.1 --features binary --locked".into(),
        })?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(libsql_wal::Error::io(libsql_wal::IoAction::Start, &binary))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::CannotOpen { path: binary, reason: format!("not listening on {}", self.port) });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL: whatever request is in flight is cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client of this server (`s3://bucket/<prefix>`), with `config`.
    pub fn storage(&self, prefix: &str, config: StorageConfig) -> Result<Storage> {
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        let options = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", ACCESS_KEY),
            ("aws_secret_access_key", SECRET_KEY),
            ("aws_region", "us-east-1"),
        ];
        Storage::open_with(&format!("s3://{BUCKET}/{prefix}"), &options, config)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

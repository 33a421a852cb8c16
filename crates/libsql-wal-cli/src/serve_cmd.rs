//! `libsql-wal serve`: the server crate behind a command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use libsql_wal::Storage;
use libsql_wal_server::{Limits, Server, ServerConfig};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Without auth keep it on loopback (the default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the databases: `<dir>/<namespace>.db`, created on first use.
    #[arg(long, value_name = "DIR")]
    db_dir: PathBuf,
    /// Ship every database's sealed segments to this store, each under its namespace.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// Do not take a namespace from the host's first label (`db.example.com` → `db`); only
    /// the x-namespace header and the /dev/<namespace>/ path choose one.
    #[arg(long)]
    no_host_namespaces: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The bounds of `Limits`, one flag each (docs/SERVE.md lists them).
#[derive(clap::Args)]
struct LimitArgs {
    /// Largest request body, in bytes (more: 413).
    #[arg(long, default_value_t = Limits::default().body_bytes_max)]
    max_body_bytes: usize,
    /// Largest SQL text, in bytes.
    #[arg(long, default_value_t = Limits::default().statement_bytes_max)]
    max_statement_bytes: usize,
    /// Largest result of one request (a pipeline's together; a cursor's per row), in bytes.
    #[arg(long, default_value_t = Limits::default().response_bytes_max)]
    max_response_bytes: usize,
    /// Requests run at once; more wait in line.
    #[arg(long, default_value_t = Limits::default().concurrent_requests_max)]
    max_concurrent_requests: usize,
    /// Open streams (interactive transactions) at once.
    #[arg(long, default_value_t = Limits::default().batons_max)]
    max_batons: usize,
    /// Idle time after which a stream is closed and its transaction rolled back, e.g. 10s.
    #[arg(long, value_parser = humantime_duration, default_value = "10s")]
    baton_timeout: Duration,
    /// Connections kept open between requests, over all namespaces.
    #[arg(long, default_value_t = Limits::default().idle_connections_max)]
    max_idle_connections: usize,
    /// How long a statement waits for another writer of its database, e.g. 5s.
    #[arg(long, value_parser = humantime_duration, default_value = "5s")]
    busy_timeout: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    libsql_wal::storage::history::parse_duration(text).map_err(|e| e.to_string())
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            body_bytes_max: self.max_body_bytes,
            statement_bytes_max: self.max_statement_bytes,
            response_bytes_max: self.max_response_bytes,
            concurrent_requests_max: self.max_concurrent_requests.max(1),
            batons_max: self.max_batons,
            baton_timeout: self.baton_timeout,
            idle_connections_max: self.max_idle_connections,
            busy_timeout: self.busy_timeout,
            ..Limits::default()
        }
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let mut config = ServerConfig::new(args.listen, args.db_dir.clone());
    config.limits = args.limits.limits();
    config.host_namespaces = !args.no_host_namespaces;
    if let Some(url) = &args.storage {
        config.storage = Some(Storage::open(url).map_err(|e| e.to_string())?);
    }
    if !args.listen.ip().is_loopback() {
        errln!(
            "warning: serving on {} without authentication: anyone who can reach it can read and write every database",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        errln!("serving {} on http://{addr}", args.db_dir.display());
        server.run(stop_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still stops on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    errln!("stopping: finishing requests in flight, rolling back open streams, closing databases");
}

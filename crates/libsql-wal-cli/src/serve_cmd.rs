//! `libsql-wal serve`: the server crate behind a command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use libsql_wal::Storage;
use std::sync::Arc;

use libsql_wal_server::auth::Auth;
use libsql_wal_server::{Ack, Limits, Server, ServerConfig, TlsFiles};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Without auth keep it on loopback (the default): elsewhere it
    /// is served, with a warning.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the databases: `<dir>/<namespace>.db`, created on first use.
    #[arg(long, value_name = "DIR")]
    db_dir: PathBuf,
    /// Ship every database's sealed segments to this store, each under its namespace.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// Be a read-only replica of the `serve` at this URL (`http://host:port`): follow the
    /// default namespace, those already in --db-dir and those clients ask for, whole
    /// transactions only; writes are refused (send them to the primary).
    #[arg(long, value_name = "URL")]
    replica_of: Option<String>,
    /// With --replica-of: send this token to the primary (`Authorization: Bearer TOKEN`), for
    /// a primary with auth on. Read from LIBSQL_WAL_REPLICA_AUTH_TOKEN when not given: on
    /// the command line, `ps` shows it.
    #[arg(long, value_name = "TOKEN", requires = "replica_of")]
    replica_auth_token: Option<String>,
    /// Do not take a namespace from the host's first label (`db.example.com` → `db`); only
    /// the x-namespace header and the /dev/<namespace>/ path choose one.
    #[arg(long)]
    no_host_namespaces: bool,
    /// Require `Authorization: Bearer <token>` with the token in this file (kept off the
    /// command line, where `ps` would show it).
    #[arg(long, value_name = "FILE", conflicts_with = "auth_jwt_key_file")]
    auth_token_file: Option<PathBuf>,
    /// Require JWTs signed with Ed25519, checked with the public key in this file (PEM, or
    /// the key's 32 bytes in URL-safe base64), as libSQL's server does.
    #[arg(long, value_name = "FILE")]
    auth_jwt_key_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// When a commit is acknowledged: once in the local log (`local`), once durable in
    /// storage too (`durable`, needs --storage), or once K replicas hold it durably too
    /// (`replicas=K`).
    #[arg(long, value_parser = parse_ack, default_value = "local")]
    ack: AckArg,
    /// With --ack durable or replicas=K: how long a response waits before failing (503).
    #[arg(long, value_parser = humantime_duration, default_value = "30s")]
    ack_timeout: Duration,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckArg {
    Local,
    Durable,
    Replicas(usize),
}

fn parse_ack(text: &str) -> Result<AckArg, String> {
    match text {
        "local" => Ok(AckArg::Local),
        "durable" => Ok(AckArg::Durable),
        _ => match text.strip_prefix("replicas=").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Ok(AckArg::Replicas(k)),
            _ => Err(format!("{text:?}: expected local, durable or replicas=K (K ≥ 1)")),
        },
    }
}

/// The bounds of `Limits`, one flag each (docs/SERVE.md lists them).
#[derive(clap::Args)]
struct LimitArgs {
    /// Largest request body, in bytes (more: 413 BODY_TOO_LARGE).
    #[arg(long, default_value_t = Limits::default().body_bytes_max)]
    max_body_bytes: usize,
    /// Largest SQL text, in bytes (more: an SQL_TOO_LARGE result).
    #[arg(long, default_value_t = Limits::default().statement_bytes_max)]
    max_statement_bytes: usize,
    /// Largest result, in bytes: of one execute, of one batch's steps together, of one row of
    /// a cursor (more: a RESPONSE_TOO_LARGE result).
    #[arg(long, default_value_t = Limits::default().response_bytes_max)]
    max_response_bytes: usize,
    /// Requests run at once (at least 1); more wait in line up to --request-queue-timeout.
    #[arg(long, default_value_t = Limits::default().concurrent_requests_max)]
    max_concurrent_requests: usize,
    /// How long a request waits in line for --max-concurrent-requests, e.g. 10s (then 503
    /// SERVER_BUSY).
    #[arg(long, value_parser = humantime_duration, default_value = "10s")]
    request_queue_timeout: Duration,
    /// Open streams (interactive transactions) at once (one more: 503 STREAMS_EXHAUSTED).
    #[arg(long, default_value_t = Limits::default().batons_max)]
    max_batons: usize,
    /// Open streams one client may hold, told apart by JWT with --auth-jwt-key-file, else
    /// by address (one more: 429 CLIENT_STREAMS_EXHAUSTED); 0, the default, for no bound.
    #[arg(long, default_value_t = Limits::default().batons_per_client_max)]
    max_batons_per_client: usize,
    /// SQL texts one stream may hold with store_sql (one more: an SQL_STORE_TOO_MANY result).
    #[arg(long, default_value_t = Limits::default().stored_sql_max)]
    max_stored_sql: usize,
    /// Bytes of the SQL texts one stream may hold together (past it: SQL_STORE_TOO_LARGE).
    #[arg(long, default_value_t = Limits::default().stored_sql_bytes_max)]
    max_stored_sql_bytes: usize,
    /// Idle time after which a stream is closed and its transaction rolled back, e.g. 10s.
    #[arg(long, value_parser = humantime_duration, default_value = "10s")]
    baton_timeout: Duration,
    /// How long a statement waits for another writer of its database, e.g. 5s.
    #[arg(long, value_parser = humantime_duration, default_value = "5s")]
    busy_timeout: Duration,
    /// SQL running longer for one request is interrupted (SQLITE_INTERRUPT), e.g. 30s.
    #[arg(long, value_parser = humantime_duration, default_value = "30s")]
    max_request_duration: Duration,
    /// Bytes SQLite may take in the whole server (past it: SQLITE_NOMEM; caches shrink first).
    #[arg(long, default_value_t = Limits::default().sqlite_memory_max)]
    max_sqlite_memory: u64,
    /// A connection quiet this long while waiting for its client is closed, e.g. 60s.
    #[arg(long, value_parser = humantime_duration, default_value = "60s")]
    idle_connection_timeout: Duration,
    /// A request body not all in within this long of being read is cut off (408
    /// BODY_TIMEOUT), however steadily it trickles, e.g. 60s.
    #[arg(long, value_parser = humantime_duration, default_value = "60s")]
    body_read_timeout: Duration,
    /// Bytes of a database's log kept for libSQL's embedded replicas (syncUrl) after the
    /// image they start from; a replica further behind than the log holds syncs from a
    /// new image.
    #[arg(long, default_value_t = Limits::default().sync_log_keep_bytes)]
    sync_log_keep_bytes: u64,
}

/// The environment variable a replica's token may come from (kept off the command line).
const REPLICA_AUTH_TOKEN_ENV: &str = "LIBSQL_WAL_REPLICA_AUTH_TOKEN";

/// `--replica-auth-token`, else the environment's, trimmed; an empty one is refused (it
/// would be sent as a token that no primary accepts).
fn replica_auth_token(flag: Option<String>) -> Result<Option<String>, String> {
    let (token, from) = match flag {
        Some(token) => (token, "--replica-auth-token"),
        None => match std::env::var(REPLICA_AUTH_TOKEN_ENV) {
            Ok(token) => (token, REPLICA_AUTH_TOKEN_ENV),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{REPLICA_AUTH_TOKEN_ENV} is not text")),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{from} is empty"));
    }
    Ok(Some(token.to_string()))
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
            request_queue_timeout: self.request_queue_timeout,
            batons_max: self.max_batons,
            batons_per_client_max: self.max_batons_per_client,
            baton_timeout: self.baton_timeout,
            stored_sql_max: self.max_stored_sql,
            stored_sql_bytes_max: self.max_stored_sql_bytes,
            busy_timeout: self.busy_timeout,
            request_duration_max: self.max_request_duration,
            sqlite_memory_max: self.max_sqlite_memory,
            idle_connection_timeout: self.idle_connection_timeout,
            body_read_timeout: self.body_read_timeout,
            sync_log_keep_bytes: self.sync_log_keep_bytes,
        }
    }
}

/// `--replica-of`: `http(s)://host[:port]`, nothing else. Credentials in it would be shown
/// in every message that names the primary (`--replica-auth-token` carries them instead);
/// a path or query would be prefixed to the replication routes.
fn check_primary_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Err(format!("--replica-of {url}: expected an http:// or https:// URL"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("--replica-of {url}: no host"));
    }
    if authority.contains('@') {
        return Err("--replica-of: no credentials in the URL (they would be shown in messages): give a token with \
                    --replica-auth-token or LIBSQL_WAL_REPLICA_AUTH_TOKEN"
            .into());
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!("--replica-of {url}: expected scheme://host[:port] only, no path or query"));
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let mut config = ServerConfig::new(args.listen, args.db_dir.clone());
    if let Some(primary) = &args.replica_of {
        check_primary_url(primary)?;
        config.replica_of = Some(primary.clone());
        config.replica_auth_token = replica_auth_token(args.replica_auth_token.clone())?;
    }
    config.limits = args.limits.limits();
    config.host_namespaces = !args.no_host_namespaces;
    if let Some(url) = &args.storage {
        config.storage = Some(Storage::open(url).map_err(|e| e.to_string())?);
    }
    config.ack = match args.ack {
        AckArg::Local => Ack::Local,
        AckArg::Durable if config.storage.is_none() => {
            return Err("--ack durable needs --storage URL: durable means in storage".into());
        }
        AckArg::Durable => Ack::Durable { timeout: args.ack_timeout },
        AckArg::Replicas(_) if args.replica_of.is_some() => {
            return Err("--ack replicas=K is for a primary: a replica takes no writes".into());
        }
        AckArg::Replicas(k) => Ack::Replicas { k, timeout: args.ack_timeout },
    };
    let auth = match (&args.auth_token_file, &args.auth_jwt_key_file) {
        (Some(file), _) => Auth::shared_token_file(file)?,
        (None, Some(file)) => Auth::jwt_key_file(file)?,
        (None, None) => Auth::Open,
    };
    let open = auth.is_open();
    config.auth = Arc::new(auth);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(TlsFiles { cert: cert.clone(), key: key.clone() });
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    if open && !args.listen.ip().is_loopback() {
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
        errln!("serving {} on {scheme}://{addr}", args.db_dir.display());
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

#[cfg(test)]
mod primary_url_tests {
    use super::check_primary_url;

    #[test]
    fn a_primary_url_is_scheme_host_and_port_only() {
        for ok in ["http://127.0.0.1:8080", "https://db.example.com", "http://[::1]:80/"] {
            assert!(check_primary_url(ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1:8080", "http://", "http://user:pw@host", "http://host/path", "http://host?x=1"] {
            assert!(check_primary_url(bad).is_err(), "{bad}");
        }
        assert!(!check_primary_url("http://user:secretpw@host").unwrap_err().contains("secretpw"));
    }
}

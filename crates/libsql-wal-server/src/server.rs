//! The server's life: bind, serve until told to stop, then shut down in order — stop
//! accepting, finish the requests in flight, roll back open streams, flush to storage, close
//! (checkpoint) every database, so the files under `--db-dir` are plain SQLite files.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libsql_wal::{Checkpointer, LibsqlWalManager, Storage, WalConfig};

use crate::auth::Auth;
use crate::batons::Batons;
use crate::databases::Databases;
use crate::durable::DurableAcks;
use crate::limits::Limits;

/// What `libsql-wal serve` is told.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub db_dir: PathBuf,
    pub storage: Option<Storage>,
    pub limits: Limits,
    /// Take a namespace from the host's first label (libSQL's server does).
    pub host_namespaces: bool,
    pub auth: Arc<Auth>,
    pub ack: Ack,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// Be a replica of the primary at this URL (`http://host:port`): follow its namespaces
    /// and serve reads of them (see `replication`).
    pub replica_of: Option<String>,
    /// On a replica: sent to the primary as `Authorization: Bearer <token>` on every
    /// request, for a primary with auth on.
    pub replica_auth_token: Option<String>,
}

/// When a response that includes a commit is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once the commit is in the local log (synced as `synchronous` says: FULL by default).
    Local,
    /// Once it is durable in storage too, waiting at most this long (then 503).
    Durable { timeout: Duration },
    /// Once `k` replicas hold it durably too, waiting at most this long (then 503).
    Replicas { k: usize, timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, db_dir: PathBuf) -> Self {
        ServerConfig {
            listen,
            db_dir,
            storage: None,
            limits: Limits::default(),
            host_namespaces: true,
            auth: Arc::new(Auth::Open),
            ack: Ack::Local,
            tls: None,
            replica_of: None,
            replica_auth_token: None,
        }
    }
}

/// What every request handler shares.
pub struct Shared {
    pub dbs: Arc<Databases>,
    pub batons: Batons,
    pub limits: Limits,
    pub host_namespaces: bool,
    pub auth: Arc<Auth>,
    pub ack: Ack,
    pub durable: DurableAcks,
    /// Permits of the requests running (`--max-concurrent-requests`).
    pub requests: tokio::sync::Semaphore,
    /// Keys of the hash a JWT is counted by (`batons::Client::Token`): random per process,
    /// so nobody can pick tokens that collide with another client's.
    pub client_keys: std::hash::RandomState,
    /// Set when the server starts stopping: endless responses (replication streams) end,
    /// so that shutdown does not wait out its grace period for them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// On a replica with `--storage`: where it bootstraps from before asking the primary
    /// (`crate::catch_up`).
    pub catch_up_storage: Option<Storage>,
    /// This process's name as a replica (random): what its primary counts its
    /// acknowledgements under (`--ack replicas=K`).
    pub replica_name: String,
    /// The replicas' acknowledgements (`--ack replicas=K`).
    pub replica_acks: Arc<crate::replica_acks::ReplicaAcks>,
    /// The embedded replicas' generations of each database (`crate::sync`).
    pub generations: crate::sync::Generations,
    /// Replication lag on both sides, for `GET /metrics`.
    pub lag: Arc<crate::lag::Lag>,
    /// See [`ServerConfig::replica_auth_token`].
    pub replica_auth_token: Option<String>,
}

impl Shared {
    /// With `--ack durable`: waits until `namespace`'s last commit is durable (blocking);
    /// with `--ack replicas=K`, until K replicas hold it.
    pub fn wait_durable(&self, namespace: &str) -> Result<(), String> {
        match self.ack {
            Ack::Local => Ok(()),
            Ack::Durable { timeout } => self.durable.wait_last_commit(&self.dbs, namespace, timeout),
            Ack::Replicas { k, timeout } => {
                let db = self.dbs.path_of(namespace);
                let last = libsql_wal::last_commit_frame_no(&db, self.dbs.manager()).map_err(|e| e.to_string())?;
                self.replica_acks.wait(namespace, last, k, timeout)
            }
        }
    }
}

pub struct Server {
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shared: Arc<Shared>,
}

/// How long shutdown lets requests in flight finish before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long shutdown waits for storage to take the last commits of each database.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

impl Server {
    /// Binds the listening socket and prepares the databases directory.
    pub async fn bind(config: ServerConfig) -> Result<Server, String> {
        // Before any database opens: the library takes its metric handles at their first use.
        crate::metrics::install();
        crate::limits::bound_sqlite_memory(config.limits.sqlite_memory_max);
        std::fs::create_dir_all(&config.db_dir)
            .map_err(|e| format!("cannot create the databases directory {}: {e}", config.db_dir.display()))?;
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::load(files)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener.set_nonblocking(true).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        // A server holds many databases: logs stay open between requests (within the
        // registry's descriptor bound) instead of being recovered at every first use.
        let wal = WalConfig { keep_open_when_idle: true, ..WalConfig::default() };
        let mut manager =
            LibsqlWalManager::new(libsql_wal::io::StdIo::shared(), wal).with_checkpointer(Checkpointer::global());
        // A replica reads storage to bootstrap (`catch_up`) and never ships to it: the
        // namespaces are the primary's, and the replica's log has chain values of its own.
        if let Some(storage) = &config.storage
            && config.replica_of.is_none()
        {
            manager = manager.with_storage(storage.clone());
        }
        let mut dbs = Databases::new(config.db_dir.clone(), manager, config.limits.clone());
        if let Some(primary) = &config.replica_of {
            dbs = dbs.replica_of(primary.clone());
        }
        let dbs = Arc::new(dbs);
        let shared = Arc::new(Shared {
            dbs,
            batons: Batons::new(
                config.limits.batons_max,
                config.limits.batons_per_client_max,
                config.limits.baton_timeout,
            ),
            limits: config.limits.clone(),
            host_namespaces: config.host_namespaces,
            auth: config.auth.clone(),
            ack: config.ack,
            durable: DurableAcks::default(),
            requests: tokio::sync::Semaphore::new(config.limits.concurrent_requests_max),
            client_keys: std::hash::RandomState::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            generations: crate::sync::Generations::new(config.limits.sync_log_keep_bytes),
            catch_up_storage: config.replica_of.as_ref().and(config.storage.clone()),
            replica_acks: Arc::default(),
            replica_name: random_name(),
            lag: Arc::default(),
            replica_auth_token: config.replica_auth_token.clone(),
        });
        Ok(Server { listener, tls, shared })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        // The std listener, bound in `bind`.
        self.listener.local_addr()
    }

    /// Serves until `stop` completes, then shuts down (see the module's comment).
    pub async fn run(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
        let Server { listener, tls, shared } = self;
        let sweeper = tokio::spawn(sweep_batons(shared.clone()));
        let tails = tokio::spawn(release_sync_tails(shared.clone()));
        let followers = start_following(&shared);
        // Each request learns its peer's address: `--max-batons-per-client` counts by it.
        let app = crate::http::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let idle = crate::idle::NoDelay(crate::idle::IdleAcceptor::new(shared.limits.idle_connection_timeout));
        let serving = async {
            match tls {
                Some(tls) => {
                    let server = axum_server::from_tcp_rustls(listener, tls).map(|tls| tls.acceptor(idle));
                    server.handle(handle.clone()).serve(app).await
                }
                None => axum_server::from_tcp(listener).acceptor(idle).handle(handle.clone()).serve(app).await,
            }
        };
        tokio::pin!(serving);
        tokio::pin!(stop);
        let served = tokio::select! {
            served = &mut serving => served,
            () = &mut stop => {
                shared.stopping.send_replace(true);
                // Stop accepting, let requests in flight finish. Asked again each second: a
                // request to stop made before the server loop listens would otherwise be lost.
                loop {
                    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                    tokio::select! {
                        served = &mut serving => break served,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        sweeper.abort();
        tails.abort();
        // The holds on embedded replicas' log tails go first: they keep logs open.
        shared.generations.release_all();
        if let Some(followers) = followers {
            followers.abort(); // and with it every namespace's task (its JoinSet)
        }
        shared.batons.close_all(&shared.dbs).await;
        let dbs = shared.dbs.clone();
        tokio::task::spawn_blocking(move || close_databases(&dbs))
            .await
            .map_err(|e| format!("closing the databases failed: {e}"))?;
        served.map_err(|e| format!("serving failed: {e}"))
    }
}

/// 16 hex digits from the OS's random source (the time, if it has none).
fn random_name() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (now.as_nanos() as u64).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lets go, every few seconds, of the embedded replicas' log tails no longer worth keeping.
async fn release_sync_tails(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.generations.release_tails(shared.dbs.manager())).await;
    }
}

/// On a replica: a task that follows the default namespace, every database the directory
/// holds already, and each namespace a client asks for later, one task each.
fn start_following(shared: &Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let primary = shared.dbs.primary()?.to_string();
    let mut namespaces = std::collections::BTreeSet::from([crate::databases::DEFAULT_NAMESPACE.to_string()]);
    if let Ok(entries) = std::fs::read_dir(shared.dbs.dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(namespace) = name.strip_suffix(".db")
                && crate::databases::check_namespace(namespace).is_ok()
            {
                namespaces.insert(namespace.to_string());
            }
        }
    }
    let (wanted, mut asked) = tokio::sync::mpsc::unbounded_channel();
    shared.dbs.send_wanted_to(wanted);
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        // Dropped (the server stops), it aborts every namespace's task.
        let mut tasks = tokio::task::JoinSet::new();
        let follow = |tasks: &mut tokio::task::JoinSet<String>, namespace: String| {
            let (shared, primary) = (shared.clone(), primary.clone());
            tasks.spawn(async move {
                crate::replication::follow_primary(shared, primary, namespace.clone()).await;
                namespace
            });
        };
        for namespace in &namespaces {
            follow(&mut tasks, namespace.clone());
        }
        loop {
            tokio::select! {
                asked = asked.recv() => {
                    let Some(namespace) = asked else { break };
                    if namespaces.insert(namespace.clone()) {
                        follow(&mut tasks, namespace);
                    }
                }
                // A namespace no longer followed (the primary has none of that name) may be
                // asked for again.
                Some(Ok(ended)) = tasks.join_next(), if !tasks.is_empty() => {
                    namespaces.remove(&ended);
                }
            }
        }
    }))
}

async fn sweep_batons(shared: Arc<Shared>) {
    let period = (shared.limits.baton_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        shared.batons.expire(&shared.dbs).await;
    }
}

/// Flushes each database used to storage (when there is storage), then closes every log
/// (streams and their connections are closed by now): each close checkpoints its database.
fn close_databases(dbs: &Databases) {
    if dbs.manager().storage().is_some() {
        for namespace in dbs.used_namespaces() {
            let path = dbs.path_of(&namespace);
            match libsql_wal::flush_to_storage(&path, Some(SHUTDOWN_FLUSH_TIMEOUT), dbs.manager()) {
                Ok(Some(frame_no)) => tracing::info!(namespace, frame_no, "durable in storage"),
                Ok(None) => tracing::warn!(namespace, "not all commits reached storage before shutdown"),
                Err(e) => tracing::warn!(namespace, error = %e, "flushing to storage failed"),
            }
        }
    }
    let closed = libsql_wal::close_idle_logs();
    tracing::info!(closed, "databases closed");
}

//! Durable storage: sealed segments shipped to an object store, and what is rebuilt from it.
//!
//! - [`Storage`]: one object store, chosen by URL (`file://`, `s3://`, `gs://`, `az://`,
//!   `memory://`), with the runtime its requests run on and the bound on concurrent uploads.
//! - `layout`: object keys, namespace names, and the *chain* of objects that rebuilds a
//!   namespace.
//! - `durability`: per database, the durable frame_no, its local record, and the upload task
//!   that moves it forward (never on the commit path).
//! - `snapshot`: whole-database objects, the base of a namespace whose early frames are no
//!   longer in any segment.
//! - `restore`: a database file rebuilt from storage alone.
//!
//! Architecture invariant (brief, invariant 7): a segment is copied into the database file
//! and deleted only once it is durable; `SharedWal::checkpointable_segments` enforces it with
//! [`durability::Durability::gate_frame_no`].

pub mod branch;
pub mod compaction;
pub mod durability;
pub mod history;
pub mod layout;
pub(crate) mod pack;
pub(crate) mod remote;
pub mod restore;
pub(crate) mod snapshot;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload};
use url::Url;

use crate::error::{Error, Result};
use layout::{Chain, StoredObject};

/// Tuning of storage traffic.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Uploads in flight at once, across every namespace of the process using this storage.
    pub upload_concurrency_max: usize,
    /// First delay before retrying a failed upload; doubled per consecutive failure, with
    /// jitter, up to `retry_delay_max`.
    pub retry_delay_min: Duration,
    pub retry_delay_max: Duration,
    /// One request's time limit (a hung server must not hang an upload forever).
    pub request_timeout: Duration,
    /// How the namespaces this process ships are compacted and garbage collected (online,
    /// after uploads; see [`compaction`]).
    pub compaction: compaction::CompactionConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            upload_concurrency_max: 8,
            retry_delay_min: Duration::from_millis(100),
            retry_delay_max: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            compaction: compaction::CompactionConfig::default(),
        }
    }
}

/// An object store and how this process talks to it. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<StorageInner>,
}

struct StorageInner {
    /// The URL without credentials or query, for messages.
    display_url: String,
    /// Scrubbed from every message (object_store's errors quote URLs with credentials).
    secrets: Secrets,
    backend: Backend,
    config: StorageConfig,
    uploads: Arc<tokio::sync::Semaphore>,
}

enum Backend {
    /// A cloud or in-memory store.
    Store(Arc<dyn ObjectStore>),
    /// A `file://` store: puts are followed by an fsync of the file and directory, which the
    /// local backend does not do itself.
    Local(LocalDir),
}

/// A `file://` store's directory, opened once it exists: reading a store that does not
/// exist (yet) finds it empty and creates nothing, so `storage ls`, `info` and `restore`
/// change nothing on disk; the first upload creates it.
struct LocalDir {
    dir: PathBuf,
    opened: Mutex<Option<Arc<dyn ObjectStore>>>,
}

impl LocalDir {
    /// The store, if the directory exists.
    fn existing(&self) -> std::result::Result<Option<Arc<dyn ObjectStore>>, String> {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if opened.is_none() && self.dir.is_dir() {
            let store = LocalFileSystem::new_with_prefix(&self.dir).map_err(|e| e.to_string())?;
            *opened = Some(Arc::new(store));
        }
        Ok(opened.clone())
    }

    /// The store, the directory created first if it is missing.
    fn created(&self) -> std::result::Result<Arc<dyn ObjectStore>, String> {
        if let Some(store) = self.existing()? {
            return Ok(store);
        }
        create_dir_all_synced(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        self.existing()?.ok_or_else(|| format!("{} is not a directory", self.dir.display()))
    }
}

/// `create_dir_all`, then syncs the parent of every directory it created, so they survive
/// a power cut along with the first object put in them.
fn create_dir_all_synced(dir: &std::path::Path) -> std::io::Result<()> {
    let missing: Vec<&std::path::Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing {
        if let Some(parent) = created.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// The runtime every storage request runs on: its own threads, so neither commits nor a
/// caller's runtime ever wait on network I/O.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("libsql-wal-storage")
            .enable_all()
            .build()
            .expect("cannot start the storage runtime's threads")
    });
    &RUNTIME
}

/// `memory://NAME` stores live as long as the process, shared by name.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);
    let mut stores = STORES.lock().unwrap_or_else(|e| e.into_inner());
    stores.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

impl Storage {
    /// Opens the store at `url`. Credentials and endpoints come from the usual environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_*`,
    /// `AZURE_*`), overridden by options in the URL's query, named as the environment
    /// variables in lower case (`s3://bucket/p?aws_endpoint=http://127.0.0.1:9000&aws_allow_http=true`);
    /// they are never logged. What no backend would read (credentials in the user info of an
    /// `s3://` or `gs://` URL, an unknown option, a query on `file://`) is refused.
    pub fn open(url: &str) -> Result<Storage> {
        Storage::open_with(url, &[], StorageConfig::default())
    }

    /// As [`Storage::open`], with builder options (`("aws_endpoint", "http://...")`, ...)
    /// taking precedence over the environment.
    pub fn open_with(url: &str, options: &[(&str, &str)], config: StorageConfig) -> Result<Storage> {
        let secrets = Secrets::of(url, options);
        let bad = |reason: String| Error::Storage { url: redact(url), reason: secrets.scrub(&reason) };
        let parsed = Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        if let Some(ignored) = unread_url_parts(&parsed) {
            return Err(bad(ignored));
        }
        // Query pairs are builder options (`?aws_endpoint=…&aws_allow_http=true`); options
        // given by the caller come after them, so they win.
        let query: Vec<(String, String)> =
            parsed.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let options: Vec<(&str, &str)> =
            query.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(options.iter().copied()).collect();
        let options = options.as_slice();
        let mut bare = parsed.clone();
        bare.set_query(None);
        let bare_url = bare.as_str();
        let backend = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| bad("a file:// URL needs an absolute path".into()))?;
                // Not created here (see `LocalDir`); opened now if it exists, to report
                // a directory that cannot be opened at once.
                let local = LocalDir { dir, opened: Mutex::new(None) };
                local.existing().map_err(bad)?;
                Backend::Local(local)
            }
            "memory" => Backend::Store(memory_store(parsed.host_str().unwrap_or(""))),
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
                let store = cloud_store(parsed.scheme(), scheme, bare_url, options, &config).map_err(bad)?;
                let prefix = ObjectPath::parse(prefix).map_err(|e| bad(e.to_string()))?;
                Backend::Store(if prefix.as_ref().is_empty() {
                    store
                } else {
                    Arc::new(PrefixStore::new(store, prefix))
                })
            }
            other => return Err(bad(format!("unsupported scheme {other}: use file, s3, gs, az or memory"))),
        };
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.upload_concurrency_max.max(1)));
        let display_url = redact(url);
        Ok(Storage { inner: Arc::new(StorageInner { display_url, secrets, backend, config, uploads }) })
    }

    /// A store built by the caller (any `object_store` implementation: a wrapper that counts
    /// or fails requests, a store configured in ways a URL cannot say), named `name` in
    /// messages and in the identity a log's durable record keeps.
    pub fn with_object_store(name: &str, store: Arc<dyn ObjectStore>, config: StorageConfig) -> Storage {
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.upload_concurrency_max.max(1)));
        let inner = StorageInner {
            display_url: name.to_string(),
            secrets: Secrets::of(name, &[]),
            backend: Backend::Store(store),
            config,
            uploads,
        };
        Storage { inner: Arc::new(inner) }
    }

    /// The URL, without credentials.
    pub fn url(&self) -> &str {
        &self.inner.display_url
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Namespaces holding at least one object, sorted.
    pub fn list_namespaces(&self) -> Result<Vec<String>> {
        let store = self.read_store()?;
        let listed = self.block_on(async move { store.list_with_delimiter(None).await })?;
        let mut names: Vec<String> = listed
            .map_err(|e| self.error("listing namespaces", e))?
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| layout::validate_namespace(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The objects of `namespace` (keys this crate wrote; anything else is ignored), sorted
    /// by key.
    pub fn list(&self, namespace: &str) -> Result<Vec<StoredObject>> {
        layout::validate_namespace(namespace)?;
        let storage = self.clone();
        let namespace = namespace.to_string();
        self.block_on(async move { storage.list_async(&namespace).await })?
    }

    /// What a restore of `namespace` would apply, and the frame_no it reaches.
    pub fn chain(&self, namespace: &str) -> Result<Chain> {
        Ok(layout::chain(&self.list(namespace)?))
    }

    pub(crate) async fn list_async(&self, namespace: &str) -> Result<Vec<StoredObject>> {
        let prefix = ObjectPath::from(namespace);
        let metas: Vec<_> = self
            .read_store()?
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(&format!("listing {namespace}"), e))?;
        let mut objects: Vec<StoredObject> = metas
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.to_string();
                let kind = layout::parse_key(namespace, &key)?;
                Some(StoredObject { key, size: meta.size, kind })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Stores `bytes` under `key` in one request (atomic: a reader sees all or nothing),
    /// unless an object is there already (a conditional put, so
    /// two writers never replace each other's object); `Ok(false)` when one was. A store
    /// without conditional puts (S3 unless configured for them) overwrites: then only the
    /// listing after the upload catches a race.
    pub(crate) async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let path = ObjectPath::parse(key).map_err(|e| self.error(key, e))?;
        let store = self.write_store()?;
        let options = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match store.put_opts(&path, PutPayload::from(bytes.clone()), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
            Err(object_store::Error::NotImplemented) => {
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.error(&format!("uploading {key}"), e))?;
            }
            Err(e) => return Err(self.error(&format!("uploading {key}"), e)),
        }
        self.sync_local(key).await.map(|()| true)
    }

    /// Deletes the object at `key` (gone already counts as deleted).
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let path = ObjectPath::parse(key).map_err(|e| self.error(key, e))?;
        match self.write_store()?.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&format!("deleting {key}"), e)),
        }
    }

    /// Every key under `prefix` (a directory-like prefix such as `ns/branches`), unparsed.
    pub(crate) async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = ObjectPath::from(prefix);
        let metas: Vec<_> = self
            .read_store()?
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(&format!("listing {prefix}"), e))?;
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        Ok(keys)
    }

    /// Stores `bytes` under `key` (replacing what is there), durably.
    pub(crate) async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = ObjectPath::parse(key).map_err(|e| self.error(key, e))?;
        self.write_store()?
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(&format!("uploading {key}"), e))?;
        self.sync_local(key).await
    }

    /// Stores what `fill` writes under `key`, in parts for large objects; the object appears
    /// only once complete.
    pub(crate) fn writer(&self, key: &str) -> Result<object_store::buffered::BufWriter> {
        let path = ObjectPath::parse(key).map_err(|e| self.error(key, e))?;
        Ok(object_store::buffered::BufWriter::new(self.write_store()?, path))
    }

    /// On a local-directory store, makes a completed object durable (file and directory).
    pub(crate) async fn sync_local(&self, key: &str) -> Result<()> {
        let Backend::Local(local) = &self.inner.backend else { return Ok(()) };
        let file = local.dir.join(key);
        let sync = move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        tokio::task::spawn_blocking(sync)
            .await
            .map_err(|e| self.error(key, e))?
            .map_err(|e| self.error(&format!("syncing {key}"), e))
    }

    pub(crate) fn upload_permits(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.uploads
    }

    /// An error about this store; its text never holds the URL's credentials.
    pub(crate) fn error(&self, action: &str, e: impl std::fmt::Display) -> Error {
        let reason = self.inner.secrets.scrub(&format!("{action}: {e}"));
        Error::Storage { url: self.inner.display_url.clone(), reason }
    }

    /// Runs `future` on the storage runtime and waits for it, from any thread (also from
    /// inside another runtime, where `block_on` would panic).
    pub(crate) fn block_on<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.block_on_with_progress(future, &mut || {})
    }

    /// As [`Storage::block_on`], calling `tick` about every 100 ms while it waits.
    pub(crate) fn block_on_with_progress<F>(&self, future: F, tick: &mut dyn FnMut()) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        runtime().spawn(async move {
            let _ = tx.send(future.await);
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(output) => return Ok(output),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tick(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.error("waiting for storage", "the storage runtime stopped"));
                }
            }
        }
    }

    /// The store to read from. (A local directory that cannot be opened reads as empty
    /// here: the listing that comes before any read has reported why.)
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        self.read_store().unwrap_or_else(|_| Arc::new(InMemory::new()))
    }

    /// The store to read from: a local directory that does not exist reads as an empty
    /// store (nothing is created).
    fn read_store(&self) -> Result<Arc<dyn ObjectStore>> {
        match &self.inner.backend {
            Backend::Store(store) => Ok(store.clone()),
            Backend::Local(local) => match local.existing() {
                Ok(Some(store)) => Ok(store),
                Ok(None) => Ok(Arc::new(InMemory::new())),
                Err(e) => Err(self.error("opening the store", e)),
            },
        }
    }

    /// The store to write to: a local directory is created first if missing.
    fn write_store(&self) -> Result<Arc<dyn ObjectStore>> {
        match &self.inner.backend {
            Backend::Store(store) => Ok(store.clone()),
            Backend::Local(local) => local.created().map_err(|e| self.error("opening the store", e)),
        }
    }

    /// Runs `future` on the storage runtime; the handle stops it at its next await.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        runtime().spawn(future).abort_handle()
    }
}

/// A scratch directory of this process's own under the system's temporary directory
/// (`libsql-wal-<purpose>-<pid>-<random>/`), locked (`flock` on its `lock` file) while it
/// lives and removed on drop. Making one first removes those of its purpose that nobody
/// holds locked any more (left by a process that was killed).
pub(crate) struct TempScratch {
    pub dir: PathBuf,
    _lock: Box<dyn crate::io::IoFile>,
}

impl TempScratch {
    pub fn new(purpose: &str) -> Result<TempScratch> {
        use crate::error::IoAction;
        use crate::io::Io;
        let io = crate::io::StdIo;
        let prefix = format!("libsql-wal-{purpose}-");
        let temp = std::env::temp_dir();
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let stale = entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix))
                && io.open_read_only(&entry.path().join("lock")).is_ok_and(|l| l.try_lock_exclusive().unwrap_or(false));
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = temp.join(format!("{prefix}{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).map_err(Error::io(IoAction::Create, &dir))?;
        let lock_path = dir.join("lock");
        let lock = io.open(&lock_path, true).map_err(Error::io(IoAction::Create, &lock_path))?;
        lock.try_lock_exclusive().map_err(Error::io(IoAction::Lock, &lock_path))?;
        Ok(TempScratch { dir, _lock: lock })
    }
}

impl Drop for TempScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies the object at `key` into a new file at `out`, as it is (a plain copy: no check):
/// what `bench storage` measures restores against.
pub fn copy_object_to_file(storage: &Storage, key: &str, out: &std::path::Path) -> Result<()> {
    let (inner, key, out) = (storage.clone(), key.to_string(), out.to_path_buf());
    storage.block_on(async move { restore::download_to(&inner, &key, &out).await })?
}

/// Builds a cloud store: our client options first, then the environment's variables for
/// that cloud (`AWS_*`, `GOOGLE_*`, `AZURE_*`), then the URL, then explicit `options`. (The
/// builders' `from_env` would be overwritten by `with_client_options`, losing for example
/// `AWS_ALLOW_HTTP`.)
/// What a store URL says that no backend would read: better refused than silently
/// ignored (a request then goes to the default endpoint, signed with whatever credentials
/// the environment has). `file://` and `memory://` take no user info and no query; `s3://`
/// and `gs://` take no user info (credentials come from the environment or from query
/// options); Azure's `abfss://container@account…` names its container there, but a
/// password is never read.
fn unread_url_parts(url: &Url) -> Option<String> {
    let has_user = !url.username().is_empty();
    let has_password = url.password().is_some();
    match url.scheme() {
        "file" | "memory" if has_user || has_password || url.query().is_some() || url.fragment().is_some() => {
            Some(format!("a {}:// URL takes no user info, query or fragment", url.scheme()))
        }
        "s3" | "s3a" | "gs" if has_user || has_password => Some(format!(
            "credentials in a {}:// URL are not read: give them in the environment (AWS_*, GOOGLE_*) or as query \
             options (?aws_access_key_id=…)",
            url.scheme()
        )),
        "az" | "abfs" | "abfss" if has_password => Some(
            "a password in an Azure URL is not read: give credentials in the environment (AZURE_*) or as query options"
                .into(),
        ),
        _ if url.fragment().is_some() => Some("a store URL takes no fragment (#…)".into()),
        _ => None,
    }
}

/// The cargo feature of this crate that builds the backend for a cloud scheme.
fn cloud_feature(scheme: &ObjectStoreScheme) -> Option<&'static str> {
    match scheme {
        ObjectStoreScheme::AmazonS3 => Some("s3"),
        ObjectStoreScheme::GoogleCloudStorage => Some("gcs"),
        ObjectStoreScheme::MicrosoftAzure => Some("azure"),
        _ => None,
    }
}

/// The store of a cloud URL (`url_scheme` as written: `s3`, `gs`, `abfss`, ...), or why not:
/// a backend whose cargo feature this build left off is named with the feature.
#[cfg_attr(not(any(feature = "s3", feature = "gcs", feature = "azure")), allow(unused_variables))]
fn cloud_store(
    url_scheme: &str,
    scheme: ObjectStoreScheme,
    url: &str,
    options: &[(&str, &str)],
    config: &StorageConfig,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    let Some(feature) = cloud_feature(&scheme) else {
        return Err(format!("scheme {scheme:?} is not a cloud store"));
    };
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    {
        use object_store::{ClientOptions, RetryConfig};
        let client =
            ClientOptions::new().with_timeout(config.request_timeout).with_connect_timeout(Duration::from_secs(5));
        // Our own upload loop retries forever with backoff; the client's retries only smooth
        // over a blip, so an outage shows up (in `info`) within seconds.
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
        macro_rules! build {
            ($builder:ty, $env_prefix:expr) => {{
                let built = || -> object_store::Result<Arc<dyn ObjectStore>> {
                    let mut builder = <$builder>::new().with_client_options(client).with_retry(retry);
                    for (key, value) in settings($env_prefix) {
                        if let Ok(key) = key.parse() {
                            builder = builder.with_config(key, value);
                        }
                    }
                    builder = builder.with_url(url);
                    for (key, value) in options {
                        builder = builder.with_config(key.parse()?, *value);
                    }
                    Ok(Arc::new(builder.build()?) as Arc<dyn ObjectStore>)
                };
                return built().map_err(|e| e.to_string());
            }};
        }
        match scheme {
            #[cfg(feature = "s3")]
            ObjectStoreScheme::AmazonS3 => build!(object_store::aws::AmazonS3Builder, "AWS_"),
            #[cfg(feature = "gcs")]
            ObjectStoreScheme::GoogleCloudStorage => build!(object_store::gcp::GoogleCloudStorageBuilder, "GOOGLE_"),
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => build!(object_store::azure::MicrosoftAzureBuilder, "AZURE_"),
            _ => {}
        }
    }
    Err(format!(
        "{url_scheme}:// URLs need libsql-wal's cargo feature `{feature}`, which this build does not enable \
         (features = [\"{feature}\"] in Cargo.toml)"
    ))
}

/// Environment variables starting with `prefix`, as lower-case builder keys.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn settings(prefix: &str) -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect()
}

/// `scheme://host/path`, without user info, password, query or fragment (where
/// credentials hide).
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "<invalid URL>".to_string(),
    }
}

/// Shorter values are left in messages: they cannot hide a credential, and replacing every
/// `1` or `r` would make messages unreadable.
const SECRET_LEN_MIN: usize = 3;

/// What must never appear in a message about a store: the credentials its URL and options
/// carried. object_store's errors quote URLs (the one given, or a request's, with a SAS
/// token appended), so every message about a store goes through [`Secrets::scrub`].
#[derive(Debug, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    /// The user info, password, query (whole, and each value) and fragment of `url`, as
    /// written and decoded, and as the URL parser spells them; and the values of `options`
    /// whose key names a credential.
    fn of(url: &str, options: &[(&str, &str)]) -> Secrets {
        let mut found: Vec<String> = Vec::new();
        let (user_info, query, fragment) = url_parts(url);
        if let Some(user_info) = user_info {
            found.push(user_info.to_string());
            found.extend(user_info.split(':').map(str::to_string));
        }
        if let Some(query) = query {
            found.push(query.to_string());
            found.extend(query.split('&').filter_map(|pair| pair.split_once('=')).map(|(_, v)| v.to_string()));
        }
        found.extend(fragment.map(str::to_string));
        if let Ok(parsed) = Url::parse(url) {
            found.push(parsed.username().to_string());
            found.extend(parsed.password().map(str::to_string));
            found.extend(parsed.query().map(str::to_string));
            found.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
            found.extend(parsed.fragment().map(str::to_string));
        }
        let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
        found.extend(decoded);
        found.extend(options.iter().filter(|(key, _)| names_a_credential(key)).map(|(_, v)| v.to_string()));
        found.retain(|s| s.len() >= SECRET_LEN_MIN);
        // Longest first, so a whole query goes before the values inside it.
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found.dedup();
        Secrets(found)
    }

    /// `text` without any URL's user info, query or fragment, and without any known secret.
    fn scrub(&self, text: &str) -> String {
        let mut text = scrub_urls(text);
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// The user info, query and fragment of `url`, read from its text (so also from a URL the
/// parser refuses).
fn url_parts(url: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let (url, fragment) = match url.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (url, None),
    };
    let (url, query) = match url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (url, None),
    };
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let user_info = authority.rsplit_once('@').map(|(user_info, _)| user_info);
    (user_info, query, fragment)
}

fn names_a_credential(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "token", "key", "sas", "sig", "credential", "auth"].iter().any(|word| key.contains(word))
}

/// `%XX` escapes decoded (and `+` as a space, as in a query); invalid escapes kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `scheme://...` in `text` without its user info (`user:password@`), query and
/// fragment. A URL ends at whitespace, a quote or a closing bracket (punctuation before
/// them is kept).
fn scrub_urls(text: &str) -> String {
    let ends_url = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']' | '}');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, url) = rest.split_at(at + 3);
        out.push_str(before);
        let len = url.find(ends_url).unwrap_or(url.len());
        // Punctuation ending the URL belongs to the sentence around it.
        let len = url[..len].trim_end_matches(['.', ',', ':', ';', '!']).len();
        let (url, after) = url.split_at(len);
        let authority_len = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_len);
        out.push_str(authority.rsplit_once('@').map_or(authority, |(_, host)| host));
        out.push_str(&path[..path.find(['?', '#']).unwrap_or(path.len())]);
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URLs of every scheme with credentials in the user info and the query, some
    /// percent-encoded; every secret holds "Secret".
    const URLS: &[&str] = &[
        "az://acct:AzSecret1@container/p?sig=AzSecret2",
        "abfss://container:AzSecret1@acct.dfs.core.windows.net/p?sv=1&sig=AzSecret2%2B",
        "s3://KEYSecret0:S3Secret1@bucket/prefix?X-Amz-Signature=S3Secret2&X-Amz-Security-Token=S3Secret3",
        "gs://user:GsSecret1@bucket/p?access_token=GsSecret2#GsSecret3",
        "file://user:FileSecret1@localhost/tmp/libsql-wal-redaction-test?token=FileSecret2",
        "file://user:FileSecret1@elsewhere/tmp/x?token=FileSecret2",
        "memory://user:MemSecret1@name?token=MemSecret2",
        "ftp://user:FtpSecret1@host/p?token=FtpSecret2",
        "s3://user:Pct%53ecret1@bucket/p?sig=Pct%53ecret2",
        "not a url://user:BadSecret1@host?sig=BadSecret2",
    ];

    fn assert_clean(text: &str) {
        assert!(!text.contains("Secret"), "a secret shows: {text}");
        assert!(!text.contains("%53ecret"), "a secret shows: {text}");
    }

    fn quick() -> StorageConfig {
        StorageConfig { request_timeout: Duration::from_secs(2), ..StorageConfig::default() }
    }

    /// Options that keep requests off the network (a port nobody listens on) and builders
    /// satisfied.
    const OPTIONS: &[(&str, &str)] = &[
        ("aws_endpoint", "http://127.0.0.1:9"),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "OptSecretKey"),
        ("aws_secret_access_key", "OptSecretValue"),
    ];

    #[test]
    fn no_secret_in_any_error() {
        for url in URLS {
            let options: &[(&str, &str)] = if url.starts_with("s3") { OPTIONS } else { &[] };
            match Storage::open_with(url, options, quick()) {
                Err(e) => assert_clean(&e.to_string()),
                Ok(storage) => {
                    assert_clean(storage.url());
                    let offline = ["s3", "file", "memory"].iter().any(|s| url.starts_with(s));
                    if offline && let Err(e) = storage.list_namespaces() {
                        assert_clean(&e.to_string());
                    }
                    // What object_store's errors quote: the URL given, a request's URL with
                    // the query appended, the decoded credentials.
                    let quoted = format!(
                        "Error performing GET {url} (url: \"{url}&comp=list\"), user {}",
                        percent_decode(url_parts(url).0.unwrap_or(""))
                    );
                    assert_clean(&storage.error("listing", quoted).to_string());
                }
            }
        }
    }

    /// Run with the cloud features off (`cargo test -p libsql-wal --lib`, as `.ci/test`
    /// does): a cloud URL names the feature it needs. Schemes whose feature is on are skipped.
    #[test]
    fn a_cloud_url_whose_feature_is_off_names_the_feature() {
        let cases = [
            ("s3://bucket/p", "s3", cfg!(feature = "s3")),
            ("s3a://bucket/p", "s3", cfg!(feature = "s3")),
            ("gs://bucket/p", "gcs", cfg!(feature = "gcs")),
            ("az://container/p", "azure", cfg!(feature = "azure")),
            ("abfss://container@acct.dfs.core.windows.net/p", "azure", cfg!(feature = "azure")),
        ];
        for (url, feature, enabled) in cases {
            if enabled {
                continue;
            }
            let error = Storage::open(url).err().unwrap_or_else(|| panic!("{url} opened without its feature"));
            let message = error.to_string();
            assert!(message.contains(&format!("cargo feature `{feature}`")), "{url}: {message}");
        }
    }

    #[test]
    fn scrubbing_keeps_the_rest_of_the_message() {
        let secrets = Secrets::of("az://acct:AzSecret1@container/p?sig=AzSecret2", &[]);
        assert_eq!(
            secrets.scrub("GET https://x.blob.core.windows.net/container/p?comp=list&sig=AzSecret2: refused"),
            "GET https://x.blob.core.windows.net/container/p: refused"
        );
        assert_eq!(secrets.scrub("bad key AzSecret1 (az://acct:AzSecret1@container)"), "bad key *** (az://container)");
        assert_eq!(secrets.scrub("no URL here"), "no URL here");
    }
}

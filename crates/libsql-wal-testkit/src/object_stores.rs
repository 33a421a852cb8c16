//! An object store for tests and benchmarks: `object_store`'s in-memory store, with every
//! request counted (a multipart upload's parts, completion and abort included), deletes
//! that can be made to fail, as a store without delete permission answers, uploads that
//! can be made slow, as a distant store's PUTs are, and a snapshot PUT that can be made to
//! land beside a twin, as another copy's claim landing at the same moment does.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use libsql_wal::object_store::memory::InMemory;
use libsql_wal::object_store::path::Path as ObjectPath;
use libsql_wal::object_store::{
    self, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result, UploadPart,
};

/// See the module documentation. Share it with `Storage::with_object_store(name, store.clone(), …)`.
#[derive(Debug, Default)]
pub struct InstrumentedStore {
    inner: InMemory,
    requests: Arc<AtomicU64>,
    fail_deletes: AtomicBool,
    /// Every upload (a PUT, a multipart completion) takes this long first.
    put_delay_ms: Arc<AtomicU64>,
    twin: std::sync::Mutex<Option<TwinMaker>>,
}

/// Derives bytes from bytes.
type Transform = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// Makes the bytes of a twin from those of the snapshot being uploaded.
pub struct TwinMaker(pub Box<Transform>);

impl fmt::Debug for TwinMaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TwinMaker")
    }
}

impl InstrumentedStore {
    pub fn new() -> Arc<InstrumentedStore> {
        Arc::new(InstrumentedStore::default())
    }

    /// Requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// From now on every upload waits `delay` before it is done.
    pub fn set_put_delay(&self, delay: std::time::Duration) {
        self.put_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next single-PUT upload of a snapshot (`…/snapshots/<frame>-<commit>-<taken>.snap`)
    /// lands together with a twin a millisecond later (`<taken + 1>`, so the twin is the
    /// base a listing picks), whose bytes `make` derives from the snapshot's.
    pub fn twin_next_snapshot(&self, make: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) {
        *self.twin.lock().unwrap() = Some(TwinMaker(Box::new(make)));
    }

    /// From now on every delete fails with `PermissionDenied` (or works again).
    pub fn fail_deletes(&self, fail: bool) {
        self.fail_deletes.store(fail, Ordering::SeqCst);
    }

    /// Every key in the store, read without counting.
    pub fn keys(&self) -> Vec<String> {
        let listed: Vec<Result<ObjectMeta>> = futures::executor::block_on(self.inner.list(None).collect());
        listed.into_iter().filter_map(|m| m.ok()).map(|m| m.location.to_string()).collect()
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    requests: Arc<AtomicU64>,
    put_delay_ms: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        put_delay(&self.put_delay_ms).await;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

/// Every method that makes a request is counted once; the trait's other methods are built on
/// these (a `head` or a range read is a `get_opts`, a `rename` a copy and a delete).
#[async_trait::async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(&self, location: &ObjectPath, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.count();
        put_delay(&self.put_delay_ms).await;
        let make = twin_key(location.as_ref()).and_then(|key| Some((key, self.twin.lock().unwrap().take()?)));
        if let Some((twin_key, make)) = make {
            let bytes: Vec<u8> = payload.iter().flat_map(|chunk| chunk.iter().copied()).collect();
            let twin = PutPayload::from(make.0(&bytes));
            self.inner.put_opts(&ObjectPath::from(twin_key), twin, PutOptions::default()).await?;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count();
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload { inner, requests: self.requests.clone(), put_delay_ms: self.put_delay_ms.clone() }))
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> Result<GetResult> {
        self.count();
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> Result<()> {
        self.count();
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "deletes are not allowed here".into(),
            });
        }
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count();
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count();
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> Result<ListResult> {
        self.count();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.count();
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjectPath, to: &ObjectPath) -> Result<()> {
        self.count();
        self.inner.copy_if_not_exists(from, to).await
    }
}

async fn put_delay(delay_ms: &AtomicU64) {
    let ms = delay_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// The key of a snapshot's twin: the same name with its taken time 1 ms later.
fn twin_key(key: &str) -> Option<String> {
    let stem = key.strip_suffix(".snap").filter(|_| key.contains("/snapshots/"))?;
    let (head, taken) = stem.rsplit_once('-')?;
    let taken: u64 = taken.parse().ok()?;
    Some(format!("{head}-{:0width$}.snap", taken + 1, width = 13))
}

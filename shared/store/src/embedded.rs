//! In-process adapter on Qdrant Edge (`qdrant-edge` 0.7).
//!
//! `EdgeShard` is synchronous. Reads run on tokio's blocking pool with the shard held in an
//! `Arc`; writes go to the shard's one writer thread ([`Writer`]) and return only once an
//! `EdgeShard::flush` covers them: `EdgeShard::load` does not replay the WAL, so data not
//! flushed to the segments would be lost on a crash. One writer is also required for soundness
//! of `flush` itself, which `try_lock`s the WAL and panics if another update holds it.
//!
//! A flush fsyncs every file of every segment, changed or not (58 files for the appendable
//! segment with this service's vectors and payload indexes, 121 once an indexed segment sits
//! beside it: 15–30 ms here, several times the update it follows), so it is a group commit: the
//! writer applies every write that queued while its last flush ran, then flushes once for all
//! of them. Writes that arrive during one flush (the worker's batches in flight, the indexer's,
//! deletes) share the next.
//!
//! The optimizers (HNSW indexing, merging) run beside the writes, not on the writer thread:
//! they take seconds to minutes as the collection grows, and writes waited for them all that
//! time when they ran under the old write lock. Their one conflict with a write is `flush`,
//! which `try_read`s the segment holder and panics in the moments an optimizer holds it to swap
//! segments; [`flush`] retries it then. A due run waits for the writes to pause
//! (`EmbeddedStore::writes_paused`).
//!
//! While a run rebuilds a segment, it wraps it in a proxy, and a write that changes the
//! segment's points (a delete, an update of an existing point: [`Wrote::Existing`]) lands only
//! in the proxy's memory until the run swaps the rebuilt segment in; a flush meanwhile does not
//! persist it, and a crash would bring deleted points back and leave updated ones twice. So the
//! writer holds the answer of such a write until a flush that starts after the run has ended.
//! New points go to a segment of their own and are answered at the next flush, run or not.
//!
//! Qdrant Edge 0.7 writes a WAL it never reads back nor truncates: `<dir>/wal` grows with every
//! write. The writer frees the disk of what Edge will never read as it goes, and each open
//! removes it ([`wal`]). It must not be deleted by hand: point versions come from WAL sequence
//! numbers, and a reset WAL would make later updates of existing points look stale.
//!
//! A process may stop during an optimizer run without waiting for it (Edge 0.7 cannot cancel
//! one, and at a million points it takes minutes): every write the store answered is flushed
//! by then, the segments the run reads from stay until it has swapped its new one in, and the
//! next open removes what the unfinished build left ([`builds`]) and runs it again. A stop
//! between the moment the new segment is moved into place and the removal of the ones it
//! replaces leaves both: Edge's load does not deduplicate them, so exact counts include the
//! copies until a later merge (search and scroll answer each point once).
//!
//! The shard directory is `flock`ed while open: a second `open` of the same directory (in this
//! or another process) waits up to 5 s, then fails with `StoreError::Unavailable`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, CreateIndex, CreateVectorName, DEFAULT_VECTOR_NAME,
    Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParamsBuilder, EdgeVectorParamsBuilder,
    FieldCondition, FieldIndexOperations, Filter, HasVectorCondition, JsonPath, KeywordIndexParams,
    Match, MatchAny, Modifier, NamedQuery, OperationError, PayloadFieldSchema, PayloadSchemaParams,
    PointId, PointInsertOperations, PointOperations, PointStructPersisted, PointVectorsPersisted,
    Prefetch, QueryEnum, QueryRequest, Range, ScoringQuery, ScrollRequest, ShardInfo,
    SparseVectorConfig, UpdateOperation, UpdateVectorsOp, ValueVariants, VectorInternal,
    VectorNameConfig, VectorNameOperations, VectorOperations, VectorPersisted,
    VectorStructInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use crate::keyword::{KEYWORD_VECTOR, SparseVector};
use crate::meta::{self, MetaCond};
use crate::query::{self, Fusion, Leg, Node, Scoring};
use crate::upgrade::{self, Backfill};
use crate::{
    ASSET_ID_KEY, Explanation, Hit, MODEL_KEY, MODEL_VER_KEY, MOVED_FROM_KEY, NewPoint, ORG_ID_KEY,
    Payload, PointFilter, SEGMENT_ID_KEY, SEQ_KEY, ScoredPoint, SearchRequest, StoreError,
    StoreKind, StoredPoint, VectorStore, check_collection_name, finish_hits, payload_from_json,
    prepare_points,
};
use spaces::Spaces;

mod builds;
mod spaces;
mod wal;

/// File Qdrant Edge writes when a shard is created; its presence means "load, don't create".
const EDGE_CONFIG_FILE: &str = "edge_config.json";
/// Points written between two background optimizer runs.
pub const OPTIMIZE_EVERY: usize = 5_000;
/// A due run waits for the writes to pause this long...
const OPTIMIZE_QUIET: Duration = Duration::from_secs(1);
/// ...but starts at the latest this long after it became due, writes or not: until it runs,
/// the points written meanwhile are scanned by search, and each upsert into the appendable
/// segment walks the whole posting list of each of its keyword terms (Qdrant's in-RAM
/// `PostingList::upsert`), which grows with them.
const OPTIMIZE_DELAY_MAX: Duration = Duration::from_secs(10);
/// While writes go on, the writer frees the WAL segments Edge will never read at most this often
/// (a directory read and a `stat` or two; [`tidy_wal`]), so the log stays within about two
/// segments and what a second writes.
const TIDY_WAL_EVERY: Duration = Duration::from_secs(1);
/// Page size for `scroll_ids`.
const SCROLL_PAGE: usize = 1024;
/// How long `open` waits for the WAL directory lock: `LOCK_RETRIES * LOCK_RETRY_DELAY`.
const LOCK_RETRIES: u32 = 50;
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Qdrant Edge shard in `<path>/<collection>/`. Built by [`crate::open`].
pub struct EmbeddedStore {
    shard: Arc<EdgeShard>,
    writer: Arc<Writer>,
    optimizer: Arc<Optimizer>,
    /// The embedding spaces of the shard's points, so that searches skip the model conditions
    /// every point meets ([`spaces`]).
    spaces: Arc<Spaces>,
    dir: PathBuf,
    vector_size: usize,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .field("vector_size", &self.vector_size)
            .finish_non_exhaustive()
    }
}

/// `EdgeShard`'s own `Drop` flushes and panics if that fails, which it does when the directory
/// was removed under a running store. Every write is already flushed before it returns, so there
/// is nothing left to save: keep the shard alive (leak it) rather than panic during shutdown.
impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if !self.dir.exists() {
            tracing::warn!(dir = %self.dir.display(), "store directory is gone; skipping final flush");
            std::mem::forget(Arc::clone(&self.shard));
        }
    }
}

impl EmbeddedStore {
    /// Open `<root>/<collection>`, creating directory and shard if needed.
    pub async fn open(
        root: PathBuf,
        collection: String,
        vector_size: usize,
    ) -> Result<Self, StoreError> {
        check_collection_name(&collection)?;
        let dir = root.join(&collection);
        let dir2 = dir.clone();
        let (shard, spaces) = blocking(move || {
            let started = Instant::now();
            let shard = open_shard(&dir2, vector_size)?;
            let loaded = started.elapsed();
            let spaces = Spaces::load(&shard)?;
            // Both grow with the points: the start-up time an operator waits for.
            tracing::info!(
                dir = %dir2.display(),
                load_ms = loaded.as_millis() as u64,
                spaces_ms = (started.elapsed() - loaded).as_millis() as u64,
                "vector store opened"
            );
            Ok((shard, spaces))
        })
        .await?;
        let shard = Arc::new(shard);
        let optimizer = Arc::<Optimizer>::default();
        let writer = Writer::spawn(Arc::clone(&shard), Arc::clone(&optimizer), &dir)?;
        let store = Self {
            shard,
            writer: Arc::new(writer),
            optimizer,
            spaces: Arc::new(spaces),
            dir,
            vector_size,
        };
        // A shard made before keyword search: add the sparse vector, then give every point
        // one. Nothing else writes while `open` holds the directory lock.
        store.ensure_keyword_vector().await?;
        let report = upgrade::backfill(&store).await?;
        store.wrote(report.points as usize);
        store.tidy_wal_on_writer().await;
        // Whatever the last run left unindexed (it may have stopped mid-way) is indexed now.
        store.optimize_in_background();
        Ok(store)
    }

    /// Adds the keyword sparse vector (IDF) to a shard that has none; checks it otherwise.
    async fn ensure_keyword_vector(&self) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        self.write(move |shard| {
            let modifier = shard
                .config()
                .sparse_vectors
                .get(KEYWORD_VECTOR)
                .map(|params| params.modifier);
            match modifier {
                Some(Some(Modifier::Idf)) => Ok(((), Wrote::Nothing)),
                Some(other) => Err(StoreError::InvalidInput(format!(
                    "edge shard {} has a sparse vector `{KEYWORD_VECTOR}` with modifier {other:?}, \
                     expected Idf",
                    dir.display()
                ))),
                None => {
                    tracing::info!(dir = %dir.display(), "adding the keyword vector to a shard made before hybrid search");
                    shard
                        .update(UpdateOperation::VectorNameOperation(
                            VectorNameOperations::CreateVectorName(CreateVectorName {
                                vector_name: KEYWORD_VECTOR.to_owned(),
                                config: VectorNameConfig::sparse(SparseVectorConfig {
                                    modifier: Some(Modifier::Idf),
                                    datatype: None,
                                }),
                            }),
                        ))
                        .map_err(map_err)?;
                    Ok(((), Wrote::New))
                }
            }
        })
        .await
    }

    /// Runs Qdrant's optimizers (HNSW indexing of large segments, merging, vacuum of deleted
    /// points) to the end, then flushes. Qdrant Edge has no background optimizer: without this,
    /// every segment stays a plain one and search is a full scan. Writes go on meanwhile: the
    /// optimizer wraps the segments it rebuilds in proxies that take them, and swaps the new
    /// segment in under the segment holder's lock, which [`flush`] waits out. One run at a time.
    /// Returns whether anything changed.
    pub async fn optimize(&self) -> Result<bool, StoreError> {
        self.optimizer.since.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let (shard, optimizer) = (Arc::clone(&self.shard), Arc::clone(&self.optimizer));
        let ran = blocking(move || {
            let _one_at_a_time = optimizer.lock.lock().unwrap_or_else(|p| p.into_inner());
            let _indexing = Indexing::set(&optimizer.indexing);
            shard.optimize().map_err(map_err)
        })
        .await;
        // The new segments, and what the proxies took meanwhile, made durable; the writes the
        // writer held for this run are answered by that flush (it runs even if nothing changed,
        // or the run failed, as long as some are held).
        let changed = matches!(ran, Ok(true));
        self.write(move |_| Ok(((), if changed { Wrote::New } else { Wrote::Nothing })))
            .await?;
        ran?;
        let elapsed = started.elapsed();
        metrics::histogram!("heimdex_vector_store_optimize_duration_seconds", "collection" => self.collection_label())
            .record(elapsed.as_secs_f64());
        let info = self.set_size_gauges().await?;
        self.tidy_wal_on_writer().await;
        tracing::info!(
            dir = %self.dir.display(),
            changed,
            elapsed_ms = elapsed.as_millis() as u64,
            points = info.points_count,
            indexed = info.indexed_vectors_count,
            "vector store optimized"
        );
        Ok(changed)
    }

    /// Whether a background run of [`Self::optimize`] is due or under way: the index is not
    /// settled.
    pub fn optimizing(&self) -> bool {
        self.optimizer.running.load(Ordering::Acquire)
    }

    /// Whether the optimizers are running now (not only due).
    pub fn indexing(&self) -> bool {
        self.optimizer.indexing.load(Ordering::Acquire)
    }

    /// Reads the shard's points and indexed vectors and sets their gauges: at the end of each
    /// optimizer run, and whenever the metrics sampler asks ([`VectorStore::sample_gauges`]),
    /// so that they follow a load as it goes. Cheap: a few counters per segment.
    async fn set_size_gauges(&self) -> Result<ShardInfo, StoreError> {
        let info = self.read(|shard| Ok(shard.info())).await?;
        let collection = self.collection_label();
        metrics::gauge!("heimdex_vector_store_points", "collection" => collection.clone())
            .set(info.points_count as f64);
        metrics::gauge!("heimdex_vector_store_indexed_vectors", "collection" => collection)
            .set(info.indexed_vectors_count as f64);
        Ok(info)
    }

    /// Vectors covered by a vector index (HNSW), approximately; the rest are scanned.
    pub async fn indexed_vectors(&self) -> Result<usize, StoreError> {
        self.read(|shard| Ok(shard.info().indexed_vectors_count))
            .await
    }

    /// Counts written points; past [`OPTIMIZE_EVERY`], runs [`Self::optimize`] in the
    /// background (one at a time; writes and reads go on meanwhile) once the writes pause.
    fn wrote(&self, points: usize) {
        if points == 0 {
            return;
        }
        *self
            .optimizer
            .last_write
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let total = self.optimizer.since.fetch_add(points, Ordering::Relaxed) + points;
        if total >= OPTIMIZE_EVERY {
            self.optimize_in_background();
        }
    }

    /// Waits until the writes have paused for [`OPTIMIZE_QUIET`], or [`OPTIMIZE_DELAY_MAX`]
    /// has passed.
    ///
    /// An index built during a burst of writes takes the cores the burst needs, its proxy
    /// segments slow every write, and once it is swapped in every flush syncs its files too
    /// (121 files instead of 58). The points not yet indexed are searched exactly (a scan)
    /// meanwhile. Qdrant's advice for bulk uploads is the same: index after the upload.
    async fn writes_paused(&self) {
        let deadline = Instant::now() + OPTIMIZE_DELAY_MAX;
        loop {
            let last = *self
                .optimizer
                .last_write
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let wake = last.map_or(now, |last| (last + OPTIMIZE_QUIET).min(deadline));
            if wake <= now {
                return;
            }
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    /// Starts [`Self::optimize`] on a background task unless one is due or running; it runs
    /// once the writes pause ([`Self::writes_paused`]).
    fn optimize_in_background(&self) {
        if self.optimizer.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Self {
            shard: Arc::clone(&self.shard),
            writer: Arc::clone(&self.writer),
            optimizer: Arc::clone(&self.optimizer),
            spaces: Arc::clone(&self.spaces),
            dir: self.dir.clone(),
            vector_size: self.vector_size,
        };
        let collection = self.collection_label();
        let busy = move |running: bool| {
            metrics::gauge!("heimdex_vector_store_optimizing", "collection" => collection.clone())
                .set(if running { 1.0 } else { 0.0 });
        };
        busy(true);
        tokio::spawn(async move {
            let due =
                |store: &Self| store.optimizer.since.load(Ordering::Relaxed) >= OPTIMIZE_EVERY;
            loop {
                store.writes_paused().await;
                let ran = store.optimize().await;
                if let Err(err) = &ran {
                    tracing::warn!(%err, "vector store optimization failed; the next write retries");
                }
                // Writes made during the run crossed the trigger again: index them now, not at
                // the next write, which may never come (the end of a bulk load).
                if ran.is_ok() && due(&store) {
                    continue;
                }
                busy(false);
                store.optimizer.running.store(false, Ordering::Release);
                // A write that crossed the trigger just before saw this run and started none.
                if ran.is_ok()
                    && due(&store)
                    && !store.optimizer.running.swap(true, Ordering::AcqRel)
                {
                    busy(true);
                    continue;
                }
                break;
            }
        });
    }

    /// Runs [`tidy_wal`] on the writer thread now, rather than at its next write a second on:
    /// after the open, and after an optimizer run, which follows the writes' pause.
    async fn tidy_wal_on_writer(&self) {
        let (dir, label) = (self.dir.clone(), self.collection_label());
        let tidied = self
            .write(move |_| {
                tidy_wal(&dir, &label);
                Ok(((), Wrote::Nothing))
            })
            .await;
        if let Err(error) = tidied {
            tracing::debug!(%error, "the WAL was not tidied: the store is closing");
        }
    }

    /// The `collection` label of this store's metrics: its directory's name.
    fn collection_label(&self) -> String {
        collection_label(&self.dir)
    }

    /// Directory holding the shard.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run `f` on the blocking pool with the shard.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, StoreError> + Send + 'static,
    {
        let shard = Arc::clone(&self.shard);
        blocking(move || f(&shard)).await
    }

    /// Runs `f` on the writer thread; answers once a flush makes what `f` says it wrote
    /// durable (see [`Wrote`]).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<(T, Wrote), StoreError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.writer.send(Box::new(move |shard: &EdgeShard| {
            let (result, wrote) =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(shard))) {
                    Ok(Ok((out, wrote))) => (Ok(out), wrote),
                    Ok(Err(err)) => (Err(err), Wrote::Nothing),
                    // qdrant-edge panics on some I/O failures; the update may be half applied,
                    // so the flush still runs.
                    Err(panic) => (
                        Err(StoreError::Internal(format!(
                            "embedded store write panicked: {}",
                            panic_message(&*panic)
                        ))),
                        Wrote::Existing,
                    ),
                };
            Applied {
                wrote,
                answer: Box::new(move |flushed: &Flushed| {
                    let result = result.and_then(|out| match flushed {
                        Ok(()) => Ok(out),
                        Err(message) => Err(StoreError::Internal(format!(
                            "the embedded store's flush failed: {message}"
                        ))),
                    });
                    // The caller may have gone (a cancelled request); the write stands.
                    let _ = answer.send(result);
                }),
            }
        }))?;
        answered.await.map_err(|_| {
            StoreError::Internal("the embedded store's writer stopped mid-write".to_owned())
        })?
    }
}

/// A write for the [`Writer`]: applies its update and says whether it wrote.
type Write = Box<dyn FnOnce(&EdgeShard) -> Applied + Send>;

/// What a [`Write`] did: what it changed in the shard, and how to answer its caller once a
/// flush has made that durable (with that flush's outcome).
struct Applied {
    wrote: Wrote,
    answer: Answer,
}

/// Answers a write's caller with the outcome of the flush that made it durable.
type Answer = Box<dyn FnOnce(&Flushed) + Send>;

/// What a write changed, which says when a flush makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrote {
    /// Nothing: no flush needed.
    Nothing,
    /// Only points that did not exist (or the shard's configuration): the next flush.
    New,
    /// Points that existed (deleted, updated, given a vector): if an optimizer run was going,
    /// they may sit in its proxy's memory until it ends, so the first flush after the run.
    Existing,
}

/// A flush's outcome: the panic message of a failed one.
type Flushed = Result<(), String>;

/// The shard's one writer thread: the group commit. It takes every write queued while its
/// last flush ran, applies them in the order they came, flushes once if any wrote, and then
/// answers each. A write thus returns once a flush covers it, and the writes that arrive
/// during one flush share the next, however the callers' threads are scheduled. A write to
/// existing points made while an optimizer run goes on is answered by the first flush after
/// the run instead (see the module documentation); [`EmbeddedStore::optimize`] sends a write
/// when its run ends, so that flush comes.
///
/// Dropping the last handle closes the queue and joins the thread (it finishes its round).
struct Writer {
    queue: Option<std::sync::mpsc::Sender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(
        shard: Arc<EdgeShard>,
        optimizer: Arc<Optimizer>,
        dir: &Path,
    ) -> Result<Self, StoreError> {
        let (queue, writes) = std::sync::mpsc::channel::<Write>();
        let label = collection_label(dir);
        let dir = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                // Answers of writes to existing points made during an optimizer run.
                let mut held: Vec<Answer> = Vec::new();
                let mut last_tidy = Instant::now();
                let held_writes =
                    metrics::gauge!("heimdex_vector_store_held_writes", "collection" => label.clone());
                while let Ok(first) = writes.recv() {
                    let mut answers = Vec::new();
                    let mut wrote = 0_u64;
                    for write in std::iter::once(first).chain(writes.try_iter()) {
                        let applied = write(&shard);
                        wrote += u64::from(applied.wrote != Wrote::Nothing);
                        // Read after the write: a run that began before it ends may have
                        // proxied the points it changed.
                        if applied.wrote == Wrote::Existing
                            && optimizer.indexing.load(Ordering::Acquire)
                        {
                            held.push(applied.answer);
                        } else {
                            answers.push(applied.answer);
                        }
                    }
                    // Read before the flush: if no run is going now, the flush covers whatever
                    // the last one swapped in, and with it every held write.
                    let release = !held.is_empty() && !optimizer.indexing.load(Ordering::Acquire);
                    if release {
                        answers.append(&mut held);
                    }
                    let flushed = if wrote > 0 || release {
                        let started = Instant::now();
                        let flushed = flush(&shard);
                        metrics::histogram!("heimdex_vector_store_flush_duration_seconds", "collection" => label.clone())
                            .record(started.elapsed().as_secs_f64());
                        metrics::counter!("heimdex_vector_store_flushed_writes_total", "collection" => label.clone())
                            .increment(wrote);
                        flushed
                    } else {
                        Ok(())
                    };
                    held_writes.set(held.len() as f64);
                    for answer in answers {
                        answer(&flushed);
                    }
                    if wrote > 0 && last_tidy.elapsed() >= TIDY_WAL_EVERY {
                        tidy_wal(&dir, &label);
                        last_tidy = Instant::now();
                    }
                }
                // The store closed while a run held these: nothing says they are durable, so
                // their callers hear so (and a job is redelivered and written again).
                let unflushed: Flushed = Err("the store closed during an optimizer run".into());
                for answer in held {
                    answer(&unflushed);
                }
                held_writes.set(0.0);
                if optimizer.indexing.load(Ordering::Acquire) {
                    tracing::info!(
                        dir = %dir.display(),
                        "the store closed during an index build, which is not waited for: \
                         if the process stops first, the next open builds it again"
                    );
                }
                // `EdgeShard`'s own `Drop` flushes, and panics if the directory is gone
                // (see `EmbeddedStore`'s `Drop`): keep this handle alive instead.
                if !dir.exists() {
                    std::mem::forget(shard);
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the store's writer: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    fn send(&self, write: Write) -> Result<(), StoreError> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(write).ok())
            .ok_or_else(|| StoreError::Internal("the embedded store's writer stopped".to_owned()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // Only a panic of the writer loop itself ends up here; writes' panics are caught.
            if thread.join().is_err() {
                tracing::error!("the embedded store's writer thread panicked");
            }
        }
    }
}

/// A search result before its payload is read: see [`fill_page`].
struct Candidate {
    id: Uuid,
    score: f32,
    explain: Option<Explanation>,
}

impl Hit for Candidate {
    fn id(&self) -> Uuid {
        self.id
    }

    fn score(&self) -> f32 {
        self.score
    }

    fn explain(&mut self, explanation: Explanation) {
        self.explain = Some(explanation);
    }
}

/// Reads the payloads (and vectors, if asked) of a search's page, in its order. Edge's own
/// `query` reads them the same way, after its search, but for every point it answers: with
/// the offset and the tie slack that is `offset + limit + 16` payloads to decompress and parse
/// for `limit` returned. A point deleted between the search and this read is left out, as
/// Edge's `query` leaves it out.
fn fill_page(
    shard: &EdgeShard,
    page: Vec<Candidate>,
    with_vector: bool,
) -> Result<Vec<ScoredPoint>, StoreError> {
    let ids: Vec<PointId> = page.iter().map(|c| PointId::Uuid(c.id)).collect();
    let mut records = shard
        .retrieve(
            &ids,
            Some(WithPayloadInterface::Bool(true)),
            Some(WithVector::Bool(with_vector)),
        )
        .map_err(map_err)?
        .into_iter()
        .peekable();
    let mut hits = Vec::with_capacity(page.len());
    for candidate in page {
        // `retrieve` answers in the order asked, without the points it did not find.
        let Some(record) = records.next_if(|r| r.id == PointId::Uuid(candidate.id)) else {
            continue;
        };
        hits.push(ScoredPoint {
            id: candidate.id,
            score: candidate.score,
            payload: payload_from_json(candidate.id, record.payload.unwrap_or_default().0)?,
            vector: record.vector.map(dense_of).transpose()?,
            explain: candidate.explain,
        });
    }
    Ok(hits)
}

/// `EdgeShard::flush`, retried while the optimizer holds the segment holder.
///
/// The optimizer runs beside writes (its proxy segments take them), but takes the segment
/// holder's write lock for the moments it swaps segments in and out; `EdgeShard::flush`
/// `try_read`s that lock and panics when it cannot have it. Those panics are caught here and the
/// flush retried (the WAL flush before it is idempotent, and nothing is left locked: parking_lot
/// does not poison). Any other panic of the flush (a full disk) is returned, after the retries,
/// as its message.
fn flush(shard: &EdgeShard) -> Flushed {
    const ATTEMPTS: u32 = 1_000;
    let mut attempt = 0;
    loop {
        let outcome = quiet_panics(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.flush()))
        });
        match outcome {
            Ok(()) => return Ok(()),
            Err(_) if attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(panic) => {
                // The hook was kept quiet for this thread: say what failed.
                let message = panic_message(&*panic).to_owned();
                tracing::error!(%message, attempts = attempt + 1, "the vector store's flush failed");
                return Err(message);
            }
        }
    }
}

/// The `collection` label of a store's metrics: its directory's name.
fn collection_label(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's panics kept out of the panic hook's output (they are expected
/// and handled by the caller). Installs, once, a hook that defers to the previous one except
/// on such a thread.
fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let out = f();
    QUIET.with(|q| q.set(false));
    out
}

/// Holds [`Optimizer::indexing`] set while a run goes on, a panicking one included.
struct Indexing<'a>(&'a AtomicBool);

impl<'a> Indexing<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for Indexing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The background optimizer's state.
#[derive(Debug, Default)]
struct Optimizer {
    /// Points written since the optimizers last ran.
    since: AtomicUsize,
    /// Whether a background run is due or under way.
    running: AtomicBool,
    /// Held by the run in progress.
    lock: Mutex<()>,
    /// Whether the optimizers are running now.
    indexing: AtomicBool,
    /// When points were last written (`None`: not since the store opened).
    last_write: Mutex<Option<Instant>>,
}

fn open_shard(dir: &Path, vector_size: usize) -> Result<EdgeShard, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::Internal(format!("cannot create store dir {}: {e}", dir.display()))
    })?;
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(vector_size, Distance::Cosine).build(),
        )
        .sparse_vector(
            KEYWORD_VECTOR,
            EdgeSparseVectorParamsBuilder::new()
                .modifier(Modifier::Idf)
                .build(),
        )
        .build();
    let try_open = || {
        prune_wal(dir);
        if dir.join(EDGE_CONFIG_FILE).exists() {
            EdgeShard::load(dir, None)
        } else {
            match EdgeShard::new(dir, config.clone()) {
                Ok(shard) => Ok(shard),
                // Segments without a config file (config lost): load them with the config
                // their segments imply; the dense vector is checked below, and a missing
                // keyword vector is added by the upgrade.
                Err(_) => EdgeShard::load(dir, None),
            }
        }
    };
    // The WAL directory is `flock`ed while a shard is open. A handle that is still closing (or
    // a just-forked child that has not exec'd yet) holds it briefly, so retry for a while.
    let mut attempt = 0;
    let shard = loop {
        if !wal::is_locked(dir) {
            match try_open() {
                Ok(shard) => break shard,
                // Edge tells a lock conflict only in its error's text, so the lock is asked,
                // here and before the load: a handle still closing may let go in between.
                Err(e) if !wal::is_locked(dir) => {
                    return Err(StoreError::Internal(format!(
                        "cannot open edge shard {}: {e}",
                        dir.display()
                    )));
                }
                Err(_) => {}
            }
        }
        if attempt == LOCK_RETRIES {
            return Err(StoreError::Unavailable(format!(
                "edge shard {} is locked by another open store",
                dir.display()
            )));
        }
        attempt += 1;
        std::thread::sleep(LOCK_RETRY_DELAY);
    };
    // Held open, and no optimizer run started yet: what `temp_segments` holds is a build that
    // never finished.
    remove_unfinished_builds(dir);

    // An existing shard must match the configured vector space.
    {
        let cfg = shard.config();
        match cfg.vectors.get(DEFAULT_VECTOR_NAME) {
            Some(params) if params.size == vector_size && params.distance == Distance::Cosine => {}
            Some(params) => {
                return Err(StoreError::InvalidInput(format!(
                    "edge shard {} has vectors of size {} / {:?}, configured {vector_size} / Cosine",
                    dir.display(),
                    params.size,
                    params.distance
                )));
            }
            None => {
                return Err(StoreError::InvalidInput(format!(
                    "edge shard {} has no default dense vector",
                    dir.display()
                )));
            }
        }
    }
    Ok(shard)
}

/// Removes the WAL segments Qdrant Edge will never read ([`wal`]), and says what it removed. A
/// failure leaves a WAL the shard opens with as it is.
fn prune_wal(dir: &Path) {
    match wal::prune(dir) {
        Ok(pruned) if pruned.segments > 0 => tracing::info!(
            dir = %dir.display(),
            segments = pruned.segments,
            mib = pruned.bytes / (1024 * 1024),
            "removed the WAL segments Qdrant Edge 0.7 never reads"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(
            dir = %dir.display(),
            %error,
            "could not remove old WAL segments; the shard opens with them, unless the store \
             had freed them while open (then it fails: remove them by hand)"
        ),
    }
}

/// Removes what index builds that never finished left ([`builds`]), and says what it removed.
/// A failure leaves them: the shard opens either way, and the next open tries again.
fn remove_unfinished_builds(dir: &Path) {
    match builds::remove(dir) {
        Ok(removed) if removed.builds > 0 => tracing::warn!(
            dir = %dir.display(),
            builds = removed.builds,
            mib = removed.bytes / (1024 * 1024),
            "removed what interrupted index builds left; the optimizer builds them again"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(
            dir = %dir.display(),
            %error,
            "could not remove what interrupted index builds left in temp_segments"
        ),
    }
}

/// Frees the WAL segments Qdrant Edge will never read ([`wal::release`]), then sets
/// `heimdex_vector_store_wal_bytes`: the disk its log takes now. Neither is a store error: a
/// failure is logged, and the log (and the gauge) stay as they were.
///
/// Runs on the writer thread only: between Edge's updates, none of which closes a segment
/// meanwhile.
fn tidy_wal(dir: &Path, label: &str) {
    match wal::release(dir) {
        Ok(released) if released.segments > 0 => tracing::info!(
            dir = %dir.display(),
            segments = released.segments,
            mib = released.bytes / (1024 * 1024),
            "freed the WAL segments Qdrant Edge 0.7 never reads"
        ),
        Ok(_) => {}
        // The filesystem has no hole punching: the log shrinks at the next open only.
        Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(dir = %dir.display(), %error, "cannot free old WAL segments")
        }
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "could not free old WAL segments")
        }
    }
    match wal::disk_bytes(dir) {
        Ok(bytes) => {
            metrics::gauge!("heimdex_vector_store_wal_bytes", "collection" => label.to_owned())
                .set(bytes as f64);
        }
        Err(error) => tracing::debug!(dir = %dir.display(), %error, "cannot measure the WAL"),
    }
}

#[async_trait::async_trait]
impl VectorStore for EmbeddedStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Embedded
    }

    fn vector_size(&self) -> usize {
        self.vector_size
    }

    async fn ensure_collection(&self) -> Result<(), StoreError> {
        // The shard itself exists since `open`; make sure the payload indexes do.
        self.write(|shard| {
            let existing = shard.info().payload_schema;
            let mut wrote = false;
            for (key, is_tenant) in [
                (ORG_ID_KEY, true),
                (ASSET_ID_KEY, false),
                (MODEL_KEY, false),
                (MODEL_VER_KEY, false),
            ] {
                let path = json_path(key)?;
                if existing.contains_key(&path) {
                    continue;
                }
                let params = KeywordIndexParams {
                    is_tenant: is_tenant.then_some(true),
                    ..KeywordIndexParams::default()
                };
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: path,
                            field_schema: Some(PayloadFieldSchema::FieldParams(
                                PayloadSchemaParams::Keyword(params),
                            )),
                        }),
                    ))
                    .map_err(map_err)?;
                wrote = true;
            }
            // Payload indexes: recreated by this call at the next open if a crash took them.
            Ok(((), if wrote { Wrote::New } else { Wrote::Nothing }))
        })
        .await
    }

    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError> {
        let prepared = prepare_points(&points, self.vector_size)?;
        if points.is_empty() {
            return Ok(());
        }
        let count = points.len();
        let mut spaces: Vec<(String, String)> = Vec::new();
        for p in &points {
            let (model, model_ver) = (&p.payload.model, &p.payload.model_ver);
            if !spaces.iter().any(|(m, v)| m == model && v == model_ver) {
                spaces.push((model.clone(), model_ver.clone()));
            }
        }
        let points: Vec<PointStructPersisted> = points
            .into_iter()
            .zip(prepared)
            .map(|(p, prepared)| PointStructPersisted {
                id: PointId::Uuid(p.id),
                vector: VectorStructPersisted::Named(HashMap::from([
                    (
                        DEFAULT_VECTOR_NAME.to_owned(),
                        VectorPersisted::Dense(p.vector),
                    ),
                    (
                        KEYWORD_VECTOR.to_owned(),
                        VectorPersisted::Sparse(sparse_in(prepared.keyword)),
                    ),
                ])),
                payload: Some(qdrant_edge::Payload(prepared.payload)),
            })
            .collect();
        let known = Arc::clone(&self.spaces);
        let ids = Filter {
            should: None,
            min_should: None,
            must: Some(vec![Condition::HasId(
                points.iter().map(|p| p.id).collect(),
            )]),
            must_not: None,
        };
        self.write(move |shard| {
            // An update of an existing point is a delete in its segment and an insert.
            let wrote = if count_exact(shard, ids)? > 0 {
                Wrote::Existing
            } else {
                Wrote::New
            };
            // Before the points are visible to any search.
            known.admit(&spaces);
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(map_err)?;
            Ok(((), wrote))
        })
        .await?;
        self.wrote(count);
        Ok(())
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        with_vector: bool,
    ) -> Result<Option<StoredPoint>, StoreError> {
        let filter = build_filter(org_id, &PointFilter::default(), Some(&[id]))?;
        self.read(move |shard| {
            let (records, _) = shard
                .scroll(ScrollRequest {
                    offset: None,
                    limit: Some(1),
                    filter: Some(filter),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(with_vector),
                    order_by: None,
                })
                .map_err(map_err)?;
            let Some(record) = records.into_iter().next() else {
                return Ok(None);
            };
            let id = uuid_of(record.id)?;
            Ok(Some(StoredPoint {
                id,
                payload: payload_from_json(id, record.payload.unwrap_or_default().0)?,
                vector: record.vector.map(dense_of).transpose()?,
            }))
        })
        .await
    }

    async fn search(&self, req: SearchRequest) -> Result<Vec<ScoredPoint>, StoreError> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let plan = query::plan(&req, self.vector_size)?;
        let threshold = req.score_threshold.map(OrderedFloat);
        let with_vector = req.with_vector;
        let spaces = Arc::clone(&self.spaces);
        self.read(move |shard| {
            // Held until the last read below: no point of another space appears meanwhile.
            let spaces = spaces.read();
            let filter = build_filter(req.org_id, &spaces.narrow(&req.filter), None)?;
            // Ids and scores only: the engine answers `offset + limit` and the tie slack, and
            // only the page `finish_hits` keeps needs its payload (below).
            let (prefetches, scoring) = node_in(&plan.root);
            let candidates = shard
                .query(QueryRequest {
                    prefetches,
                    query: Some(scoring),
                    filter: Some(filter.clone()),
                    score_threshold: threshold,
                    // Edge answers the top `offset + limit` without dropping the first `offset`
                    // (the server applies offsets above the shard level): `finish_hits` does.
                    limit: plan.root.limit,
                    offset: 0,
                    params: None,
                    with_vector: WithVector::Bool(false),
                    with_payload: WithPayloadInterface::Bool(false),
                })
                .map_err(map_err)?
                .into_iter()
                .map(|p| {
                    Ok(Candidate {
                        id: uuid_of(p.id)?,
                        score: p.score,
                        explain: None,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut legs = Vec::with_capacity(plan.explain.len());
            for (kind, node) in &plan.explain {
                let (prefetches, scoring) = node_in(node);
                let list = shard
                    .query(QueryRequest {
                        prefetches,
                        query: Some(scoring),
                        filter: Some(filter.clone()),
                        score_threshold: None,
                        limit: node.limit,
                        offset: 0,
                        params: None,
                        with_vector: WithVector::Bool(false),
                        with_payload: WithPayloadInterface::Bool(false),
                    })
                    .map_err(map_err)?
                    .into_iter()
                    .map(|p| Ok((uuid_of(p.id)?, p.score)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                legs.push((*kind, list));
            }
            let page = finish_hits(candidates, &plan, legs);
            fill_page(shard, page, with_vector)
        })
        .await
    }

    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        let filter = build_filter(org_id, &filter, None)?;
        self.read(move |shard| count_exact(shard, filter)).await
    }

    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError> {
        let points = self.scroll(org_id, filter, false).await?;
        Ok(points.into_iter().map(|p| p.id).collect())
    }

    async fn scroll_points(
        &self,
        org_id: Uuid,
        filter: PointFilter,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.scroll(org_id, filter, true).await
    }

    async fn delete_points(&self, org_id: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let filter = build_filter(org_id, &PointFilter::default(), Some(ids))?;
        self.write(move |shard| delete_matching(shard, filter))
            .await
    }

    async fn delete_by_filter(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        let filter = build_filter(org_id, &filter, None)?;
        self.write(move |shard| delete_matching(shard, filter))
            .await
    }

    async fn sample_gauges(&self) -> Result<(), StoreError> {
        self.set_size_gauges().await.map(drop)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.read(|shard| {
            count_exact(
                shard,
                Filter {
                    should: None,
                    min_should: None,
                    must: Some(vec![Condition::HasId(
                        std::iter::once(PointId::Uuid(Uuid::nil())).collect(),
                    )]),
                    must_not: None,
                },
            )
            .map(drop)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Backfill for EmbeddedStore {
    async fn without_keyword(
        &self,
        from: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<(Uuid, Option<String>)>, Option<Uuid>), StoreError> {
        self.read(move |shard| {
            let (records, next) = shard
                .scroll(ScrollRequest {
                    offset: from.map(PointId::Uuid),
                    limit: Some(limit),
                    filter: Some(Filter {
                        should: None,
                        min_should: None,
                        must: None,
                        must_not: Some(vec![Condition::HasVector(HasVectorCondition::from(
                            KEYWORD_VECTOR.to_owned(),
                        ))]),
                    }),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(map_err)?;
            let page = records
                .into_iter()
                .map(|r| {
                    let text = r
                        .payload
                        .as_ref()
                        .and_then(|p| p.0.get("text"))
                        .and_then(|t| t.as_str())
                        .map(str::to_owned);
                    Ok((uuid_of(r.id)?, text))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((page, next.map(uuid_of).transpose()?))
        })
        .await
    }

    async fn set_keyword(&self, vectors: Vec<(Uuid, SparseVector)>) -> Result<(), StoreError> {
        let points: Vec<PointVectorsPersisted> = vectors
            .into_iter()
            .map(|(id, v)| PointVectorsPersisted {
                id: PointId::Uuid(id),
                vector: VectorStructPersisted::Named(HashMap::from([(
                    KEYWORD_VECTOR.to_owned(),
                    VectorPersisted::Sparse(sparse_in(v)),
                )])),
            })
            .collect();
        self.write(move |shard| {
            shard
                .update(UpdateOperation::VectorOperation(
                    VectorOperations::UpdateVectors(UpdateVectorsOp {
                        points,
                        // Only points that still have none.
                        update_filter: Some(Filter {
                            should: None,
                            min_should: None,
                            must: None,
                            must_not: Some(vec![Condition::HasVector(HasVectorCondition::from(
                                KEYWORD_VECTOR.to_owned(),
                            ))]),
                        }),
                    }),
                ))
                .map_err(map_err)?;
            Ok(((), Wrote::Existing))
        })
        .await
    }

    fn name(&self) -> String {
        self.dir.display().to_string()
    }
}

/// The engine's form of a query tree node: its prefetches and its scoring.
fn node_in(node: &Node) -> (Vec<Prefetch>, ScoringQuery) {
    let prefetches = node
        .prefetch
        .iter()
        .map(|child| {
            let (prefetches, scoring) = node_in(child);
            Prefetch {
                prefetches,
                query: Some(scoring),
                limit: child.limit,
                params: None,
                filter: None,
                score_threshold: None,
            }
        })
        .collect();
    (prefetches, scoring_in(&node.scoring))
}

fn scoring_in(scoring: &Scoring) -> ScoringQuery {
    let nearest = |leg: &Leg| {
        let (query, using) = match leg {
            Leg::Dense(v) => (VectorInternal::Dense(v.clone()), None),
            Leg::Keyword(v) => (
                VectorInternal::Sparse(sparse_in(v.clone())),
                Some(KEYWORD_VECTOR.to_owned()),
            ),
        };
        QueryEnum::Nearest(NamedQuery { query, using })
    };
    match scoring {
        Scoring::Nearest(leg) => ScoringQuery::Vector(nearest(leg)),
        Scoring::Fusion(Fusion::Rrf {
            k,
            dense_weight,
            keyword_weight,
        }) => ScoringQuery::Fusion(qdrant_edge::Fusion::Rrf {
            k: Fusion::engine_k(*k) as usize,
            weights: Some(vec![
                OrderedFloat(*dense_weight),
                OrderedFloat(*keyword_weight),
            ]),
        }),
        Scoring::Fusion(Fusion::Dbsf) => ScoringQuery::Fusion(qdrant_edge::Fusion::Dbsf),
        Scoring::Mmr {
            vector,
            diversity,
            candidates,
        } => ScoringQuery::Mmr(qdrant_edge::Mmr {
            vector: VectorInternal::Dense(vector.clone()),
            using: DEFAULT_VECTOR_NAME.to_owned(),
            // Qdrant's API takes `diversity` and turns it into `lambda` the same way.
            lambda: OrderedFloat(1.0 - diversity),
            candidates_limit: *candidates,
        }),
    }
}

fn sparse_in(v: SparseVector) -> qdrant_edge::SparseVector {
    qdrant_edge::SparseVector {
        indices: v.indices,
        values: v.values,
    }
}

/// Count then delete, under the write lock (so the count is exact). Does not write if nothing
/// matches, which keeps repeated deletes free.
fn delete_matching(shard: &EdgeShard, filter: Filter) -> Result<(u64, Wrote), StoreError> {
    let n = count_exact(shard, filter.clone())?;
    if n == 0 {
        return Ok((0, Wrote::Nothing));
    }
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::DeletePointsByFilter(filter),
        ))
        .map_err(map_err)?;
    Ok((n, Wrote::Existing))
}

fn count_exact(shard: &EdgeShard, filter: Filter) -> Result<u64, StoreError> {
    let n = shard
        .count(CountRequest {
            filter: Some(filter),
            exact: true,
        })
        .map_err(map_err)?;
    Ok(n as u64)
}

impl EmbeddedStore {
    /// Every point matching `filter`, page by page; payloads only when asked for (a point
    /// without one gets an empty payload, which only `scroll_ids` asks for and drops).
    async fn scroll(
        &self,
        org_id: Uuid,
        filter: PointFilter,
        with_payload: bool,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        let filter = build_filter(org_id, &filter, None)?;
        self.read(move |shard| {
            let mut points = Vec::new();
            let mut offset = None;
            loop {
                let (records, next) = shard
                    .scroll(ScrollRequest {
                        offset,
                        limit: Some(SCROLL_PAGE),
                        filter: Some(filter.clone()),
                        with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .map_err(map_err)?;
                for r in records {
                    let id = uuid_of(r.id)?;
                    let payload = if with_payload {
                        payload_from_json(id, r.payload.unwrap_or_default().0)?
                    } else {
                        empty_payload(org_id)
                    };
                    points.push(StoredPoint {
                        id,
                        payload,
                        vector: None,
                    });
                }
                match next {
                    Some(next) => offset = Some(next),
                    None => return Ok(points),
                }
            }
        })
        .await
    }
}

fn empty_payload(org_id: Uuid) -> Payload {
    Payload {
        org_id,
        asset_id: String::new(),
        segment_id: String::new(),
        model: String::new(),
        model_ver: String::new(),
        text: None,
        seq: None,
        meta: heimdex_domain::Metadata::default(),
        moved_from: None,
        extra: serde_json::Map::new(),
    }
}

/// `org_id == org AND [asset_id == ..] AND [segment_id == ..] AND [id in ids] AND [every
/// metadata must] AND NOT [seq >= before_seq] AND NOT [any metadata must_not]`.
fn build_filter(
    org_id: Uuid,
    filter: &PointFilter,
    ids: Option<&[Uuid]>,
) -> Result<Filter, StoreError> {
    let keyword = |key: &str, value: &str| -> Result<Condition, StoreError> {
        Ok(Condition::Field(FieldCondition::new_match(
            json_path(key)?,
            Match::from(value.to_owned()),
        )))
    };
    let mut must = vec![keyword(ORG_ID_KEY, &org_id.to_string())?];
    if let Some(asset_id) = &filter.asset_id {
        must.push(keyword(ASSET_ID_KEY, asset_id)?);
    }
    if let Some(segment_id) = &filter.segment_id {
        must.push(keyword(SEGMENT_ID_KEY, segment_id)?);
    }
    if let Some(model) = &filter.model {
        must.push(keyword(MODEL_KEY, model)?);
    }
    if let Some(model_ver) = &filter.model_ver {
        must.push(keyword(MODEL_VER_KEY, model_ver)?);
    }
    if let Some(moved_from) = &filter.moved_from {
        must.push(keyword(MOVED_FROM_KEY, &moved_from.to_string())?);
    }
    if let Some(ids) = ids {
        must.push(Condition::HasId(
            ids.iter().map(|id| PointId::Uuid(*id)).collect(),
        ));
    }
    let (meta_must, meta_must_not) = meta::plan(&filter.meta);
    for cond in &meta_must {
        must.push(meta_condition(cond)?);
    }
    let mut must_not = Vec::new();
    // `NOT seq >= s` rather than `seq < s`: a point without `seq` matches.
    if let Some(seq) = filter.before_seq {
        must_not.push(Condition::Field(FieldCondition::new_range(
            json_path(SEQ_KEY)?,
            Range {
                gte: Some(OrderedFloat(seq as f64)),
                ..Range::default()
            },
        )));
    }
    for cond in &meta_must_not {
        must_not.push(meta_condition(cond)?);
    }
    Ok(Filter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: (!must_not.is_empty()).then_some(must_not),
    })
}

/// A metadata condition ([`meta`]) in Qdrant Edge's types.
fn meta_condition(cond: &MetaCond) -> Result<Condition, StoreError> {
    Ok(match cond {
        MetaCond::Keyword { path, value } => Condition::Field(FieldCondition::new_match(
            json_path(path)?,
            Match::new_value(ValueVariants::String(value.clone())),
        )),
        MetaCond::Keywords { path, values } => Condition::Field(FieldCondition::new_match(
            json_path(path)?,
            Match::Any(MatchAny {
                any: AnyVariants::Strings(values.iter().cloned().collect()),
            }),
        )),
        MetaCond::Bool { path, value } => Condition::Field(FieldCondition::new_match(
            json_path(path)?,
            Match::new_value(ValueVariants::Bool(*value)),
        )),
        MetaCond::Range { path, range } => Condition::Field(FieldCondition::new_range(
            json_path(path)?,
            Range {
                gt: range.gt.map(OrderedFloat),
                gte: range.gte.map(OrderedFloat),
                lt: range.lt.map(OrderedFloat),
                lte: range.lte.map(OrderedFloat),
            },
        )),
        MetaCond::AnyOf(conds) => Condition::Filter(Filter {
            should: Some(conds.iter().map(meta_condition).collect::<Result<_, _>>()?),
            min_should: None,
            must: None,
            must_not: None,
        }),
    })
}

fn json_path(key: &str) -> Result<JsonPath, StoreError> {
    JsonPath::try_from(key).map_err(|()| StoreError::Internal(format!("bad payload key {key}")))
}

fn uuid_of(id: PointId) -> Result<Uuid, StoreError> {
    match id {
        PointId::Uuid(u) => Ok(u),
        PointId::NumId(n) => Err(StoreError::Internal(format!(
            "point with numeric id {n} in a UUID-only collection"
        ))),
    }
}

fn dense_of(v: VectorStructInternal) -> Result<Vec<f32>, StoreError> {
    let inner = match v {
        VectorStructInternal::Single(v) => return Ok(v),
        VectorStructInternal::MultiDense(_) => None,
        VectorStructInternal::Named(mut named) => named.remove(DEFAULT_VECTOR_NAME),
    };
    match inner {
        Some(VectorInternal::Dense(v)) => Ok(v),
        Some(VectorInternal::Sparse(_) | VectorInternal::MultiDense(_)) | None => Err(
            StoreError::Internal("stored vector is not a single dense vector".into()),
        ),
    }
}

fn map_err(e: OperationError) -> StoreError {
    let msg = e.to_string();
    match e {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. }
        | OperationError::VariableTypeError { .. }
        | OperationError::NonFiniteNumber { .. } => StoreError::InvalidInput(msg),
        OperationError::Timeout { .. }
        | OperationError::Cancelled { .. }
        | OperationError::OutOfMemory { .. } => StoreError::Unavailable(msg),
        OperationError::PointIdError { .. }
        | OperationError::ServiceError { .. }
        | OperationError::InconsistentStorage { .. } => StoreError::Internal(msg),
    }
}

/// Run blocking shard code off the async runtime. A panic inside (qdrant-edge panics on some
/// I/O failures, e.g. in `flush`) becomes `StoreError::Internal`.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))?
}

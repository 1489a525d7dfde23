//! The indexer: the work for the vector collections the workers do not write (see
//! `heimdex_domain::index`). Every worker process runs one; the one holding the lease in the
//! index state does the work, the others wait to take it over should that process die.
//!
//! * **Replay.** A build is given, in log order, every job that had succeeded by the build's
//!   `through` sequence: the log is read once for the `succeeded` events (which round of which
//!   job succeeded, and whether it wrote anything), then again from the build's resume point
//!   for the events that started those rounds, and each job goes through the workers' own plan
//!   and store steps ([`crate::job::apply`]) against the build. So a point is written with the
//!   same id and payload as the workers wrote it, and its vector by the same model. Progress is
//!   recorded in the index state after each batch (at most once a second): a process killed
//!   mid-way is resumed from there by the next indexer, and re-applying a job is idempotent.
//! * **Compare.** The build is then compared with the live collection (counts, ids, payloads,
//!   a sample of vectors) and marked built.
//! * **Follow.** Every job that succeeds after `through` is given to each collection that
//!   takes writes other than the one its worker wrote (its result names it), in the order of
//!   the `succeeded` events, up to the state's `followed` sequence: so the build catches up
//!   while the live collection serves, and after a switch the collection left keeps up too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use heimdex_domain::events::{EventData, EventKind};
use heimdex_domain::index::{Build, Comparison, IndexState, Models, Phase};
use heimdex_domain::jobs::JobSpec;
use heimdex_event_store::IndexRegistry;
use heimdex_event_store::index::{IndexError, UpdateError};
use heimdex_event_store::log::LogReadError;
use heimdex_store::{PointFilter, StoreError, VectorStore};

use crate::job::{self, Deps, Replay, ReplayError};
use crate::order::{self, Touched};
use crate::{WorkerConfig, WorkerDeps};

/// How long a read of the log may wait for its next message.
const STALL: Duration = Duration::from_secs(10);
/// How often the indexer looks at the state when it has nothing to do.
const IDLE: Duration = Duration::from_secs(1);
/// How often progress is recorded (and the lease renewed) while work goes on.
const CHECKPOINT: Duration = Duration::from_secs(1);
/// How often the lease is renewed during one long batch (it lasts
/// `heimdex_domain::index::INDEXER_LEASE`, 15 s).
const RENEW: Duration = Duration::from_secs(5);
/// Vectors compared per org, and the cosine below which two differ.
const VECTOR_SAMPLE: usize = 64;
const SAME_VECTOR: f32 = 0.999;

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error("index state")]
    State(#[from] IndexError),
    #[error("job log")]
    Log(#[from] LogReadError),
    #[error("vector store")]
    Store(#[from] StoreError),
    #[error("a replayed job could not be written yet: {0}")]
    Replay(String),
    /// The lease passed to another process, or the build was dropped: stop this work.
    #[error("the indexer's work was taken over or dropped")]
    Lost,
}

/// Claims and renewals of the lease; never refused, only not granted.
#[derive(Debug, thiserror::Error)]
#[error("the index state changed under the indexer")]
struct Moved;

impl From<UpdateError<Moved>> for IndexerError {
    fn from(err: UpdateError<Moved>) -> Self {
        match err {
            UpdateError::Refused(Moved) => IndexerError::Lost,
            UpdateError::Store(err) => IndexerError::State(err),
        }
    }
}

/// A collection the indexer writes: the batch context the workers' steps take.
struct Target {
    config: WorkerConfig,
    store: Arc<dyn VectorStore>,
    models: Arc<Models>,
}

pub struct Indexer {
    config: WorkerConfig,
    deps: WorkerDeps,
    registry: IndexRegistry,
    /// This process, as the lease names it.
    holder: String,
}

impl Indexer {
    pub fn new(config: WorkerConfig, deps: WorkerDeps, registry: IndexRegistry) -> Self {
        let holder = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            config,
            deps,
            registry,
            holder,
        }
    }

    fn configured(&self) -> &str {
        self.deps.collections.configured()
    }

    /// Works whenever there is work and this process holds the lease, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delay = IDLE;
        loop {
            let turn = tokio::select! {
                () = shutdown.cancelled() => break,
                turn = self.turn() => turn,
            };
            match turn {
                Ok(()) | Err(IndexerError::Lost) => delay = IDLE,
                Err(err) => {
                    tracing::warn!(error = %heimdex_telemetry::ErrorChain(&err), "indexer: will try again");
                    self.record_error(&err).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        // Stopping mid-way loses nothing (the state says where the work was); giving the lease
        // up lets the next indexer take over at once instead of when it lapses.
        let holder = self.holder.clone();
        let _ = self
            .registry
            .update(self.configured(), |state| {
                state.release(&holder);
                Ok::<_, Moved>(())
            })
            .await;
    }

    /// One look at the state: claim the lease if there is work, replay a build, follow.
    async fn turn(&self) -> Result<(), IndexerError> {
        let stored = self.registry.get(self.configured()).await?;
        if !stored.state.needs_indexer() {
            return Ok(());
        }
        let state = self.renew(|_| Ok(())).await?;
        if let Some(build) = state
            .building
            .as_ref()
            .filter(|b| b.phase == Phase::Replaying)
        {
            let models = state.models_of(&build.collection);
            self.replay(build.clone(), models).await?;
        }
        self.follow().await
    }

    /// Renews the lease and applies `change`, if this process has (or can take) the lease.
    async fn renew(
        &self,
        mut change: impl FnMut(&mut IndexState) -> Result<(), Moved>,
    ) -> Result<IndexState, IndexerError> {
        let holder = self.holder.clone();
        let (stored, ()) = self
            .registry
            .update(self.configured(), |state| {
                if !state.claim(&holder, Utc::now()) {
                    return Err(Moved);
                }
                change(state)
            })
            .await?;
        Ok(stored.state)
    }

    async fn record_error(&self, err: &IndexerError) {
        let message = heimdex_telemetry::ErrorChain(err).to_string();
        let holder = self.holder.clone();
        let _ = self
            .registry
            .update(self.configured(), |state| {
                if !state.holds(&holder, Utc::now()) {
                    return Err(Moved);
                }
                if let Some(build) = &mut state.building {
                    build.progress.error = Some(message.clone());
                }
                Ok(())
            })
            .await;
    }

    /// Runs `work`, renewing the lease meanwhile, so that a long batch (a large document
    /// embedded by a real model) does not let it lapse; `Lost` if another process took it.
    async fn renewing<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, IndexerError> {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(RENEW);
        tick.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = tick.tick() => {
                    self.renew(|_| Ok(())).await?;
                }
            }
        }
    }

    /// The batch context for collection `name`, which holds `models`.
    async fn target(&self, name: &str, models: Models) -> Result<Target, IndexerError> {
        let store = self.deps.collections.get(name).await?;
        let config = WorkerConfig {
            collection: name.to_owned(),
            ..self.config.clone()
        };
        Ok(Target {
            config,
            store,
            models: Arc::new(models),
        })
    }

    /// Applies `replays` (in log order) to one collection, in batches whose jobs do not
    /// conflict. Returns how many could not be written again (skipped).
    async fn apply(&self, target: &Target, replays: Vec<Replay>) -> Result<u64, IndexerError> {
        let Target {
            config,
            store,
            models,
        } = target;
        let deps = Deps {
            base: &self.deps,
            store: store.clone(),
            held: models.clone(),
        };
        let mut skipped = 0;
        for batch in conflict_free(replays, self.config.batch_size) {
            let ids: Vec<Uuid> = batch.iter().map(|r| r.job_id).collect();
            let results = self
                .renewing(job::apply(config, &deps, &self.deps.embeddings, batch))
                .await?;
            for (job_id, result) in ids.into_iter().zip(results) {
                match result {
                    Ok(_) => {}
                    Err(ReplayError::Invalid(reason)) => {
                        tracing::warn!(%job_id, %reason, collection = %config.collection, "indexer: job cannot be written again; skipped");
                        skipped += 1;
                    }
                    Err(ReplayError::Retryable(reason)) => {
                        return Err(IndexerError::Replay(reason));
                    }
                }
            }
        }
        Ok(skipped)
    }

    /// Replays the log into `build` from its resume point, compares it and marks it built.
    async fn replay(&self, build: Build, models: Models) -> Result<(), IndexerError> {
        let target = self.target(&build.collection, models).await?;
        target.store.ensure_collection().await?;
        tracing::info!(collection = %build.collection, through = build.through, from = build.applied, "indexer: replaying the log");

        // Pass 1: which round of which job succeeded (and wrote something) by `through`.
        let mut rounds: HashMap<Uuid, u32> = HashMap::new();
        let mut orgs: HashSet<Uuid> = HashSet::new();
        let mut read = self
            .deps
            .log
            .read_from(1, Some(EventKind::Succeeded), STALL)
            .await?;
        while let Some(stored) = read.next().await? {
            if stored.seq > build.through {
                break;
            }
            if let EventData::Succeeded(succeeded) = &stored.event.data {
                orgs.insert(stored.event.org_id);
                if !succeeded.result.superseded {
                    rounds.insert(stored.event.job_id, succeeded.round);
                }
            }
        }
        let jobs = rounds.len() as u64;

        // Pass 2: the events that started those rounds, in log order, from the resume point.
        let mut progress = build.progress.clone();
        progress.jobs = jobs;
        let mut read = self
            .deps
            .log
            .read_from(build.applied + 1, None, STALL)
            .await?;
        let mut pending: Vec<Replay> = Vec::new();
        let mut last_checkpoint = Instant::now();
        let mut rate = Rate::default();
        loop {
            let next = read.next().await?;
            let end = next
                .as_ref()
                .is_none_or(|stored| stored.seq > build.through);
            if let Some(stored) = next.filter(|stored| stored.seq <= build.through) {
                let (round, spec) = match stored.event.data {
                    EventData::Requested(requested) => (0, requested.spec),
                    EventData::Retried(retried) => (retried.round, retried.spec),
                    EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_) => {
                        continue;
                    }
                };
                if rounds.get(&stored.event.job_id) == Some(&round) {
                    if let JobSpec::MockEmbedding(params) = &spec {
                        // No text: it keeps its own model's vector.
                        if target.models.moved.contains_key(&params.model) {
                            progress.not_reembeddable += 1;
                        }
                    }
                    pending.push(Replay {
                        org_id: stored.event.org_id,
                        job_id: stored.event.job_id,
                        round,
                        seq: stored.seq,
                        spec,
                    });
                }
                if pending.len() < self.config.batch_size {
                    continue;
                }
            }
            let applied = pending.last().map(|r| r.seq);
            let count = pending.len() as u64;
            progress.skipped += self.apply(&target, std::mem::take(&mut pending)).await?;
            progress.replayed += count;
            rate.add(count);
            if end || last_checkpoint.elapsed() >= CHECKPOINT {
                last_checkpoint = Instant::now();
                progress.at = Some(Utc::now());
                progress.error = None;
                let applied = applied.unwrap_or(build.applied);
                let recorded = progress.clone();
                self.update_build(&build.collection, |current| {
                    current.applied = current.applied.max(applied);
                    current.progress = recorded.clone();
                })
                .await?;
                tracing::info!(collection = %build.collection, replayed = progress.replayed, jobs, per_second = rate.per_second(), "indexer: replay progress");
            }
            if end {
                break;
            }
        }

        // Catch up with what succeeded meanwhile, then compare.
        self.follow().await?;
        let live = self.deps.collections.live();
        let comparison = compare(live.store.as_ref(), target.store.as_ref(), &orgs).await?;
        tracing::info!(collection = %build.collection, live = %live.name, ?comparison, "indexer: build replayed and compared");
        self.update_build(&build.collection, |current| {
            current.phase = Phase::Built { comparison };
            current.progress.error = None;
        })
        .await
    }

    /// Renews the lease and changes the build into `collection`; `Lost` if it is no longer
    /// the build (dropped meanwhile).
    async fn update_build(
        &self,
        collection: &str,
        mut change: impl FnMut(&mut Build),
    ) -> Result<(), IndexerError> {
        self.renew(|state| {
            let current = state
                .building
                .as_mut()
                .filter(|b| b.collection == collection)
                .ok_or(Moved)?;
            change(current);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Gives every collection that takes writes the jobs that succeeded after the state's
    /// `followed` sequence in another collection, up to the end of the log.
    async fn follow(&self) -> Result<(), IndexerError> {
        let state = self.renew(|_| Ok(())).await?;
        if !state.needs_indexer() {
            return Ok(());
        }
        let writes_to: Vec<(String, Models)> = state
            .writes_to()
            .into_iter()
            .map(|name| (name.to_owned(), state.models_of(name)))
            .collect();
        let mut read = self
            .deps
            .log
            .read_from(state.followed + 1, Some(EventKind::Succeeded), STALL)
            .await?;
        let mut batch: Vec<(String, Replay)> = Vec::new();
        let mut seen = None;
        let mut last_checkpoint = Instant::now();
        loop {
            let next = read.next().await?;
            let end = next.is_none();
            if let Some(stored) = next {
                seen = Some(stored.seq);
                batch.extend(self.started(stored).await?);
                if batch.len() < self.config.batch_size && last_checkpoint.elapsed() < CHECKPOINT {
                    continue;
                }
            }
            if !batch.is_empty() {
                self.give(&writes_to, std::mem::take(&mut batch)).await?;
            }
            if let Some(seq) = seen.take() {
                self.followed(seq).await?;
                last_checkpoint = Instant::now();
            }
            if end {
                return Ok(());
            }
        }
    }

    /// The job a `succeeded` event ends, as its round started, with the collection its worker
    /// wrote; `None` when it wrote nothing (superseded).
    async fn started(
        &self,
        stored: heimdex_event_store::log::Stored<heimdex_domain::events::JobEvent>,
    ) -> Result<Option<(String, Replay)>, IndexerError> {
        let EventData::Succeeded(succeeded) = stored.event.data else {
            return Ok(None);
        };
        if succeeded.result.superseded {
            return Ok(None);
        }
        let kind = match succeeded.round {
            0 => EventKind::Requested,
            _ => EventKind::Retried,
        };
        let (org_id, job_id) = (stored.event.org_id, stored.event.job_id);
        let Some(start) = self.deps.log.last(org_id, job_id, kind).await? else {
            return Ok(None);
        };
        let (round, spec) = match start.event.data {
            EventData::Requested(requested) => (0, requested.spec),
            EventData::Retried(retried) => (retried.round, retried.spec),
            EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_) => {
                return Ok(None);
            }
        };
        Ok(Some((
            succeeded.result.collection,
            Replay {
                org_id,
                job_id,
                round,
                seq: start.seq,
                spec,
            },
        )))
    }

    /// Gives each collection of `writes_to` the jobs its worker did not write to it. Called
    /// only once a build's replay is over (the replay itself follows before it compares).
    async fn give(
        &self,
        writes_to: &[(String, Models)],
        batch: Vec<(String, Replay)>,
    ) -> Result<(), IndexerError> {
        for (name, models) in writes_to {
            let replays: Vec<Replay> = batch
                .iter()
                .filter(|(written, _)| written != name)
                .map(|(_, replay)| replay.clone())
                .collect();
            if replays.is_empty() {
                continue;
            }
            let target = self.target(name, models.clone()).await?;
            self.apply(&target, replays).await?;
        }
        Ok(())
    }

    /// Records that every `succeeded` event up to `seq` has reached every collection.
    async fn followed(&self, seq: u64) -> Result<(), IndexerError> {
        self.renew(|state| {
            state.followed = state.followed.max(seq);
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// Cuts `replays` into batches of at most `max` jobs, a new batch wherever a job conflicts
/// with one already in the batch (the same point, or an asset one of them changes), so a
/// batch applies as if its jobs ran one after another.
fn conflict_free(replays: Vec<Replay>, max: usize) -> Vec<Vec<Replay>> {
    let mut batches: Vec<Vec<Replay>> = Vec::new();
    let mut current: Vec<Replay> = Vec::new();
    let mut touched = Touched::new();
    for replay in replays {
        let mut mine = Touched::new();
        order::add(&mut mine, job::touched(replay.org_id, &replay.spec));
        if current.len() >= max.max(1) || order::conflict(&touched, &mine) {
            batches.push(std::mem::take(&mut current));
            touched.clear();
        }
        order::add(&mut touched, mine);
        current.push(replay);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The built collection against the live one over `orgs`: ids and payloads of every point,
/// and the vectors of a sample. A point a model change re-embedded is matched by the id it has
/// under its job's model ([`heimdex_store::Payload::moved_from`]); its payload is compared but
/// for the model, its version and that id, and its vector (another model's) is not compared.
async fn compare(
    live: &dyn VectorStore,
    built: &dyn VectorStore,
    orgs: &HashSet<Uuid>,
) -> Result<Comparison, StoreError> {
    type Points = HashMap<Uuid, (Uuid, heimdex_store::Payload)>;
    async fn points(store: &dyn VectorStore, org_id: Uuid) -> Result<Points, StoreError> {
        Ok(store
            .scroll_points(org_id, PointFilter::default())
            .await?
            .into_iter()
            .map(|p| (p.payload.moved_from.unwrap_or(p.id), (p.id, p.payload)))
            .collect())
    }
    fn unmoved(payload: &heimdex_store::Payload) -> heimdex_store::Payload {
        heimdex_store::Payload {
            model: String::new(),
            model_ver: String::new(),
            moved_from: None,
            ..payload.clone()
        }
    }
    let mut comparison = Comparison::default();
    for &org_id in orgs {
        let ours = points(live, org_id).await?;
        let theirs = points(built, org_id).await?;
        comparison.live += ours.len() as u64;
        comparison.built += theirs.len() as u64;
        comparison.missing += ours.keys().filter(|k| !theirs.contains_key(k)).count() as u64;
        comparison.extra += theirs.keys().filter(|k| !ours.contains_key(k)).count() as u64;
        let mut same_model: Vec<(Uuid, Uuid)> = Vec::new();
        for (key, (id, payload)) in &ours {
            let Some((other_id, other)) = theirs.get(key) else {
                continue;
            };
            let same = (&payload.model, &payload.model_ver) == (&other.model, &other.model_ver);
            let differs = match same {
                true => other != payload,
                false => unmoved(other) != unmoved(payload),
            };
            if differs {
                comparison.payload_differs += 1;
            }
            if same {
                same_model.push((*id, *other_id));
            }
        }
        same_model.sort_unstable();
        for (id, other_id) in same_model.into_iter().take(VECTOR_SAMPLE) {
            let a = live.get(org_id, id, true).await?.and_then(|p| p.vector);
            let b = built
                .get(org_id, other_id, true)
                .await?
                .and_then(|p| p.vector);
            if let (Some(a), Some(b)) = (a, b) {
                comparison.vectors_checked += 1;
                if cosine(&a, &b) < SAME_VECTOR {
                    comparison.vectors_differ += 1;
                }
            }
        }
    }
    Ok(comparison)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::EPSILON)
}

/// Jobs per second since the first.
#[derive(Default)]
struct Rate {
    since: Option<Instant>,
    count: u64,
}

impl Rate {
    fn add(&mut self, count: u64) {
        self.since.get_or_insert_with(Instant::now);
        self.count += count;
    }

    fn per_second(&self) -> f64 {
        let secs = self.since.map_or(0.0, |at| at.elapsed().as_secs_f64());
        if secs > 0.0 {
            self.count as f64 / secs
        } else {
            0.0
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

//! JetStream bootstrap: the stream, the status bucket and the durable consumers are defined once,
//! as JSON in `nats/` (the `nats` CLI's format), embedded here at build time. At start-up a
//! service creates what is missing, reads the settings back and refuses to run against an
//! object that conflicts — a silently different duplicate window or `max_deliver` would void the
//! guarantees the rest of the code relies on.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use tokio_util::sync::CancellationToken;

/// How a process uses NATS, whichever role it runs.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// One server URL, or several comma separated ([`server_addrs`]). `None`: the process runs
    /// its own nats-server ([`crate::nats_server`]) and connects to that.
    pub url: Option<String>,
    /// How long a publish (and any JetStream request) may wait for its answer.
    pub publish_timeout: Duration,
    /// JetStream de-duplication window of the job stream.
    pub duplicate_window: Duration,
    /// Replicas of the stream and the KV bucket (1 for one server, 3 for a cluster).
    pub replicas: usize,
    /// How long the worker consumer waits for an ack (or a progress ack) before redelivering.
    pub worker_ack_wait: Duration,
}

impl NatsConfig {
    /// The defaults of every setting but the URL.
    pub fn new(url: Option<String>) -> Self {
        Self {
            url,
            publish_timeout: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            worker_ack_wait: Duration::from_secs(30),
        }
    }
}

pub const JOBS_STREAM: &str = "HEIMDEX_JOBS";
pub const STATUS_BUCKET: &str = "HEIMDEX_JOB_STATUS";
pub const LISTING_STREAM: &str = "HEIMDEX_JOB_LISTING";
/// The listing stream of releases before the literal-subject listing; deleted once the
/// projector has filled [`LISTING_STREAM`].
pub const LEGACY_INDEX_STREAM: &str = "HEIMDEX_JOB_INDEX";
pub const DOCUMENT_BUCKET: &str = "HEIMDEX_DOCUMENTS";
pub const DOCUMENT_LISTING_STREAM: &str = "HEIMDEX_DOCUMENT_LISTING";
pub const FILES_BUCKET: &str = "HEIMDEX_FILES";
pub const INDEX_BUCKET: &str = "HEIMDEX_INDEX";
pub const TOMBSTONE_STREAM: &str = "HEIMDEX_TOMBSTONES";
pub const ADVISORY_STREAM: &str = "HEIMDEX_ADVISORIES";
pub const WORKER_CONSUMER: &str = "worker";
pub const PROJECTOR_CONSUMER: &str = "projector";

const STREAM_JSON: &str = include_str!("../../../nats/stream.HEIMDEX_JOBS.json");
const STATUS_JSON: &str = include_str!("../../../nats/kv.HEIMDEX_JOB_STATUS.json");
const LISTING_JSON: &str = include_str!("../../../nats/stream.HEIMDEX_JOB_LISTING.json");
const DOCUMENT_JSON: &str = include_str!("../../../nats/kv.HEIMDEX_DOCUMENTS.json");
const DOCUMENT_LISTING_JSON: &str =
    include_str!("../../../nats/stream.HEIMDEX_DOCUMENT_LISTING.json");
const FILES_JSON: &str = include_str!("../../../nats/obj.HEIMDEX_FILES.json");
const INDEX_JSON: &str = include_str!("../../../nats/kv.HEIMDEX_INDEX.json");
const TOMBSTONE_JSON: &str = include_str!("../../../nats/stream.HEIMDEX_TOMBSTONES.json");
const ADVISORY_JSON: &str = include_str!("../../../nats/stream.HEIMDEX_ADVISORIES.json");
const ADVISORY_CONSUMER_JSON: &str = include_str!("../../../nats/consumer.advisories.json");
const WORKER_JSON: &str = include_str!("../../../nats/consumer.worker.json");
const PROJECTOR_JSON: &str = include_str!("../../../nats/consumer.projector.json");

/// A cause kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("JetStream request failed for {object}")]
    Request {
        object: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "{object} already exists with settings that conflict with nats/: {diffs}. \
         Fix or remove the existing object (e.g. `nats stream edit`/`nats consumer rm`), or align \
         the definition files"
    )]
    Conflict { object: String, diffs: String },
    #[error("definition file for {0} is invalid")]
    Definition(&'static str, #[source] serde_json::Error),
    #[error("shut down while waiting for NATS")]
    Cancelled,
}

impl BootstrapError {
    /// Whether trying again can help: NATS unreachable, or a request that failed while the
    /// server (or a cluster's meta leader) was not ready. A conflicting or invalid definition,
    /// and a shutdown, stay what they are however long one waits.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Request { .. })
    }
}

/// Runs a bootstrap `step` until it succeeds, retrying transient errors with a backoff (100 ms
/// doubling to 5 s) and giving up on the others or on `shutdown`. Every creation or check of a
/// stream, bucket or consumer goes through it: at start-up, processes of a cluster race to
/// create the same objects and a server may answer before its peers know of them.
pub async fn until_ready<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<T, BootstrapError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BootstrapError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() => {
                tracing::warn!(%err, what, "waiting for NATS JetStream");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Err(BootstrapError::Cancelled),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// The parsed definition files, with the deployment's overrides applied.
#[derive(Clone, Debug)]
pub struct Definitions {
    pub stream: stream::Config,
    pub status: stream::Config,
    pub listing: stream::Config,
    /// The document projection's bucket, and its listing.
    pub documents: stream::Config,
    pub document_listing: stream::Config,
    /// The object store of uploaded files.
    pub files: stream::Config,
    /// The index state's bucket.
    pub index: stream::Config,
    pub tombstones: stream::Config,
    pub advisories: stream::Config,
    pub worker: consumer::pull::Config,
    pub projector: consumer::pull::Config,
    /// The workers' consumer of [`Definitions::advisories`].
    pub advisory_consumer: consumer::pull::Config,
}

impl Definitions {
    pub fn load(nats: &NatsConfig) -> Result<Self, BootstrapError> {
        let mut stream: stream::Config = parse("stream.HEIMDEX_JOBS.json", STREAM_JSON)?;
        let mut status: stream::Config = parse("kv.HEIMDEX_JOB_STATUS.json", STATUS_JSON)?;
        let mut listing: stream::Config = parse("stream.HEIMDEX_JOB_LISTING.json", LISTING_JSON)?;
        stream.duplicate_window = nats.duplicate_window;
        stream.num_replicas = nats.replicas;
        status.num_replicas = nats.replicas;
        listing.num_replicas = nats.replicas;
        let mut documents: stream::Config = parse("kv.HEIMDEX_DOCUMENTS.json", DOCUMENT_JSON)?;
        documents.num_replicas = nats.replicas;
        let mut document_listing: stream::Config = parse(
            "stream.HEIMDEX_DOCUMENT_LISTING.json",
            DOCUMENT_LISTING_JSON,
        )?;
        document_listing.num_replicas = nats.replicas;
        let mut files: stream::Config = parse("obj.HEIMDEX_FILES.json", FILES_JSON)?;
        files.num_replicas = nats.replicas;
        let mut index: stream::Config = parse("kv.HEIMDEX_INDEX.json", INDEX_JSON)?;
        index.num_replicas = nats.replicas;
        let mut tombstones: stream::Config =
            parse("stream.HEIMDEX_TOMBSTONES.json", TOMBSTONE_JSON)?;
        tombstones.num_replicas = nats.replicas;
        let mut advisories: stream::Config =
            parse("stream.HEIMDEX_ADVISORIES.json", ADVISORY_JSON)?;
        advisories.num_replicas = nats.replicas;
        let mut worker: consumer::pull::Config = parse("consumer.worker.json", WORKER_JSON)?;
        worker.ack_wait = nats.worker_ack_wait;
        Ok(Self {
            stream,
            status,
            listing,
            documents,
            document_listing,
            files,
            index,
            tombstones,
            advisories,
            worker,
            projector: parse("consumer.projector.json", PROJECTOR_JSON)?,
            advisory_consumer: parse("consumer.advisories.json", ADVISORY_CONSUMER_JSON)?,
        })
    }

    /// How many times the worker consumer delivers a message before giving up.
    pub fn worker_max_deliver(&self) -> u32 {
        u32::try_from(self.worker.max_deliver).unwrap_or(u32::MAX)
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    file: &'static str,
    json: &str,
) -> Result<T, BootstrapError> {
    serde_json::from_str(json).map_err(|err| BootstrapError::Definition(file, err))
}

/// The servers of a `NATS_URL`: one URL or several, comma separated
/// (`nats://n1:4222,nats://n2:4222,nats://n3:4222`), as the `nats` CLI and the other NATS clients
/// take them. Naming every member of a cluster lets a process start, and reconnect, while any one
/// of them is down; async-nats alone parses the whole string as a single address.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, BootstrapError> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<async_nats::ServerAddr>()
                .map_err(|err| BootstrapError::Connect {
                    url: url.to_owned(),
                    source: Box::new(err),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(BootstrapError::Connect {
            url: url.to_owned(),
            source: "no server URL".into(),
        });
    }
    Ok(addrs)
}

/// Why a [`StreamRead`] could not give the whole slice it was opened on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open a read of the stream")]
    Open(#[source] BoxError),
    #[error("reading the stream failed")]
    Read(#[source] BoxError),
    #[error("no message for {0:?} before the read caught up")]
    Stalled(Duration),
    #[error("the read ended before it caught up")]
    Ended,
}

/// One pass over the messages of a stream under a subject filter, in stream order, up to the
/// last one stored when the pass began: an ordered consumer, read until it has nothing pending.
/// Every whole-slice read goes through it (a job's history, an org's statuses, a refold), so
/// none can return a silently truncated slice: a message that does not come within `stall`
/// is an error.
pub struct StreamRead {
    /// `None` once caught up (or when there was nothing to read).
    messages: Option<consumer::pull::Ordered>,
    stall: Duration,
}

impl StreamRead {
    pub async fn open<I>(
        stream: &stream::Stream<I>,
        filter_subject: String,
        deliver_policy: consumer::DeliverPolicy,
        stall: Duration,
    ) -> Result<Self, ReadError> {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|err| ReadError::Open(Box::new(err)))?;
        let messages = if consumer.cached_info().num_pending > 0 {
            Some(
                consumer
                    .messages()
                    .await
                    .map_err(|err| ReadError::Open(Box::new(err)))?,
            )
        } else {
            None
        };
        Ok(Self { messages, stall })
    }

    /// The next message of the slice; `None` once all of it has been read.
    pub async fn next(&mut self) -> Result<Option<jetstream::Message>, ReadError> {
        use futures::StreamExt;
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let message = match tokio::time::timeout(self.stall, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => return Err(ReadError::Read(Box::new(err))),
            Ok(None) => return Err(ReadError::Ended),
            Err(_) => return Err(ReadError::Stalled(self.stall)),
        };
        let info = message.info().map_err(ReadError::Read)?;
        if info.pending == 0 {
            self.messages = None;
        }
        Ok(Some(message))
    }
}

/// Connects with reconnects forever: a service outlives NATS restarts and resumes by itself.
/// `url` may list several servers ([`server_addrs`]); the client picks one and moves to another
/// when it is lost.
pub async fn connect(url: &str, client_name: &str) -> Result<async_nats::Client, BootstrapError> {
    let servers = server_addrs(url)?;
    async_nats::ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other @ (async_nats::Event::LameDuckMode
                | async_nats::Event::Draining
                | async_nats::Event::Closed
                | async_nats::Event::SlowConsumer(_)
                | async_nats::Event::ServerError(_)
                | async_nats::Event::ClientError(_)) => {
                    tracing::debug!(event = %other, "NATS event")
                }
            }
        })
        .connect(servers)
        .await
        .map_err(|err| BootstrapError::Connect {
            url: url.to_owned(),
            source: Box::new(err),
        })
}

/// A JetStream context whose requests and publish acks give up after `timeout`, so a caller
/// facing a dead server answers quickly instead of hanging.
pub fn context(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .ack_timeout(timeout)
        .max_ack_inflight(50_000)
        .build(client)
}

/// Creates (or finds) the job stream and checks its settings.
pub async fn ensure_stream(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<stream::Stream, BootstrapError> {
    ensure_stream_config(js, &defs.stream).await
}

/// Creates (or finds) the status bucket's stream, checks it and opens it as a KV store.
pub async fn ensure_status_bucket(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<kv::Store, BootstrapError> {
    ensure_stream_config(js, &defs.status).await?;
    js.get_key_value(STATUS_BUCKET)
        .await
        .map_err(|err| request_error(STATUS_BUCKET, err))
}

/// Creates (or finds) the job listing stream and checks its settings.
pub async fn ensure_listing(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<stream::Stream, BootstrapError> {
    ensure_stream_config(js, &defs.listing).await
}

/// Creates (or finds) the document bucket's stream and its listing stream, checks both and
/// opens the bucket as a KV store.
pub async fn ensure_documents(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<kv::Store, BootstrapError> {
    ensure_stream_config(js, &defs.documents).await?;
    ensure_stream_config(js, &defs.document_listing).await?;
    js.get_key_value(DOCUMENT_BUCKET)
        .await
        .map_err(|err| request_error(DOCUMENT_BUCKET, err))
}

/// Creates (or finds) the index state's bucket, checks it and opens it as a KV store.
pub async fn ensure_index(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<kv::Store, BootstrapError> {
    ensure_stream_config(js, &defs.index).await?;
    js.get_key_value(INDEX_BUCKET)
        .await
        .map_err(|err| request_error(INDEX_BUCKET, err))
}

/// Creates (or finds) the files object store's stream, checks it and opens it.
pub async fn ensure_files(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<jetstream::object_store::ObjectStore, BootstrapError> {
    ensure_stream_config(js, &defs.files).await?;
    js.get_object_store(FILES_BUCKET)
        .await
        .map_err(|err| request_error(FILES_BUCKET, err))
}

/// Creates (or finds) the tombstone stream and checks its settings.
pub async fn ensure_tombstones(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<stream::Stream, BootstrapError> {
    ensure_stream_config(js, &defs.tombstones).await
}

/// Creates (or finds) the stream that keeps the worker consumer's max-deliveries advisories.
pub async fn ensure_advisories(
    js: &jetstream::Context,
    defs: &Definitions,
) -> Result<stream::Stream, BootstrapError> {
    ensure_stream_config(js, &defs.advisories).await
}

/// Creates (or finds) a durable pull consumer and checks its settings. A consumer whose filter
/// is a subset of the wanted one (the worker's from before `retried` events existed) is widened
/// in place: that only adds messages, and keeps the consumer's position and pending deliveries.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    config: &consumer::pull::Config,
) -> Result<consumer::PullConsumer, BootstrapError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let object = format!("consumer {}/{name}", stream.cached_info().config.name);
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .map_err(|err| request_error(&object, err))?;
    let mut info = consumer
        .info()
        .await
        .map_err(|err| request_error(&object, err))?
        .clone();
    let (have_filters, want_filters) = (filters(&info.config), filters(config));
    if have_filters != want_filters && have_filters.iter().all(|f| want_filters.contains(f)) {
        tracing::info!(consumer = name, from = ?have_filters, to = ?want_filters, "widening the consumer's filter");
        use consumer::FromConsumer as _;
        let mut widened = consumer::pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|err| request_error(&object, err))?;
        widened.filter_subject = config.filter_subject.clone();
        widened.filter_subjects = config.filter_subjects.clone();
        consumer = stream
            .update_consumer(widened)
            .await
            .map_err(|err| request_error(&object, err))?;
        info = consumer
            .info()
            .await
            .map_err(|err| request_error(&object, err))?
            .clone();
    }
    let have = &info.config;
    let mut diffs = Vec::new();
    diff(&mut diffs, "filter_subjects", &filters(have), &want_filters);
    diff(
        &mut diffs,
        "ack_policy",
        &have.ack_policy,
        &config.ack_policy,
    );
    diff(&mut diffs, "ack_wait", &have.ack_wait, &config.ack_wait);
    diff(
        &mut diffs,
        "max_deliver",
        &have.max_deliver,
        &config.max_deliver,
    );
    diff(
        &mut diffs,
        "deliver_policy",
        &have.deliver_policy,
        &config.deliver_policy,
    );
    conflict(object, diffs)?;
    Ok(consumer)
}

/// A consumer's filter subjects, one or many, sorted.
fn filters(config: &impl ConsumerFilters) -> Vec<String> {
    let (one, many) = config.filter_parts();
    let mut all = many.to_vec();
    if !one.is_empty() {
        all.push(one.to_owned());
    }
    all.sort();
    all
}

/// The filter fields of both consumer config types (info reports `consumer::Config`, the
/// definition files are `consumer::pull::Config`).
trait ConsumerFilters {
    fn filter_parts(&self) -> (&str, &[String]);
}

impl ConsumerFilters for consumer::Config {
    fn filter_parts(&self) -> (&str, &[String]) {
        (&self.filter_subject, &self.filter_subjects)
    }
}

impl ConsumerFilters for consumer::pull::Config {
    fn filter_parts(&self) -> (&str, &[String]) {
        (&self.filter_subject, &self.filter_subjects)
    }
}

async fn ensure_stream_config(
    js: &jetstream::Context,
    want: &stream::Config,
) -> Result<stream::Stream, BootstrapError> {
    let object = format!("stream {}", want.name);
    let mut stream = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|err| request_error(&object, err))?;
    let info = stream
        .info()
        .await
        .map_err(|err| request_error(&object, err))?;
    let have = &info.config;
    let mut diffs = Vec::new();
    diff(&mut diffs, "subjects", &have.subjects, &want.subjects);
    diff(&mut diffs, "retention", &have.retention, &want.retention);
    diff(&mut diffs, "storage", &have.storage, &want.storage);
    diff(&mut diffs, "discard", &have.discard, &want.discard);
    diff(
        &mut diffs,
        "num_replicas",
        &have.num_replicas.max(1),
        &want.num_replicas.max(1),
    );
    diff(
        &mut diffs,
        "duplicate_window",
        &have.duplicate_window,
        &want.duplicate_window,
    );
    diff(
        &mut diffs,
        "max_msgs_per_subject",
        &have.max_messages_per_subject,
        &want.max_messages_per_subject,
    );
    diff(
        &mut diffs,
        "allow_direct",
        &have.allow_direct,
        &want.allow_direct,
    );
    diff(
        &mut diffs,
        "allow_rollup_hdrs",
        &have.allow_rollup,
        &want.allow_rollup,
    );
    conflict(object, diffs)?;
    Ok(stream)
}

fn diff<T: PartialEq + std::fmt::Debug>(diffs: &mut Vec<String>, field: &str, have: &T, want: &T) {
    if have != want {
        diffs.push(format!("{field} is {have:?}, want {want:?}"));
    }
}

fn conflict(object: String, diffs: Vec<String>) -> Result<(), BootstrapError> {
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(BootstrapError::Conflict {
            object,
            diffs: diffs.join("; "),
        })
    }
}

fn request_error(object: &str, err: impl Into<BoxError>) -> BootstrapError {
    BootstrapError::Request {
        object: object.to_owned(),
        source: err.into(),
    }
}

/// Opens a pull stream of up to `batch` messages per pull on a durable consumer, retrying every
/// second while NATS is unreachable. `None` once `shutdown` is cancelled.
pub async fn pull_stream(
    consumer: &consumer::PullConsumer,
    batch: usize,
    shutdown: &CancellationToken,
) -> Option<consumer::pull::Stream> {
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let opened = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        match opened {
            Ok(messages) => return Some(messages),
            Err(err) => {
                let name = consumer
                    .cached_info()
                    .config
                    .durable_name
                    .clone()
                    .unwrap_or_default();
                tracing::warn!(%err, consumer = name, "cannot pull from the consumer; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats_settings() -> NatsConfig {
        NatsConfig::new(None)
    }

    #[test]
    fn definition_files_parse_with_the_designed_settings() {
        let defs = Definitions::load(&nats_settings()).unwrap();
        assert_eq!(defs.stream.name, JOBS_STREAM);
        assert_eq!(defs.stream.subjects, vec!["heimdex.jobs.>".to_owned()]);
        assert_eq!(defs.stream.storage, stream::StorageType::File);
        assert_eq!(defs.stream.retention, stream::RetentionPolicy::Limits);
        assert_eq!(defs.stream.duplicate_window, Duration::from_secs(120));
        assert!(defs.stream.allow_direct);
        assert_eq!(defs.status.name, format!("KV_{STATUS_BUCKET}"));
        assert_eq!(defs.listing.name, LISTING_STREAM);
        assert_eq!(defs.listing.subjects, vec!["heimdex.listing.>".to_owned()]);
        // Many jobs share a subject (one per org and status); entries are deleted by sequence.
        assert_eq!(defs.listing.max_messages_per_subject, -1);
        assert!(!defs.listing.deny_delete);
        assert!(defs.listing.allow_direct);
        assert_eq!(defs.documents.name, format!("KV_{DOCUMENT_BUCKET}"));
        assert_eq!(defs.documents.max_messages_per_subject, 1);
        assert_eq!(defs.document_listing.name, DOCUMENT_LISTING_STREAM);
        assert_eq!(
            defs.document_listing.subjects,
            vec!["heimdex.documents.>".to_owned()]
        );
        assert_eq!(defs.document_listing.max_messages_per_subject, -1);
        assert!(!defs.document_listing.deny_delete);
        assert!(defs.document_listing.allow_direct);
        assert_eq!(defs.files.name, format!("OBJ_{FILES_BUCKET}"));
        assert!(defs.files.allow_rollup);
        assert_eq!(defs.files.discard, stream::DiscardPolicy::New);
        assert_eq!(defs.worker.durable_name.as_deref(), Some(WORKER_CONSUMER));
        assert_eq!(defs.worker.max_deliver, 4);
        assert_eq!(defs.worker.ack_wait, Duration::from_secs(30));
        assert_eq!(
            filters(&defs.worker),
            ["heimdex.jobs.*.*.requested", "heimdex.jobs.*.*.retried"]
        );
        assert_eq!(
            defs.projector.durable_name.as_deref(),
            Some(PROJECTOR_CONSUMER)
        );
        assert_eq!(filters(&defs.projector), ["heimdex.jobs.>"]);
    }

    #[test]
    fn nats_url_may_list_several_servers() {
        let one = server_addrs("nats://127.0.0.1:4222").unwrap();
        assert_eq!(one.len(), 1);
        let three =
            server_addrs("nats://10.0.0.1:4222, nats://10.0.0.2:4223,nats://n3:4224,").unwrap();
        let ports: Vec<u16> = three.iter().map(|addr| addr.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(three[2].host(), "n3");
        assert!(matches!(
            server_addrs(" , "),
            Err(BootstrapError::Connect { .. })
        ));
        assert!(matches!(
            server_addrs("nats://a:4222,http://b:4222"),
            Err(BootstrapError::Connect { .. })
        ));
    }

    #[test]
    fn overrides_apply() {
        let mut nats = nats_settings();
        nats.replicas = 3;
        nats.duplicate_window = Duration::from_secs(600);
        nats.worker_ack_wait = Duration::from_millis(1500);
        let defs = Definitions::load(&nats).unwrap();
        assert_eq!(defs.worker.ack_wait, Duration::from_millis(1500));
        assert_eq!(defs.stream.num_replicas, 3);
        assert_eq!(defs.status.num_replicas, 3);
        assert_eq!(defs.listing.num_replicas, 3);
        assert_eq!(defs.documents.num_replicas, 3);
        assert_eq!(defs.document_listing.num_replicas, 3);
        assert_eq!(defs.files.num_replicas, 3);
        assert_eq!(defs.stream.duplicate_window, Duration::from_secs(600));
    }
}

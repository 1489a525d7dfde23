//! A process's handle on the event store: one connection, the job stream and the projections,
//! created (or checked) from the definition files before anything else runs.

use std::time::Duration;

use async_nats::jetstream::{Context, kv, stream};
use tokio_util::sync::CancellationToken;

use crate::documents::DocumentStore;
use crate::files::FileStore;
use crate::index::IndexRegistry;
use crate::jetstream::{self, BootstrapError, Definitions, NatsConfig};
use crate::log::JobLog;
use crate::status::StatusStore;

/// How long a listing waits for the next message of its batch before it gives up (503).
const LIST_STALL: Duration = Duration::from_secs(5);

/// What every role shares: the connection, the JetStream context (whose requests give up after
/// the publish timeout), the parsed definitions, the job log and the status store.
#[derive(Clone)]
pub struct EventStore {
    pub client: async_nats::Client,
    pub js: Context,
    pub defs: Definitions,
    pub stream: stream::Stream,
    pub status: kv::Store,
    pub log: JobLog,
    pub statuses: StatusStore,
    pub documents: DocumentStore,
    pub files: FileStore,
    /// Which vector collections there are and what each is for.
    pub index: IndexRegistry,
    /// The URL connected to (as given: it may carry credentials; strip them before showing it).
    pub url: String,
}

impl EventStore {
    /// Connects to `url` and creates or checks the stream and the bucket. While NATS is
    /// unreachable it keeps trying (a service started before its NATS server just waits); a
    /// conflicting definition is fatal, and so is `shutdown`.
    pub async fn connect(
        config: &NatsConfig,
        url: &str,
        client_name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Self, BootstrapError> {
        let defs = Definitions::load(config)?;
        let client = jetstream::connect(url, client_name).await?;
        let js = jetstream::context(client.clone(), config.publish_timeout);
        let (stream, status, listing, tombstones, documents, files, index) =
            jetstream::until_ready("the event store", shutdown, || async {
                Ok((
                    jetstream::ensure_stream(&js, &defs).await?,
                    jetstream::ensure_status_bucket(&js, &defs).await?,
                    jetstream::ensure_listing(&js, &defs).await?,
                    jetstream::ensure_tombstones(&js, &defs).await?,
                    jetstream::ensure_documents(&js, &defs).await?,
                    jetstream::ensure_files(&js, &defs).await?,
                    jetstream::ensure_index(&js, &defs).await?,
                ))
            })
            .await?;
        Ok(Self {
            log: JobLog::new(client.clone(), js.clone(), stream.clone(), tombstones),
            statuses: StatusStore::new(
                client.clone(),
                js.clone(),
                status.clone(),
                listing,
                LIST_STALL,
            ),
            documents: DocumentStore::new(client.clone(), js.clone(), documents, LIST_STALL),
            files: FileStore::new(files),
            index: IndexRegistry::new(index),
            client,
            js,
            defs,
            stream,
            status,
            url: url.to_owned(),
        })
    }
}

//! Connecting a process to its dependencies: NATS (bootstrapped from `nats/`) and the vector
//! store. Every subcommand that runs a service goes through here.

use std::sync::Arc;

use heimdex_event_store::EventStore;
use heimdex_store::VectorStore;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

/// Connects to the NATS server at `url` (the configured one, or the one `serve` started) and
/// creates or checks the stream and the bucket; see [`EventStore::connect`].
pub async fn connect_nats(
    settings: &Settings,
    url: &str,
    client_name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<EventStore> {
    Ok(EventStore::connect(&settings.nats, url, client_name, shutdown).await?)
}

/// Opens the vector store: Qdrant Edge under the data dir, or a Qdrant server at `QDRANT_URL`.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn VectorStore>> {
    Ok(heimdex_store::open(settings.store.clone()).await?)
}

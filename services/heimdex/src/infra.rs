//! Connecting a process to its dependencies: NATS (bootstrapped from `nats/`) and the vector
//! store. Every subcommand that runs a service goes through here.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{Context, kv, stream};

use heimdex_core::Settings;
use heimdex_core::jetstream::{self, Definitions};
use heimdex_core::shutdown::CancellationToken;
use heimdex_store::{Backend, StoreConfig, VectorStore};

pub struct Nats {
    pub client: async_nats::Client,
    pub js: Context,
    pub defs: Definitions,
    pub stream: stream::Stream,
    pub status: kv::Store,
    pub url: String,
}

/// Connects and creates/checks the stream and bucket. While NATS is unreachable it keeps trying
/// (a service started before its NATS server just waits); a conflicting definition is fatal.
pub async fn connect_nats(
    settings: &Settings,
    url: &str,
    client_name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Nats> {
    let defs = Definitions::load(&settings.nats)?;
    let client = jetstream::connect(url, client_name).await?;
    let js = jetstream::context(client.clone(), settings.nats.publish_timeout);
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let stream = jetstream::ensure_stream(&js, &defs).await?;
            let status = jetstream::ensure_status_bucket(&js, &defs).await?;
            Ok::<_, jetstream::BootstrapError>((stream, status))
        };
        match attempt.await {
            Ok((stream, status)) => {
                return Ok(Nats {
                    client,
                    js,
                    defs,
                    stream,
                    status,
                    url: url.to_owned(),
                });
            }
            Err(err @ jetstream::BootstrapError::Conflict { .. })
            | Err(err @ jetstream::BootstrapError::Definition(..)) => return Err(err.into()),
            Err(err) => {
                tracing::warn!(%err, url, "waiting for NATS JetStream");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("shut down while waiting for NATS"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Opens the vector store: Qdrant Edge under the data dir, or a Qdrant server at `QDRANT_URL`.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn VectorStore>> {
    let backend = match &settings.qdrant.url {
        None => Backend::Embedded {
            path: settings.edge_dir(),
        },
        Some(url) => Backend::Remote {
            url: url.clone(),
            api_key: settings.qdrant.api_key.clone(),
        },
    };
    let store = heimdex_store::open(StoreConfig {
        backend,
        collection: settings.qdrant.collection.clone(),
        vector_size: settings.qdrant.vector_size,
    })
    .await?;
    Ok(store)
}

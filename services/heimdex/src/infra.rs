//! Connecting a process to its dependencies: NATS (bootstrapped from `nats/`) and the vector
//! store. Every subcommand that runs a service goes through here.

use std::sync::Arc;

use heimdex_event_store::EventStore;
use heimdex_event_store::IndexRegistry;
use heimdex_store::{Collections, VectorStore};
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

/// Opens the vector collections with the live one as the index state says (the configured
/// one until a switch), and keeps following the state until `shutdown`: a switch anywhere
/// moves this process's reads and writes at once.
pub async fn open_collections(
    settings: &Settings,
    index: &IndexRegistry,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Collections>> {
    let collections = Collections::open(settings.store.clone()).await?;
    // Right after the bucket is created (a cluster still electing its leader, say) a read may
    // find no responder: wait for it as the connection waited for JetStream.
    let mut delay = std::time::Duration::from_millis(100);
    let state = loop {
        match index.get(collections.configured()).await {
            Ok(state) => break state,
            Err(err) => {
                tracing::warn!(error = %heimdex_telemetry::ErrorChain(&err), "waiting for the index state");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the index state"),
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    let live = &state.state.live;
    if collections
        .set_live(live, state.state.models_of(live))
        .await?
    {
        tracing::info!(live = %state.state.live, "the index state names the live collection");
    }
    tokio::spawn(follow_index(
        collections.clone(),
        index.clone(),
        shutdown.clone(),
    ));
    Ok(collections)
}

/// Sets the live collection on every change of the index state; re-watches after an error.
async fn follow_index(
    collections: Arc<Collections>,
    index: IndexRegistry,
    shutdown: CancellationToken,
) {
    use futures::StreamExt as _;
    loop {
        match index.watch().await {
            Ok(watch) => {
                let mut watch = std::pin::pin!(watch);
                loop {
                    let stored = tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = watch.next() => match next {
                            Some(stored) => stored,
                            None => break,
                        },
                    };
                    let live = &stored.state.live;
                    match collections
                        .set_live(live, stored.state.models_of(live))
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(live = %stored.state.live, "switched the live collection")
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::error!(error = %heimdex_telemetry::ErrorChain(&err), live = %stored.state.live, "cannot open the live collection")
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %heimdex_telemetry::ErrorChain(&err), "cannot watch the index state")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

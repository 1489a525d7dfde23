//! Running the services: all three in one process (`serve`), or one at a time for scale-out.
//! `serve` without `NATS_URL` starts and supervises its own nats-server, stopped last so the
//! services can hand back their in-flight work first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::settings::Settings;
use heimdex_embed::{EmbedQueue, Registry, ThreadBudget};
use heimdex_event_store::nats_server::{self, NatsServer, NatsServerConfig};
use heimdex_store::{Collections, VectorStore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{infra, metrics};
use heimdex_event_store::EventStore;
use heimdex_event_store::jetstream::BootstrapError;

/// Which services a process runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub projector: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        projector: true,
    };
}

pub async fn run(
    settings: Settings,
    roles: Roles,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(settings = %settings.summary(), ?roles, "starting heimdex");
    if settings.jwt_dev_secret {
        tracing::warn!(
            "JWT_SECRET is not set: using the public development secret (HEIMDEX_ENV=dev only)"
        );
    }

    // The embedded nats-server outlives the services: it gets its own token, cancelled last.
    let nats_stop = CancellationToken::new();
    let (nats_url, supervisor) = match &settings.nats.url {
        Some(url) => (url.clone(), None),
        None => {
            let server = start_embedded_nats(&settings).await?;
            let url = server.url().to_owned();
            tracing::info!(%url, store = %settings.nats_store_dir().display(), "embedded nats-server running");
            (
                url,
                Some(tokio::spawn(supervise(server, nats_stop.clone()))),
            )
        }
    };

    let result = run_services(&settings, roles, &nats_url, shutdown).await;
    nats_stop.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    result
}

/// Services running in this process.
pub struct Running {
    /// Where the API listens, when this process runs it.
    pub api_addr: Option<SocketAddr>,
    /// Where the process's own metrics listener is, when it has one (`/metrics` is on the API's
    /// port too).
    pub metrics_addr: Option<SocketAddr>,
    /// The live collection of the moment (a reader of `collections`).
    pub store: Option<Arc<dyn VectorStore>>,
    pub collections: Option<Arc<Collections>>,
    tasks: JoinSet<()>,
    client: async_nats::Client,
    shutdown: CancellationToken,
}

impl Running {
    /// Waits until every service has stopped (after `shutdown` is cancelled, or one fails).
    pub async fn wait(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(err) = joined {
                tracing::error!(%err, "service task failed");
                self.shutdown.cancel();
            }
        }
        // Acks and final events are buffered in the client: send them before disconnecting.
        if tokio::time::timeout(Duration::from_secs(5), self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS flush timed out");
        }
        tracing::info!("heimdex stopped");
    }
}

async fn run_services(
    settings: &Settings,
    roles: Roles,
    nats_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(settings, roles, nats_url, shutdown)
        .await?
        .wait()
        .await;
    Ok(())
}

/// Connects, builds the requested services and starts them; they run until `shutdown`.
pub async fn start(
    settings: &Settings,
    roles: Roles,
    nats_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    heimdex_telemetry::metrics::install();
    // Bound first: a taken metrics address that was asked for stops start-up before anything
    // else is opened. The default one (a process without the API, the setting unset) may be
    // taken by a neighbour, say a second worker on the host: then this process starts without
    // its own listener, and says so.
    let metrics_server = match (settings.metrics_addr, metrics::listener_addr(None, roles)) {
        (Some(addr), _) => Some(metrics::bind(addr).await?),
        (None, Some(default)) => match metrics::bind(default).await {
            Ok(server) => Some(server),
            Err(err) => {
                tracing::warn!(
                    error = %heimdex_telemetry::ErrorChain(&err),
                    "no /metrics for this process: its default address is taken; set \
                     HEIMDEX_METRICS_ADDR to a free one (port 0 picks any)"
                );
                None
            }
        },
        (None, None) => None,
    };
    let nats = infra::connect_nats(settings, nats_url, "heimdex", &shutdown).await?;
    let collections: Option<Arc<Collections>> = if roles.api || roles.worker {
        if settings.store_url().is_none() && !(roles.api && roles.worker) {
            tracing::warn!(
                "the embedded vector store lives in this process only: run api and worker together \
                 (`heimdex serve`) or set QDRANT_URL for scale-out"
            );
        }
        Some(infra::open_collections(settings, &nats.index, &shutdown).await?)
    } else {
        None
    };
    let store = collections.as_ref().map(Collections::reader);

    // The models and the one embedding queue, shared by the worker and search (queries first).
    let models = if roles.api || roles.worker {
        let dir = settings.model_dir.clone();
        let size = settings.store.vector_size;
        let threads = settings
            .embed_threads
            .map(ThreadBudget::new)
            .unwrap_or_default();
        let registry =
            tokio::task::spawn_blocking(move || Registry::load(dir.as_deref(), size, threads))
                .await?;
        Some((Arc::new(registry), EmbedQueue::start()?))
    } else {
        None
    };
    let (models, embeddings) = match models {
        Some((models, queue)) => (Some(models), Some(queue)),
        None => (None, None),
    };

    let mut tasks = JoinSet::new();
    if let (Some(collections), Some(models), Some(embeddings), true) = (
        collections.as_ref(),
        models.as_ref(),
        embeddings.as_ref(),
        roles.worker,
    ) {
        let (worker, indexer) = build_worker(
            settings,
            &nats,
            collections.clone(),
            models.clone(),
            embeddings.clone(),
            &shutdown,
        )
        .await?;
        tasks.spawn(worker.run(shutdown.clone()));
        tasks.spawn(indexer.run(shutdown.clone()));
        let advisories = heimdex_worker::advisory::consumer(&nats, &shutdown).await?;
        tasks.spawn(heimdex_worker::advisory::run(
            nats.log.clone(),
            advisories,
            shutdown.clone(),
        ));
    }
    if roles.projector {
        let projector = build_projector(&nats, &shutdown).await?;
        tasks.spawn(projector.run(shutdown.clone()));
        let sweeper = heimdex_projector::files::Sweeper {
            files: nats.files.clone(),
            documents: nats.documents.clone(),
            statuses: nats.statuses.clone(),
        };
        tasks.spawn(sweeper.run(settings.file_sweep, shutdown.clone()));
    }
    let mut api_addr = None;
    if let (Some(collections), Some(models), Some(embeddings), true) = (
        collections.as_ref(),
        models.as_ref(),
        embeddings.as_ref(),
        roles.api,
    ) {
        if settings.api.overload.max_backlog > 0 {
            // The backlog bound reads the worker consumer's pending counts: create it (with
            // its checked definition) so jobs are counted before any worker has started.
            durable(&nats, &nats.defs.worker, &shutdown).await?;
        }
        let api = heimdex_api::build(
            &settings.api,
            heimdex_api::ApiDeps {
                events: nats.clone(),
                collections: collections.clone(),
                models: models.clone(),
                embeddings: embeddings.clone(),
                store_url: settings.store_url().map(str::to_owned),
            },
        )
        .await?;
        api_addr = Some(api.local_addr());
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = api.run(token.clone()).await {
                tracing::error!(%err, "API server failed");
                token.cancel();
            }
        });
    }
    tasks.spawn(
        metrics::Sampler {
            stream: nats.stream.clone(),
            roles,
            store: store.clone(),
            timeout: settings.api.probes.timeout,
        }
        .run(shutdown.clone()),
    );
    let metrics_addr = metrics_server.as_ref().map(|server| server.local_addr());
    if let Some(server) = metrics_server {
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(err) = server.run(token.clone()).await {
                tracing::error!(%err, "metrics server failed");
                token.cancel();
            }
        });
    }
    tracing::info!(?api_addr, ?metrics_addr, "heimdex ready");
    Ok(Running {
        api_addr,
        metrics_addr,
        store,
        collections,
        tasks,
        client: nats.client,
        shutdown,
    })
}

/// A durable consumer of the job stream, created (or checked) from its definition, waiting
/// through transient errors.
async fn durable(
    nats: &EventStore,
    config: &async_nats::jetstream::consumer::pull::Config,
    shutdown: &CancellationToken,
) -> Result<async_nats::jetstream::consumer::PullConsumer, BootstrapError> {
    heimdex_event_store::jetstream::until_ready("a durable consumer", shutdown, || {
        heimdex_event_store::jetstream::ensure_consumer(&nats.stream, config)
    })
    .await
}

/// The worker, and the indexer that runs beside it (see `heimdex_worker::indexer`).
pub async fn build_worker(
    settings: &Settings,
    nats: &EventStore,
    collections: Arc<Collections>,
    models: Arc<Registry>,
    embeddings: EmbedQueue,
    shutdown: &CancellationToken,
) -> anyhow::Result<(heimdex_worker::Worker, heimdex_worker::indexer::Indexer)> {
    let consumer = durable(nats, &nats.defs.worker, shutdown).await?;
    let config =
        heimdex_worker::WorkerConfig::new(settings.worker.concurrency, &nats.defs, &settings.store);
    let deps = heimdex_worker::WorkerDeps {
        log: nats.log.clone(),
        statuses: nats.statuses.clone(),
        collections,
        models,
        embeddings,
        files: nats.files.clone(),
    };
    let indexer =
        heimdex_worker::indexer::Indexer::new(config.clone(), deps.clone(), nats.index.clone());
    let worker = heimdex_worker::Worker::build(config, deps, consumer).await?;
    Ok((worker, indexer))
}

pub async fn build_projector(
    nats: &EventStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<heimdex_projector::Projector> {
    let consumer = durable(nats, &nats.defs.projector, shutdown).await?;
    Ok(heimdex_projector::Projector::new(
        heimdex_projector::ProjectorDeps {
            statuses: nats.statuses.clone(),
            consumer,
            log: nats.log.clone(),
            documents: nats.documents.clone(),
        },
    ))
}

async fn start_embedded_nats(settings: &Settings) -> anyhow::Result<NatsServer> {
    let embedded = &settings.embedded_nats;
    let bin = nats_server::find_binary(embedded.server_bin.as_deref())?;
    let mut config = NatsServerConfig::new(bin, settings.nats_store_dir(), embedded.listen);
    config.sync_interval = Some(embedded.sync_interval);
    Ok(NatsServer::start(config).await?)
}

/// Restarts the embedded nats-server if it dies; stops it when `stop` is cancelled.
async fn supervise(mut server: NatsServer, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                server.stop().await;
                tracing::info!("embedded nats-server stopped");
                return;
            }
            status = server.wait() => {
                tracing::error!(?status, "embedded nats-server exited; restarting");
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    match server.start_again().await {
                        Ok(()) => {
                            delay = Duration::from_millis(200);
                            tracing::info!(url = server.url(), "embedded nats-server restarted");
                            break;
                        }
                        Err(err) => {
                            tracing::error!(%err, "cannot restart embedded nats-server");
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
    }
}

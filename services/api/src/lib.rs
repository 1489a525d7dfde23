//! The Heimdex HTTP API: stateless. It authenticates, validates, appends `requested` events to
//! JetStream, and reads job status (KV), job history (the stream) and points (the vector store).
//!
//! `build(config, deps)` binds the listener (port 0 works, for tests); `Api::run(shutdown)`
//! serves until the token is cancelled, then drains in-flight requests.

pub mod auth;
pub mod connections;
pub mod metadata;
pub mod metrics;
pub mod overload;
pub mod probes;
pub mod problem;
pub mod routes;
pub mod strict;
pub mod submit;
pub mod timeouts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use heimdex_event_store::{EventStore, JobLog, StatusStore};
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response, Route, Server};
use poem_openapi::OpenApiService;

use heimdex_store::VectorStore;
use tokio_util::sync::CancellationToken;

use crate::auth::AdminKey;
use crate::auth::{JwtConfig, Verifier};
use crate::connections::ConnectionLimit;
use crate::overload::Admission;
use crate::overload::OverloadConfig;
use crate::probes::{CachedProbe, ProbeConfig};
use crate::problem::ApiError;
use crate::routes::admin::AdminApi;
use crate::routes::documents::DocumentsApi;
use crate::routes::health::HealthApi;
use crate::routes::ingest::IngestApi;
use crate::routes::jobs::JobsApi;
use crate::routes::search::SearchApi;
use crate::routes::vectors::VectorsApi;
use crate::submit::Submitter;
use crate::timeouts::TimeoutAcceptor;

/// Request bodies above this are refused with 413 before they are read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The bulk routes (`/vectors/embed/batch`, `/vectors/documents`) take up to 8 MiB;
/// `PUT /documents/{asset_id}` takes a file ([`routes::upload::MAX_FILE_BODY_BYTES`]).
pub const MAX_BULK_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The body limit of a request path: documents take a file of up to 10 MiB (with room for a
/// multipart envelope), the bulk routes 8 MiB, the rest 1 MiB.
fn body_limit(path: &str) -> usize {
    match path {
        "/vectors/embed/batch" | "/vectors/documents" => MAX_BULK_BODY_BYTES,
        path if path.starts_with("/documents/") => routes::upload::MAX_FILE_BODY_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// The API role's configuration.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where the API listens (`HEIMDEX_API_ADDR`); port 0 picks a free port.
    pub addr: SocketAddr,
    pub jwt: JwtConfig,
    pub probes: ProbeConfig,
    /// Whether `/readyz` probes the vector store (`ENABLE_QDRANT`).
    pub probe_store: bool,
    pub overload: OverloadConfig,
    /// How long a client may take to send a request's headers (`HEIMDEX_HTTP_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole request, headers and body
    /// (`HEIMDEX_HTTP_READ_TIMEOUT_MS`).
    pub read_timeout: Duration,
    /// Most open HTTP connections (`HEIMDEX_MAX_CONNECTIONS`); more are refused at once. `None`:
    /// [`connections::DEFAULT_MAX_CONNECTIONS`], or fewer if the process's file-descriptor limit
    /// does not allow that many.
    pub max_connections: Option<usize>,
    /// The operator's bearer token for `/admin/*` (`HEIMDEX_ADMIN_TOKEN`); `None`: those
    /// routes answer 403.
    pub admin_token: Option<secrecy::SecretString>,
}

/// Connections and stores the API needs; `heimdex serve` shares them with the other services.
#[derive(Clone)]
pub struct ApiDeps {
    pub events: EventStore,
    /// The collections, the live one of the moment with the models it holds.
    pub collections: Arc<heimdex_store::Collections>,
    /// The models requests may name.
    pub models: Arc<heimdex_embed::Registry>,
    /// The process's embedding queue: search embeds text queries there, ahead of ingest.
    pub embeddings: heimdex_embed::EmbedQueue,
    /// Vector store URL shown in `/readyz` (`None`: the embedded store).
    pub store_url: Option<String>,
}

/// Shared by every handler.
pub struct AppState {
    pub submitter: Submitter,
    pub log: JobLog,
    pub statuses: StatusStore,
    pub documents: heimdex_event_store::DocumentStore,
    /// Uploaded files (the object store `HEIMDEX_FILES`).
    pub files: heimdex_event_store::FileStore,
    /// Reads the live collection of the moment (see [`AppState::model`] for a search's
    /// snapshot).
    pub store: Arc<dyn VectorStore>,
    pub collections: Arc<heimdex_store::Collections>,
    pub models: Arc<heimdex_embed::Registry>,
    pub embeddings: heimdex_embed::EmbedQueue,
    pub nats_url: String,
    pub store_url: Option<String>,
    pub nats_probe: CachedProbe,
    pub store_probe: CachedProbe,
    pub store_probe_enabled: bool,
    /// The index state (`/admin/index`), and the configured collection it starts from.
    pub index: heimdex_event_store::IndexRegistry,
    pub collection: String,
}

impl AppState {
    /// The name of the model requests that name none get: the live collection's default.
    pub fn default_model(&self) -> String {
        self.collections
            .live()
            .models
            .default
            .clone()
            .unwrap_or_else(|| self.models.default_model().to_owned())
    }

    /// The model a request gets (the one it names, else the live collection's default), and
    /// the live collection it was resolved against: one snapshot, so a search embeds its query
    /// with the model of the collection it searches, whatever switch happens meanwhile. A
    /// model that a model change moved to another is not indexed in the live collection:
    /// naming it is a conflict (`model_moved`) until a rollback.
    pub fn model(
        &self,
        named: Option<&str>,
    ) -> Result<(Arc<dyn heimdex_embed::Embedder>, heimdex_store::Named), ApiError> {
        let live = self.collections.live();
        if let Some(to) = named.and_then(|name| live.models.moved.get(name)) {
            return Err(ApiError::Conflict {
                code: "model_moved",
                detail: format!(
                    "model `{}` is no longer indexed: the index moved its texts to `{to}` \
                     (name `{to}`, or none, instead)",
                    named.unwrap_or_default()
                ),
            });
        }
        let embedder = self.models.get(named.or(live.models.default.as_deref()))?;
        Ok((embedder, live))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    #[error(transparent)]
    Connections(#[from] connections::LimitError),
}

pub struct Api {
    acceptor: TimeoutAcceptor<ConnectionLimit<TcpAcceptor>>,
    addr: SocketAddr,
    app: poem::endpoint::BoxEndpoint<'static>,
    admission: Arc<Admission>,
    log: JobLog,
}

pub async fn build(config: &ApiConfig, deps: ApiDeps) -> Result<Api, BuildError> {
    let verifier = Arc::new(Verifier::new(&config.jwt)?);
    let store_url = Some(
        deps.store_url
            .as_deref()
            .map(strip_credentials)
            .unwrap_or_else(|| "embedded".to_owned()),
    );
    let admission = Arc::new(Admission::new(&config.overload));
    let events = deps.events;
    let state = Arc::new(AppState {
        submitter: Submitter::new(events.log.clone(), admission.clone()),
        log: events.log.clone(),
        statuses: events.statuses.clone(),
        documents: events.documents.clone(),
        files: events.files.clone(),
        store: deps.collections.reader(),
        collection: deps.collections.configured().to_owned(),
        collections: deps.collections,
        models: deps.models,
        embeddings: deps.embeddings,
        nats_url: strip_credentials(&events.url),
        store_url,
        nats_probe: CachedProbe::new(config.probes.clone()),
        store_probe: CachedProbe::new(config.probes.clone()),
        store_probe_enabled: config.probe_store,
        index: events.index.clone(),
    });
    let admin = Arc::new(AdminKey::new(config.admin_token.clone()));
    let app = routes(state, verifier, admin);

    let max_connections =
        connections::effective_bound(config.max_connections, connections::raise_fd_limit())?;
    let addr = config.addr;
    let acceptor = TcpListener::bind(addr.to_string())
        .into_acceptor()
        .await
        .map_err(|source| BuildError::Bind { addr, source })?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|local| local.as_socket_addr().copied())
        .unwrap_or(addr);
    Ok(Api {
        acceptor: TimeoutAcceptor::new(
            ConnectionLimit::new(acceptor, max_connections),
            config.header_timeout,
            config.read_timeout,
        ),
        addr,
        app,
        admission,
        log: events.log,
    })
}

/// The route tree: the OpenAPI operations, the spec, Swagger UI, and the error mapping.
pub fn routes(
    state: Arc<AppState>,
    verifier: Arc<Verifier>,
    admin: Arc<AdminKey>,
) -> poem::endpoint::BoxEndpoint<'static> {
    let api = OpenApiService::new(
        (
            IngestApi {
                state: state.clone(),
            },
            SearchApi {
                state: state.clone(),
            },
            VectorsApi {
                state: state.clone(),
            },
            JobsApi {
                state: state.clone(),
            },
            DocumentsApi {
                state: state.clone(),
            },
            AdminApi {
                state: state.clone(),
            },
            HealthApi { state },
        ),
        "Heimdex",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Event-sourced vector ingestion and tenant-scoped semantic search. Every job is an event \
         stream on NATS JetStream; errors are RFC 9457 problem+json.",
    );
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .at("/metrics", metrics::endpoint())
        .nest("/docs", docs)
        .around(limit_body)
        .data(verifier)
        .data(admin)
        .around(access_log)
        .catch_all_error(problem::catch_all)
        .boxed()
}

/// A span per request (the parent of everything the handler does, so traces start here) and
/// an access log: server errors at ERROR, the rest at DEBUG — an INFO line per request costs
/// more than the request itself at thousands of requests a second.
///
/// The span follows OpenTelemetry's HTTP conventions: a server span named `{method} {route}`
/// once the route is known (the route's template, `/jobs/:param0` as poem-openapi names its
/// parameters, never the raw path, so names stay few), with the route and the status as
/// attributes. The same route labels `heimdex_http_request_duration_seconds`.
async fn access_log<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    use tracing::Instrument as _;
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    heimdex_telemetry::set_parent_from_traceparent(
        &span,
        header("traceparent"),
        header("tracestate"),
    );
    async move {
        let started = std::time::Instant::now();
        let result = next.call(req).await.map(IntoResponse::into_response);
        let (status, route) = match &result {
            Ok(response) => (response.status(), response.data::<PathPattern>()),
            Err(err) => (err.status(), err.data::<PathPattern>()),
        };
        // A request no route matched carries no pattern, or the empty one of the root nest.
        let route = route
            .map(|pattern| &*pattern.0)
            .filter(|route| !route.is_empty())
            .unwrap_or(UNMATCHED_ROUTE);
        let elapsed = started.elapsed().as_secs_f64();
        ::metrics::histogram!(
            "heimdex_http_request_duration_seconds",
            "route" => route.to_owned(),
            "method" => metrics::method_label(&method),
            "status" => status.as_str().to_owned(),
        )
        .record(elapsed);
        let elapsed_ms = elapsed * 1000.0;
        let span = tracing::Span::current();
        span.record("http.route", route);
        span.record("http.response.status_code", status.as_u16());
        heimdex_telemetry::set_span_name(&span, format!("{method} {route}"));
        if status.is_server_error() {
            span.record("otel.status_code", "error");
            tracing::error!(status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request");
        }
        result
    }
    .instrument(span)
    .await
}

/// The route named for a request no route matched (a 404): one name for all of them, so a
/// scan of random paths cannot mint new span names or metric series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Refuses bodies over the path's limit ([`MAX_BODY_BYTES`], or [`MAX_BULK_BODY_BYTES`] on the
/// bulk routes) with 413: at once when `Content-Length` says so, and while reading when a
/// chunked body grows past it. Requests without a body pass untouched.
async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let limit = body_limit(req.uri().path());
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => {
            return Err(poem::Error::from_status(
                poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            ));
        }
        Some(_) => {}
        None => {
            let body = req.take_body().into_bytes_limit(limit).await?;
            req.set_body(body);
        }
    }
    Ok(next.call(req).await?.into_response())
}

impl Api {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then gives in-flight requests up to 10 s.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(
            addr = %self.addr,
            max_connections = self.acceptor.inner().bound(),
            "API listening"
        );
        let maintenance = tokio::spawn(
            self.admission
                .clone()
                .maintain(self.log.stream().clone(), shutdown.clone()),
        );
        let served = Server::new_with_acceptor(self.acceptor)
            .idle_timeout(Duration::from_secs(60))
            .run_with_graceful_shutdown(
                self.app,
                async move { shutdown.cancelled().await },
                Some(Duration::from_secs(10)),
            )
            .await;
        maintenance.abort();
        served
    }
}

/// `nats://user:pass@host:4222` → `nats://host:4222`.
pub fn strip_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strip_credentials() {
        assert_eq!(
            super::strip_credentials("nats://a:b@h:4222"),
            "nats://h:4222"
        );
        assert_eq!(super::strip_credentials("nats://h:4222"), "nats://h:4222");
        assert_eq!(super::strip_credentials("http://k@q:6334"), "http://q:6334");
    }
}

//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer), in the Python
//! service's shape.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::probes::ProbeOutcome;

use crate::AppState;

#[derive(Tags)]
enum Tag {
    /// Liveness and readiness.
    Health,
}

pub struct HealthApi {
    pub state: Arc<AppState>,
}

#[derive(Object, Debug)]
pub struct Health {
    pub status: String,
}

/// One dependency's readiness.
#[derive(Object, Debug, Clone)]
pub struct DependencyStatus {
    /// Whether this deployment uses the dependency's probe.
    pub enabled: bool,
    /// True when the probe was not run (disabled).
    pub skipped: bool,
    /// Probe result; null when skipped.
    pub ok: Option<bool>,
    /// Probe round trip; null when skipped or failed.
    pub latency_ms: Option<f64>,
    /// Where the dependency is (credentials stripped).
    #[oai(skip_serializing_if_is_none)]
    pub url: Option<String>,
    /// Why the probe failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

/// The default embedding model: loaded, or why not.
#[derive(Object, Debug, Clone)]
pub struct ModelStatusView {
    pub enabled: bool,
    pub skipped: bool,
    pub ok: Option<bool>,
    /// Always null: the model is loaded at start-up, not probed.
    pub latency_ms: Option<f64>,
    /// Model name (`minilm-l6-v2`).
    pub name: String,
    /// Model version, when loaded.
    #[oai(skip_serializing_if_is_none)]
    pub model_ver: Option<String>,
    /// Why the model is not available (e.g. its weights are not installed).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Object, Debug)]
pub struct Dependencies {
    pub nats: DependencyStatus,
    pub qdrant: DependencyStatus,
    pub model: ModelStatusView,
}

#[derive(Object, Debug)]
pub struct Readiness {
    pub service: String,
    pub ready: bool,
    pub deps: Dependencies,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    #[oai(status = 200)]
    Ok(Json<Health>),
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every enabled dependency answered.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one enabled dependency did not answer.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "Tag::Health")]
impl HealthApi {
    /// Liveness
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> HealthResponse {
        HealthResponse::Ok(Json(Health {
            status: "ok".to_owned(),
        }))
    }

    /// Readiness
    ///
    /// Probes NATS (JetStream answers for the job stream) and the vector store, and reports
    /// whether the default embedding model is loaded (and if not, why). Probe results are
    /// cached (`PROBE_CACHE_SEC` on success, three times that on failure).
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let state = &self.state;
        let nats_probe = state
            .nats_probe
            .check(|| async { state.log.stream().clone().info().await.map(|_| ()) });
        let store_probe = async {
            if state.store_probe_enabled {
                Some(state.store_probe.check(|| state.store.probe()).await)
            } else {
                None
            }
        };
        let (nats, store) = tokio::join!(nats_probe, store_probe);
        let nats = status(Some(nats), Some(state.nats_url.clone()));
        let qdrant = status(store, state.store_url.clone());
        // The default model of the live collection (a model change moves it).
        let name = state.default_model();
        let model = match state.models.get(Some(&name)) {
            Ok(embedder) => ModelStatusView {
                enabled: true,
                skipped: false,
                ok: Some(true),
                latency_ms: None,
                name,
                model_ver: Some(embedder.model_ver().to_owned()),
                error: None,
            },
            Err(err) => ModelStatusView {
                enabled: true,
                skipped: false,
                ok: Some(false),
                latency_ms: None,
                name,
                model_ver: None,
                error: Some(err.to_string()),
            },
        };
        let ready = nats.ok != Some(false) && qdrant.ok != Some(false) && model.ok != Some(false);
        let body = Readiness {
            service: "api".to_owned(),
            ready,
            deps: Dependencies {
                nats,
                qdrant,
                model,
            },
        };
        if ready {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}

fn status(outcome: Option<ProbeOutcome>, url: Option<String>) -> DependencyStatus {
    match outcome {
        None => DependencyStatus {
            enabled: false,
            skipped: true,
            ok: None,
            latency_ms: None,
            url,
            error: None,
        },
        Some(outcome) => DependencyStatus {
            enabled: true,
            skipped: false,
            ok: Some(outcome.ok),
            latency_ms: outcome.ok.then_some(outcome.latency_ms),
            url,
            error: outcome.error,
        },
    }
}

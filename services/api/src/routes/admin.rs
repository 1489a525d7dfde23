//! `/admin/index`: the operator's view and commands on the vector collections (see
//! `heimdex_domain::index`): rebuild the index from the log, switch reads to the build, roll
//! back, drop the collection kept beside the live one. Guarded by the admin token
//! ([`AdminAuth`]), never a tenant's JWT: these act on every tenant's vectors at once.
//!
//! The commands only change the index state (compare-and-set); the indexer of a worker process
//! does the work, and every process follows the state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use heimdex_domain::index::{
    Build, Comparison, IndexState, IndexStateError, ModelChange, Models, Phase,
};
use heimdex_event_store::index::UpdateError;

use crate::AppState;
use crate::auth::AdminAuth;
use crate::problem::{ApiError, ProblemResponse};
use crate::strict::{Known, StrictString};

#[derive(Tags)]
enum Tag {
    /// Operator commands on the vector index (admin token).
    Admin,
}

pub struct AdminApi {
    pub state: Arc<AppState>,
}

/// The vector collections and what each is for.
#[derive(Object, Debug)]
pub struct IndexView {
    /// The collection every search reads and the workers write.
    pub live: String,
    /// A collection being built from the log, if any.
    #[oai(skip_serializing_if_is_none)]
    pub building: Option<BuildView>,
    /// The collection live before the last switch, kept up to date for a rollback.
    #[oai(skip_serializing_if_is_none)]
    pub previous: Option<String>,
    /// Every job that succeeded up to this log sequence has reached every collection.
    pub followed: u64,
    /// The log's last sequence now.
    pub log_seq: u64,
    /// The process doing the indexer's work, while there is some.
    #[oai(skip_serializing_if_is_none)]
    pub indexer: Option<String>,
    /// The model of writes and searches that name none, in the live collection.
    pub default_model: String,
    /// Models the live collection no longer indexes, and the model that took each over.
    #[oai(skip_serializing_if_is_none)]
    pub moved: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /admin/index/rebuild`: a plain rebuild (`{}`), or a model change.
#[derive(Object, Debug, Default)]
pub struct RebuildRequest {
    /// Change the model: every text sent with a model of `from` is embedded by this one in
    /// the new collection, and it becomes the default model of writes and searches once the
    /// collection is switched to.
    pub model: Option<StrictString>,
    /// The models it takes over (default: the live collection's default model).
    #[oai(validator(max_items = 16))]
    pub from: Option<Vec<StrictString>>,
}

/// A build's model change.
#[derive(Object, Debug)]
pub struct ModelChangeView {
    pub to: String,
    pub from: Vec<String>,
}

/// A build: how far its replay of the log is.
#[derive(Object, Debug)]
pub struct BuildView {
    pub collection: String,
    /// `replaying`, or `built` (then `comparison` is set, and it may be switched to).
    pub phase: String,
    /// The log's last sequence when the build began: the replay covers the jobs that had
    /// succeeded by then.
    pub through: u64,
    /// Resume point: replayed jobs at or before this sequence are written.
    pub applied: u64,
    pub started_at: DateTime<Utc>,
    /// Jobs to replay, replayed so far, and skipped (could not be written again).
    pub jobs: u64,
    pub replayed: u64,
    pub skipped: u64,
    /// Replayed jobs of a moved model that carry no text (`/vectors/mock`): they keep their
    /// own model's vector.
    pub not_reembeddable: u64,
    /// The model change this build makes, if any.
    #[oai(skip_serializing_if_is_none)]
    pub model_change: Option<ModelChangeView>,
    #[oai(skip_serializing_if_is_none)]
    pub progress_at: Option<DateTime<Utc>>,
    /// The last error the replay met; it is retried.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub comparison: Option<ComparisonView>,
}

/// The build against the live collection when its replay ended.
#[derive(Object, Debug)]
pub struct ComparisonView {
    pub live: u64,
    pub built: u64,
    /// Points the live collection has and the build lacks.
    pub missing: u64,
    /// Points the build has and the live collection lacks.
    pub extra: u64,
    pub payload_differs: u64,
    pub vectors_checked: u64,
    pub vectors_differ: u64,
    pub identical: bool,
}

/// What a drop stopped keeping.
#[derive(Object, Debug)]
pub struct Dropped {
    /// The collection that no longer takes writes.
    pub dropped: String,
    pub index: IndexView,
}

#[derive(ApiResponse)]
pub enum IndexResponse {
    #[oai(status = 200)]
    Ok(Json<IndexView>),
}

#[derive(ApiResponse)]
pub enum RebuildResponse {
    /// The build is recorded; a worker's indexer replays the log into it. Follow it with
    /// `GET /admin/index`.
    #[oai(status = 202)]
    Accepted(Json<IndexView>),
}

#[derive(ApiResponse)]
pub enum DropResponse {
    #[oai(status = 200)]
    Ok(Json<Dropped>),
}

impl From<&Comparison> for ComparisonView {
    fn from(c: &Comparison) -> Self {
        Self {
            live: c.live,
            built: c.built,
            missing: c.missing,
            extra: c.extra,
            payload_differs: c.payload_differs,
            vectors_checked: c.vectors_checked,
            vectors_differ: c.vectors_differ,
            identical: c.identical(),
        }
    }
}

impl From<&Build> for BuildView {
    fn from(build: &Build) -> Self {
        let (phase, comparison) = match &build.phase {
            Phase::Replaying => ("replaying", None),
            Phase::Built { comparison } => ("built", Some(comparison.into())),
        };
        Self {
            collection: build.collection.clone(),
            phase: phase.to_owned(),
            through: build.through,
            applied: build.applied,
            started_at: build.started_at,
            jobs: build.progress.jobs,
            replayed: build.progress.replayed,
            skipped: build.progress.skipped,
            not_reembeddable: build.progress.not_reembeddable,
            model_change: build.change.as_ref().map(|c| ModelChangeView {
                to: c.to.clone(),
                from: c.from.clone(),
            }),
            progress_at: build.progress.at,
            error: build.progress.error.clone(),
            comparison,
        }
    }
}

fn view(state: &IndexState, log_seq: u64, configured_model: &str) -> IndexView {
    let Models { default, moved } = state.models_of(&state.live);
    IndexView {
        default_model: default.unwrap_or_else(|| configured_model.to_owned()),
        moved: (!moved.is_empty()).then_some(moved),
        live: state.live.clone(),
        building: state.building.as_ref().map(BuildView::from),
        previous: state.previous.clone(),
        followed: state.followed,
        log_seq,
        indexer: state
            .indexer
            .as_ref()
            .filter(|_| state.needs_indexer())
            .map(|lease| lease.holder.clone()),
    }
}

impl From<UpdateError<IndexStateError>> for ApiError {
    fn from(err: UpdateError<IndexStateError>) -> Self {
        match err {
            UpdateError::Refused(refused) => ApiError::Conflict {
                code: "index_state",
                detail: refused.to_string(),
            },
            UpdateError::Store(err) => ApiError::nats(err),
        }
    }
}

impl AdminApi {
    async fn change(
        &self,
        change: impl FnMut(&mut IndexState) -> Result<(), IndexStateError>,
    ) -> Result<IndexView, ApiError> {
        let (stored, ()) = self
            .state
            .index
            .update(&self.state.collection, change)
            .await?;
        Ok(view(
            &stored.state,
            self.log_seq().await?,
            self.state.models.default_model(),
        ))
    }

    async fn log_seq(&self) -> Result<u64, ApiError> {
        Ok(self.state.log.last_seq().await?)
    }
}

#[OpenApi(tag = "Tag::Admin")]
impl AdminApi {
    /// The vector collections
    ///
    /// Which collection serves, which is being built from the log (and how far), which is kept
    /// for a rollback, and how far the indexer has followed the log.
    #[oai(path = "/admin/index", method = "get")]
    async fn index(&self, _admin: AdminAuth) -> Result<IndexResponse, ProblemResponse> {
        let stored = self
            .state
            .index
            .get(&self.state.collection)
            .await
            .map_err(ApiError::nats)?;
        Ok(IndexResponse::Ok(Json(view(
            &stored.state,
            self.log_seq().await?,
            self.state.models.default_model(),
        ))))
    }

    /// Rebuild the index from the log
    ///
    /// Begins a new collection, `<collection>-<n>`, which a worker's indexer fills by replaying
    /// every job that has succeeded so far (re-embedding texts with the job's model), then
    /// compares with the live collection; jobs that succeed meanwhile reach it as well. Reads
    /// stay on the live collection until `POST /admin/index/switch`. 409 while another build is
    /// under way or a previous collection is kept.
    ///
    /// With `model`, the build changes the model: the texts of the jobs sent with a model of
    /// `from` (default: the live default model) are embedded by `model`, under its point ids,
    /// and `model` becomes the default of writes and searches at the switch; a rollback moves
    /// both back. Jobs without text (`/vectors/mock`) keep their vectors and are counted as
    /// `not_reembeddable`.
    #[oai(path = "/admin/index/rebuild", method = "post")]
    async fn rebuild(
        &self,
        _admin: AdminAuth,
        body: Json<Known<RebuildRequest>>,
    ) -> Result<RebuildResponse, ProblemResponse> {
        let RebuildRequest { model, from } = body.0.0;
        let model = model.map(|m| m.0);
        let from = from.map(|from| from.into_iter().map(|m| m.0).collect::<Vec<_>>());
        let change = match (model, from) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ApiError::Validation(
                    "`from` names the models a model change takes over: give `model` too".into(),
                )
                .into());
            }
            (Some(to), from) => {
                // The target must be served here; the models it takes over must be known.
                self.state.models.get(Some(&to))?;
                let from = from.unwrap_or_else(|| vec![self.state.default_model()]);
                for model in &from {
                    match self.state.models.get(Some(model)) {
                        Ok(_) | Err(heimdex_embed::ModelError::Unavailable { .. }) => {}
                        Err(err) => return Err(ApiError::from(err).into()),
                    }
                }
                Some(ModelChange { to, from })
            }
        };
        let through = self.log_seq().await?;
        let base = self.state.collection.clone();
        let view = self
            .change(|state| {
                state
                    .begin(&base, through, Utc::now(), change.clone())
                    .map(|_| ())
            })
            .await?;
        Ok(RebuildResponse::Accepted(Json(view)))
    }

    /// Switch reads to the build
    ///
    /// Every process moves its searches and its workers' writes to the built collection in
    /// one step; the collection left is kept up to date, for a rollback. 409 unless a build
    /// is built.
    #[oai(path = "/admin/index/switch", method = "post")]
    async fn switch(&self, _admin: AdminAuth) -> Result<IndexResponse, ProblemResponse> {
        Ok(IndexResponse::Ok(Json(
            self.change(IndexState::switch).await?,
        )))
    }

    /// Roll back to the previous collection
    ///
    /// Moves reads and writes back to the collection live before the last switch, in one
    /// step; the other is kept up to date in turn. 409 when none is kept.
    #[oai(path = "/admin/index/rollback", method = "post")]
    async fn rollback(&self, _admin: AdminAuth) -> Result<IndexResponse, ProblemResponse> {
        Ok(IndexResponse::Ok(Json(
            self.change(IndexState::rollback).await?,
        )))
    }

    /// Drop the collection that does not serve
    ///
    /// Stops a build (if there is one), or else stops keeping the previous collection: it
    /// takes no more writes and can no longer be switched or rolled back to. 409 when there
    /// is neither.
    #[oai(path = "/admin/index/drop", method = "post")]
    async fn drop_collection(&self, _admin: AdminAuth) -> Result<DropResponse, ProblemResponse> {
        let mut dropped = String::new();
        let index = self
            .change(|state| {
                dropped = state.drop()?;
                Ok(())
            })
            .await?;
        Ok(DropResponse::Ok(Json(Dropped { dropped, index })))
    }
}

//! `/jobs`: job status (the projection) and history (the stream).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use heimdex_core::events::{self, EventKind, JobEvent};
use heimdex_core::jetstream::status_key;
use heimdex_core::jobs::{self, JobStatus};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::problem::{ApiError, ProblemResponse};

/// At most this many events are returned by `GET /jobs/{id}/events`.
const MAX_EVENTS: usize = 1_000;

#[derive(Tags)]
enum Tag {
    /// Job status and history.
    Jobs,
}

pub struct JobsApi {
    pub state: Arc<AppState>,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// What a successful job produced.
#[derive(Object, Debug)]
pub struct JobResultView {
    pub collection: String,
    pub point_ids: Vec<Uuid>,
    pub vector_size: u64,
    /// Embedding jobs: the model and version that made the vectors.
    #[oai(skip_serializing_if_is_none)]
    pub model: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub model_ver: Option<String>,
    /// Delete jobs: how many points were removed (0 when there was nothing to delete).
    #[oai(skip_serializing_if_is_none)]
    pub deleted: Option<u64>,
}

/// Why a job failed.
#[derive(Object, Debug)]
pub struct JobErrorView {
    /// `invalid_input`, `vector_store`, `max_deliveries` or `internal`.
    pub code: String,
    pub message: String,
}

/// A job's status, folded from its events.
#[derive(Object, Debug)]
pub struct JobView {
    pub job_id: Uuid,
    pub org_id: Uuid,
    pub user_id: String,
    pub job_type: String,
    pub status: JobState,
    /// The last event applied: `requested`, `started`, `succeeded` or `failed`.
    pub stage: String,
    pub attempts: u32,
    pub params: serde_json::Value,
    pub result: Option<JobResultView>,
    pub error: Option<JobErrorView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Stream sequence of the last event applied.
    pub last_event_seq: u64,
}

impl From<JobStatus> for JobView {
    fn from(s: JobStatus) -> Self {
        Self {
            job_id: s.job_id,
            org_id: s.org_id,
            user_id: s.user_id,
            job_type: s.job_type,
            status: match s.status {
                jobs::Status::Queued => JobState::Queued,
                jobs::Status::Running => JobState::Running,
                jobs::Status::Succeeded => JobState::Succeeded,
                jobs::Status::Failed => JobState::Failed,
            },
            stage: s.stage,
            attempts: s.attempts,
            params: s.params,
            result: s.result.map(|r| JobResultView {
                collection: r.collection,
                point_ids: r.point_ids,
                vector_size: r.vector_size as u64,
                model: r.model,
                model_ver: r.model_ver,
                deleted: r.deleted,
            }),
            error: s.error.map(|e| JobErrorView {
                code: serde_json::to_value(e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                message: e.message,
            }),
            created_at: s.created_at,
            updated_at: s.updated_at,
            last_event_seq: s.last_event_seq,
        }
    }
}

/// One stored event of a job.
#[derive(Object, Debug)]
pub struct StoredEvent {
    /// Stream sequence.
    pub seq: u64,
    pub subject: String,
    /// The CloudEvents document as stored.
    pub event: serde_json::Value,
}

#[derive(Object, Debug)]
pub struct JobEvents {
    pub job_id: Uuid,
    pub events: Vec<StoredEvent>,
}

#[derive(ApiResponse)]
pub enum JobResponse {
    #[oai(status = 200)]
    Ok(Json<JobView>),
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    #[oai(status = 200)]
    Ok(Json<JobEvents>),
}

#[OpenApi(tag = "Tag::Jobs")]
impl JobsApi {
    /// Get a job's status
    ///
    /// Reads the status projection. A job accepted a moment ago whose projection has not caught
    /// up yet is answered from its `requested` event (QUEUED), so a client never gets 404 for a
    /// job it was just given. Jobs of other organizations are reported as not found.
    #[oai(path = "/jobs/:job_id", method = "get")]
    async fn get_job(
        &self,
        auth: BearerAuth,
        job_id: Path<Uuid>,
    ) -> Result<JobResponse, ProblemResponse> {
        let org_id = auth.0.org_id;
        let job_id = job_id.0;
        let status = self.state.job_status(org_id, job_id).await?;
        Ok(JobResponse::Ok(Json(status.into())))
    }

    /// Get a job's events
    ///
    /// The job's history from the event stream, oldest first, as stored CloudEvents.
    #[oai(path = "/jobs/:job_id/events", method = "get")]
    async fn get_job_events(
        &self,
        auth: BearerAuth,
        job_id: Path<Uuid>,
    ) -> Result<EventsResponse, ProblemResponse> {
        let events = self.state.job_events(auth.0.org_id, job_id.0).await?;
        if events.is_empty() {
            return Err(ApiError::NotFound(format!("job {} not found", job_id.0)).into());
        }
        Ok(EventsResponse::Ok(Json(JobEvents {
            job_id: job_id.0,
            events,
        })))
    }
}

impl AppState {
    /// The job's status: KV first, then the `requested` event itself.
    pub async fn job_status(&self, org_id: Uuid, job_id: Uuid) -> Result<JobStatus, ApiError> {
        let key = status_key(org_id, job_id);
        match self.status.get(key).await {
            Ok(Some(bytes)) => {
                return serde_json::from_slice(&bytes)
                    .map_err(|err| ApiError::Internal(format!("undecodable status: {err}")));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, "status read failed");
                return Err(ApiError::nats_unavailable());
            }
        }
        let message = self
            .requested_event(org_id, job_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id} not found")))?;
        let event = JobEvent::decode(&message.payload)
            .map_err(|err| ApiError::Internal(format!("undecodable event: {err}")))?;
        Ok(JobStatus::from_event(&event, message.sequence))
    }

    /// The job's `requested` event, read directly from the stream (`None`: no such job).
    async fn requested_event(
        &self,
        org_id: Uuid,
        job_id: Uuid,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ApiError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let subject = events::subject(org_id, job_id, EventKind::Requested);
        match self.jobs_stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(err) => match err.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                DirectGetErrorKind::InvalidSubject
                | DirectGetErrorKind::TimedOut
                | DirectGetErrorKind::Request
                | DirectGetErrorKind::ErrorResponse(..)
                | DirectGetErrorKind::Other => {
                    tracing::warn!(%err, "direct get failed");
                    Err(ApiError::nats_unavailable())
                }
            },
        }
    }

    /// Reads `heimdex.jobs.<org>.<job>.*` with a short-lived ordered consumer.
    async fn job_events(&self, org_id: Uuid, job_id: Uuid) -> Result<Vec<StoredEvent>, ApiError> {
        let unavailable = |err: &dyn std::fmt::Display| {
            tracing::warn!(%err, "event history read failed");
            ApiError::nats_unavailable()
        };
        // Unknown (or foreign) jobs are answered at once, without a consumer that would wait.
        if self.requested_event(org_id, job_id).await?.is_none() {
            return Ok(Vec::new());
        }
        let consumer = self
            .jobs_stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: events::job_subjects(org_id, job_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable(&err))?;
        let mut messages = consumer.messages().await.map_err(|err| unavailable(&err))?;
        let mut events = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(err))) => return Err(unavailable(&err)),
                Ok(None) | Err(_) => break,
            };
            let info = message.info().map_err(|err| unavailable(&err))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let event = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            });
            events.push(StoredEvent {
                seq,
                subject: message.subject.to_string(),
                event,
            });
            if pending == 0 || events.len() >= MAX_EVENTS {
                break;
            }
        }
        Ok(events)
    }
}

//! `/jobs`: job status (the projection), listing and dead letters (`GET /jobs?status=FAILED`),
//! history (the stream), and redrive (`POST /jobs/{id}/retry`).

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use async_nats::jetstream::consumer;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::auth::Principal;
use heimdex_domain::events::{self, EventData, EventKind, JobEvent};
use heimdex_domain::jobs::{self, JobStatus};
use heimdex_event_store::jetstream::{STATUS_BUCKET, StreamRead, status_key};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::problem::{ApiError, ProblemResponse};

/// At most this many events are returned by `GET /jobs/{id}/events`.
const MAX_EVENTS: usize = 1_000;
/// Jobs per page of `GET /jobs` when `limit` is not given, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1_000;
/// A listing whose next status takes longer than this to arrive is abandoned with 503 rather
/// than answered incomplete.
const LIST_STALL: Duration = Duration::from_secs(5);
/// How long reading a job's history waits for its next event.
const EVENTS_STALL: Duration = Duration::from_secs(2);
/// Cursors this server issues start with this version tag (inside the base64).
const CURSOR_V1: &str = "v1:";

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

impl From<JobState> for jobs::Status {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => jobs::Status::Queued,
            JobState::Running => jobs::Status::Running,
            JobState::Succeeded => jobs::Status::Succeeded,
            JobState::Failed => jobs::Status::Failed,
        }
    }
}

impl From<jobs::Status> for JobState {
    fn from(status: jobs::Status) -> Self {
        match status {
            jobs::Status::Queued => JobState::Queued,
            jobs::Status::Running => JobState::Running,
            jobs::Status::Succeeded => JobState::Succeeded,
            jobs::Status::Failed => JobState::Failed,
        }
    }
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

/// How an earlier round of a retried job failed.
#[derive(Object, Debug)]
pub struct PastFailureView {
    /// 0 for the first run, n for the n-th retry.
    pub round: u32,
    /// Deliveries in that round.
    pub attempts: u32,
    pub error: JobErrorView,
    pub failed_at: DateTime<Utc>,
}

/// A job's status, folded from its events.
#[derive(Object, Debug)]
pub struct JobView {
    pub job_id: Uuid,
    pub org_id: Uuid,
    pub user_id: String,
    pub job_type: String,
    pub status: JobState,
    /// The last stage reached in the current round: `requested`, `retried`, `started`,
    /// `succeeded` or `failed`.
    pub stage: String,
    /// Deliveries in the current round.
    pub attempts: u32,
    /// How many times the job was retried (`POST /jobs/{id}/retry`): the current round.
    pub retries: u32,
    /// The failures of earlier rounds, oldest first (the last 10).
    pub failures: Vec<PastFailureView>,
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
            status: s.status.into(),
            stage: s.stage,
            attempts: s.attempts,
            retries: s.retries,
            failures: s
                .failures
                .into_iter()
                .map(|f| PastFailureView {
                    round: f.round,
                    attempts: f.attempts,
                    error: f.error.into(),
                    failed_at: f.failed_at,
                })
                .collect(),
            params: s.params,
            result: s.result.map(|r| JobResultView {
                collection: r.collection,
                point_ids: r.point_ids,
                vector_size: r.vector_size as u64,
                model: r.model,
                model_ver: r.model_ver,
                deleted: r.deleted,
            }),
            error: s.error.map(JobErrorView::from),
            created_at: s.created_at,
            updated_at: s.updated_at,
            last_event_seq: s.last_event_seq,
        }
    }
}

impl From<jobs::JobError> for JobErrorView {
    fn from(e: jobs::JobError) -> Self {
        Self {
            code: serde_json::to_value(e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: e.message,
        }
    }
}

/// One page of jobs.
#[derive(Object, Debug)]
pub struct JobPage {
    /// Ordered by `job_id`.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// A retry is recorded: the job runs again as round `retries`.
#[derive(Object, Debug, Clone, PartialEq, Eq)]
pub struct RetryAccepted {
    pub job_id: Uuid,
    /// The round the retry started (1 for the first retry): the job's `retries` once projected.
    pub retries: u32,
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

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<JobPage>),
}

#[derive(ApiResponse)]
pub enum RetryResponse {
    /// The retry is recorded (by this request or an earlier one for the same failure).
    #[oai(status = 202)]
    Accepted(Json<RetryAccepted>),
}

#[OpenApi(tag = "Tag::Jobs")]
impl JobsApi {
    /// List jobs (dead letters with `status=FAILED`)
    ///
    /// The caller's organization's jobs, from the status projection, ordered by `job_id` and
    /// paginated with an opaque cursor. `status=FAILED` is the dead-letter view: jobs that ended
    /// without success and can be redriven with `POST /jobs/{job_id}/retry`. Each page reads
    /// every status of the organization once (cost grows with its number of jobs, not with
    /// `limit`); a job whose status changes during a walk may appear on no page or be counted
    /// under its new status. An unknown `status`, a `limit` outside 1..=1000 or a cursor this
    /// server did not issue get 400.
    #[oai(path = "/jobs", method = "get")]
    async fn list_jobs(
        &self,
        auth: BearerAuth,
        /// Only jobs in this status; every status when absent.
        status: Query<Option<JobState>>,
        /// Jobs per page, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page; absent for the first page.
        cursor: Query<Option<String>>,
    ) -> Result<ListResponse, ProblemResponse> {
        let after = cursor.0.as_deref().map(decode_cursor).transpose()?;
        let limit = limit
            .0
            .unwrap_or(DEFAULT_LIST_LIMIT)
            .clamp(1, MAX_LIST_LIMIT) as usize;
        let (statuses, more) = self
            .state
            .list_jobs(auth.0.org_id, status.0.map(Into::into), limit, after)
            .await?;
        let next_cursor = match (more, statuses.last()) {
            (true, Some(last)) => Some(encode_cursor(last.job_id)),
            (true, None) | (false, _) => None,
        };
        Ok(ListResponse::Ok(Json(JobPage {
            jobs: statuses.into_iter().map(JobView::from).collect(),
            next_cursor,
        })))
    }

    /// Retry a failed job (redrive)
    ///
    /// Runs a FAILED job again, as a new round: records a `heimdex.job.retried.v1` event, after
    /// which the job is QUEUED with `retries` + 1 and its earlier failure kept in `failures`.
    /// Idempotent: concurrent or repeated retries of the same failure record one event and all
    /// get the same 202 body. A job that is QUEUED, RUNNING or SUCCEEDED gets 409
    /// (`job_not_failed`); a job of another organization, 404.
    #[oai(path = "/jobs/:job_id/retry", method = "post")]
    async fn retry_job(
        &self,
        auth: BearerAuth,
        job_id: Path<Uuid>,
    ) -> Result<RetryResponse, ProblemResponse> {
        let retries = self.state.retry_job(&auth.0, job_id.0).await?;
        Ok(RetryResponse::Accepted(Json(RetryAccepted {
            job_id: job_id.0,
            retries,
        })))
    }

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

fn encode_cursor(job_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_V1}{job_id}"))
}

/// The job id a cursor points after.
fn decode_cursor(cursor: &str) -> Result<Uuid, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.strip_prefix(CURSOR_V1)
                .and_then(|id| Uuid::parse_str(id).ok())
        })
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_cursor",
            detail: "cursor is not one this server issued: pass `next_cursor` from the previous \
                     page as it is"
                .to_owned(),
        })
}

impl AppState {
    /// Up to `limit` of the org's jobs (in `status`, when given) with ids after `after`, in
    /// `job_id` order, and whether more follow. Reads the last value of every key under
    /// `<org_id>.` with a short-lived ordered consumer on the bucket's stream, keeping only the
    /// `limit + 1` smallest matching ids in memory.
    pub async fn list_jobs(
        &self,
        org_id: Uuid,
        status: Option<jobs::Status>,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<(Vec<JobStatus>, bool), ApiError> {
        let unavailable = |err: &dyn std::fmt::Display| {
            tracing::warn!(%err, "job listing failed");
            ApiError::nats_unavailable()
        };
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{STATUS_BUCKET}"))
            .await
            .map_err(|err| unavailable(&err))?;
        // Keys are `<org_id>.<job_id>`: one tenant's keys, and no other's.
        let mut read = StreamRead::open(
            &stream,
            format!("$KV.{STATUS_BUCKET}.{org_id}.*"),
            consumer::DeliverPolicy::LastPerSubject,
            LIST_STALL,
        )
        .await
        .map_err(|err| unavailable(&err))?;
        let mut page: BTreeMap<Uuid, JobStatus> = BTreeMap::new();
        while let Some(message) = read.next().await.map_err(|err| unavailable(&err))? {
            if let Some(job) = listed(&message, org_id)
                && status.is_none_or(|wanted| job.status == wanted)
                && after.is_none_or(|after| job.job_id > after)
            {
                page.insert(job.job_id, job);
                if page.len() > limit + 1 {
                    page.pop_last();
                }
            }
        }
        let more = page.len() > limit;
        Ok((page.into_values().take(limit).collect(), more))
    }

    /// Records a retry of a FAILED job and returns its round. Idempotent per failure: while the
    /// retry of the current failure is recorded but not yet run to its end, every request gets
    /// that retry's round, and nothing new is stored.
    pub async fn retry_job(&self, principal: &Principal, job_id: Uuid) -> Result<u32, ApiError> {
        let org_id = principal.org_id;
        let not_found = || ApiError::NotFound(format!("job {job_id} not found"));
        let requested = self
            .requested_event(org_id, job_id)
            .await?
            .ok_or_else(not_found)?;
        let requested_event = JobEvent::decode(&requested.payload)
            .map_err(|err| ApiError::Internal(format!("undecodable event: {err}")))?;
        let EventData::Requested(requested_data) = &requested_event.data else {
            return Err(ApiError::Internal(
                "`requested` subject holds another event".into(),
            ));
        };
        let status = self.job_status(org_id, job_id).await?;
        let (last_retried_seq, last_round) = self.last_retry(org_id, job_id).await?;
        // Recorded, not projected yet.
        if last_round > status.retries {
            return Ok(last_round);
        }
        // Recorded and under way.
        if status.retries > 0 && !status.status.is_terminal() {
            return Ok(status.retries);
        }
        if status.status != jobs::Status::Failed {
            let state = serde_json::to_value(status.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(ApiError::Conflict {
                code: "job_not_failed",
                detail: format!("job {job_id} is {state}; only FAILED jobs can be retried"),
            });
        }
        let round = status.retries + 1;
        self.submitter
            .retry(
                principal,
                job_id,
                round,
                requested_data.spec.clone(),
                last_retried_seq,
            )
            .await?;
        Ok(round)
    }

    /// The stream sequence and round of the job's last `retried` event; `(0, 0)` if none.
    async fn last_retry(&self, org_id: Uuid, job_id: Uuid) -> Result<(u64, u32), ApiError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let subject = events::subject(org_id, job_id, EventKind::Retried);
        match self.jobs_stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let event = JobEvent::decode(&message.payload)
                    .map_err(|err| ApiError::Internal(format!("undecodable event: {err}")))?;
                Ok((message.sequence, event.data.round()))
            }
            Err(err) => match err.kind() {
                DirectGetErrorKind::NotFound => Ok((0, 0)),
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
        let mut read = StreamRead::open(
            &self.jobs_stream,
            events::job_subjects(org_id, job_id),
            consumer::DeliverPolicy::All,
            EVENTS_STALL,
        )
        .await
        .map_err(|err| unavailable(&err))?;
        let mut events = Vec::new();
        while let Some(message) = read.next().await.map_err(|err| unavailable(&err))? {
            let seq = message
                .info()
                .map_err(|err| unavailable(&err))?
                .stream_sequence;
            let event = serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            });
            events.push(StoredEvent {
                seq,
                subject: message.subject.to_string(),
                event,
            });
            if events.len() >= MAX_EVENTS {
                break;
            }
        }
        Ok(events)
    }
}

/// A status of `org_id` from a message of the bucket's stream; `None` for deletes, purges and
/// values that do not decode (logged) or name another org.
fn listed(message: &async_nats::jetstream::Message, org_id: Uuid) -> Option<JobStatus> {
    let operation = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get("KV-Operation"))
        .map(|value| value.as_str().to_owned());
    if operation.is_some_and(|op| op != "PUT") {
        return None;
    }
    match serde_json::from_slice::<JobStatus>(&message.payload) {
        Ok(status) if status.org_id == org_id => Some(status),
        Ok(_) => None,
        Err(err) => {
            tracing::error!(%err, subject = %message.subject, "undecodable status skipped in listing");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let id = Uuid::from_u128(0xfeed);
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert!(!encode_cursor(id).contains(&id.to_string()), "opaque");
        for bad in [
            "",
            "!!",
            "djE6bm90LWEtdXVpZA",
            &id.to_string(),
            "eyJhIjoxfQ",
        ] {
            assert!(
                matches!(
                    decode_cursor(bad),
                    Err(ApiError::BadRequest {
                        code: "invalid_cursor",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }
}

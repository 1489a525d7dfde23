//! `/jobs`: job status (the projection), listing and dead letters (`GET /jobs?status=FAILED`),
//! history (the stream), and redrive (`POST /jobs/{id}/retry`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use heimdex_domain::events::{EventData, EventKind};
use heimdex_domain::jobs::{self, JobStatus};

use crate::auth::Principal;

use crate::AppState;
use crate::auth::BearerAuth;
use crate::problem::{ApiError, ProblemResponse};

/// At most this many events are returned by `GET /jobs/{id}/events`.
const MAX_EVENTS: usize = 1_000;
/// Jobs per page of `GET /jobs` when `limit` is not given, and the most it may ask for.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1_000;
/// How long reading a job's history waits for the log's next reply.
const EVENTS_STALL: Duration = Duration::from_secs(2);
/// Cursors this server issues start with this version tag (inside the base64). `v1` cursors
/// (a job id) came from the listing in `job_id` order, `v2` cursors from the status bucket's
/// and the first listing index's sequences; both are refused since the listing changed.
const CURSOR_V3: &str = "v3:";

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
    /// Delete and document jobs: how many points were removed (0 when there was nothing to
    /// delete); for a document, its stale chunks.
    #[oai(skip_serializing_if_is_none)]
    pub deleted: Option<u64>,
    /// Document jobs: chunks embedded and written (new or changed).
    #[oai(skip_serializing_if_is_none)]
    pub written: Option<u64>,
    /// Document jobs: chunks left untouched (the same text at the same index and offsets).
    #[oai(skip_serializing_if_is_none)]
    pub kept: Option<u64>,
    /// `true` when a later delete (or, for a document, a later version) of the same target
    /// comes after the job in the log: in stream order its write is undone, so it wrote
    /// nothing (or what it wrote was removed).
    #[oai(skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
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
                written: r.written,
                kept: r.kept,
                superseded: r.superseded,
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
    /// Without `status`: in the order of each job's last change, oldest first. With `status`:
    /// in the order jobs entered that status.
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
    /// The caller's organization's jobs, from the status projection, paginated with an opaque
    /// cursor. Without `status`, jobs come in the order in which they entered their current
    /// status, oldest first: a job whose status changes during a walk is listed again, with its
    /// new status, on a later page, and none is missed. With `status`, jobs come in the order they entered that status, and
    /// a job that leaves it during a walk is not listed after. `status=FAILED` is the
    /// dead-letter view: jobs that ended without success and can be redriven with
    /// `POST /jobs/{job_id}/retry`. A page costs what it holds, however many jobs the
    /// organization has. A page may hold fewer than `limit` jobs (those that changed status
    /// while it was read are left out, to be listed later) and still have a `next_cursor`. An
    /// unknown `status`, a `limit` outside 1..=1000, or a cursor this server did not issue for
    /// this listing get 400.
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
        let status: Option<jobs::Status> = status.0.map(Into::into);
        let from = cursor
            .0
            .as_deref()
            .map(|cursor| decode_cursor(cursor, status))
            .transpose()?
            .unwrap_or(1);
        let limit = limit
            .0
            .unwrap_or(DEFAULT_LIST_LIMIT)
            .clamp(1, MAX_LIST_LIMIT) as usize;
        let page = self
            .state
            .statuses
            .list(auth.0.org_id, status, limit, from)
            .await
            .map_err(ApiError::from)?;
        Ok(ListResponse::Ok(Json(JobPage {
            jobs: page.jobs.into_iter().map(JobView::from).collect(),
            next_cursor: page.next.map(|from| encode_cursor(status, from)),
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

/// `v3:<listing>:<sequence>` in URL-safe base64: where the next page of this listing starts.
fn encode_cursor(status: Option<jobs::Status>, from: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_V3}{}:{from}", listing(status)))
}

fn listing(status: Option<jobs::Status>) -> &'static str {
    match status {
        None => "all",
        Some(jobs::Status::Queued) => "QUEUED",
        Some(jobs::Status::Running) => "RUNNING",
        Some(jobs::Status::Succeeded) => "SUCCEEDED",
        Some(jobs::Status::Failed) => "FAILED",
    }
}

/// Where the page a cursor names starts; the cursor must come from the same listing.
fn decode_cursor(cursor: &str, status: Option<jobs::Status>) -> Result<u64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let rest = text.strip_prefix(CURSOR_V3)?;
            let (kind, from) = rest.split_once(':')?;
            (kind == listing(status)).then_some(())?;
            from.parse::<u64>().ok().filter(|&from| from > 0)
        })
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_cursor",
            detail: "cursor is not one this server issued for this listing: pass `next_cursor` \
                     from the previous page as it is, with the same `status`"
                .to_owned(),
        })
}

impl AppState {
    /// Records a retry of a FAILED job and returns its round. Idempotent per failure: while the
    /// retry of the current failure is recorded but not yet run to its end, every request gets
    /// that retry's round, and nothing new is stored.
    pub async fn retry_job(&self, principal: &Principal, job_id: Uuid) -> Result<u32, ApiError> {
        let org_id = principal.org_id;
        let requested = self
            .log
            .last(org_id, job_id, EventKind::Requested)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id} not found")))?;
        let EventData::Requested(requested) = requested.event.data else {
            return Err(ApiError::internal(format!(
                "the `requested` subject of job {job_id} holds another event"
            )));
        };
        let status = self.job_status(org_id, job_id).await?;
        let (last_retried_seq, last_round) =
            match self.log.last(org_id, job_id, EventKind::Retried).await? {
                Some(retried) => (retried.seq, retried.event.data.round()),
                None => (0, 0),
            };
        // Recorded, not projected yet.
        if last_round > status.retries {
            return Ok(last_round);
        }
        // Recorded and under way.
        if status.retries > 0 && !status.status.is_terminal() {
            return Ok(status.retries);
        }
        if status.status != jobs::Status::Failed {
            return Err(ApiError::Conflict {
                code: "job_not_failed",
                detail: format!(
                    "job {job_id} is {}; only FAILED jobs can be retried",
                    listing(Some(status.status))
                ),
            });
        }
        let round = status.retries + 1;
        self.submitter
            .retry(principal, job_id, round, requested.spec, last_retried_seq)
            .await?;
        Ok(round)
    }

    /// The job's status: the projection first, then the `requested` event itself (QUEUED), so
    /// a job accepted a moment ago is never "not found".
    pub async fn job_status(&self, org_id: Uuid, job_id: Uuid) -> Result<JobStatus, ApiError> {
        if let Some(status) = self.statuses.get(org_id, job_id).await? {
            return Ok(status);
        }
        let requested = self
            .log
            .last(org_id, job_id, EventKind::Requested)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id} not found")))?;
        Ok(JobStatus::from_event(&requested.event, requested.seq))
    }

    /// The job's history, oldest first (empty for an unknown or foreign job: the read is by
    /// direct get under the org's and the job's subjects, and answers at once when none match).
    async fn job_events(&self, org_id: Uuid, job_id: Uuid) -> Result<Vec<StoredEvent>, ApiError> {
        let history = self
            .log
            .history(org_id, job_id, MAX_EVENTS, EVENTS_STALL)
            .await?;
        Ok(history
            .into_iter()
            .map(|raw| StoredEvent {
                seq: raw.seq,
                subject: raw.subject,
                event: serde_json::from_slice(&raw.payload).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&raw.payload).into_owned())
                }),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let failed = Some(jobs::Status::Failed);
        assert_eq!(decode_cursor(&encode_cursor(None, 42), None).unwrap(), 42);
        assert_eq!(decode_cursor(&encode_cursor(failed, 7), failed).unwrap(), 7);
        assert!(!encode_cursor(None, 42).contains("42"), "opaque");
        let v1 = URL_SAFE_NO_PAD.encode(format!("v1:{}", Uuid::from_u128(0xfeed)));
        for (bad, status) in [
            ("", None),
            ("!!", None),
            ("djE6bm90LWEtdXVpZA", None),
            ("eyJhIjoxfQ", None),
            (v1.as_str(), None),
            // Another listing's cursor.
            (&encode_cursor(None, 42), failed),
            (&encode_cursor(failed, 42), None),
            (&URL_SAFE_NO_PAD.encode("v3:all:0"), None),
            // A cursor of the previous listing.
            (&URL_SAFE_NO_PAD.encode("v2:all:42"), None),
        ] {
            assert!(
                matches!(
                    decode_cursor(bad, status),
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

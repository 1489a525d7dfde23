//! What a job is (its spec), what it produces, and its status: the projection of its events.
//! `JobStatus::apply` is pure — no I/O, no business rules beyond "status never moves backwards" —
//! so the projection is tested given/when/then without infrastructure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{EventData, JobEvent};

/// Model name and version of the mock embedder (the Python service's contract).
pub const MOCK_MODEL: &str = "mock";
pub const MOCK_MODEL_VER: &str = "v1";

/// The job's type and parameters, exactly as hashed into its idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job_type", content = "params", rename_all = "snake_case")]
pub enum JobSpec {
    /// Deterministic ChaCha20 vector for one segment (the Python service's `mock_embedding`).
    MockEmbedding(MockParams),
    /// Embed one segment's text with a model and upsert it.
    Embedding(EmbedParams),
    /// Delete one point of the tenant.
    DeletePoint(DeletePointParams),
    /// Delete every point of one asset of the tenant.
    DeleteAsset(DeleteAssetParams),
}

impl JobSpec {
    pub fn job_type(&self) -> &'static str {
        match self {
            JobSpec::MockEmbedding(_) => "mock_embedding",
            JobSpec::Embedding(_) => "embedding",
            JobSpec::DeletePoint(_) => "delete_point",
            JobSpec::DeleteAsset(_) => "delete_asset",
        }
    }

    /// The parameters that name the job (hashed with sorted keys into the job key).
    pub fn params(&self) -> serde_json::Value {
        let params = match self {
            JobSpec::MockEmbedding(params) => serde_json::to_value(params),
            JobSpec::Embedding(params) => serde_json::to_value(params),
            JobSpec::DeletePoint(params) => serde_json::to_value(params),
            JobSpec::DeleteAsset(params) => serde_json::to_value(params),
        };
        params.expect("job parameters serialize to JSON")
    }
}

/// `POST /vectors/mock`: the Python service hashed `{asset_id, segment_id, model, model_ver}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockParams {
    pub asset_id: String,
    pub segment_id: String,
    pub model: String,
    pub model_ver: String,
}

impl MockParams {
    pub fn new(asset_id: impl Into<String>, segment_id: impl Into<String>) -> Self {
        Self {
            asset_id: asset_id.into(),
            segment_id: segment_id.into(),
            model: MOCK_MODEL.to_owned(),
            model_ver: MOCK_MODEL_VER.to_owned(),
        }
    }
}

/// `POST /vectors/embed`, `/embed/batch`, `/documents`: one segment's text. The text is part of
/// the key, so sending changed text for a segment is a new job (which overwrites the point),
/// while resending the same text returns the existing job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedParams {
    pub asset_id: String,
    pub segment_id: String,
    pub model: String,
    pub model_ver: String,
    pub text: String,
    /// Where the segment sits in its document, when it is a chunk of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkInfo>,
}

/// A chunk's place in its document; offsets count Unicode scalar values (chars).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub chunk_index: usize,
    pub char_start: usize,
    pub char_end: usize,
}

/// `DELETE /vectors/{point_id}`. `request_id` (the `Idempotency-Key` header, or a fresh UUID)
/// names the request: deleting is idempotent in its effect, and a retried request with the same
/// key is the same job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePointParams {
    pub point_id: Uuid,
    pub request_id: String,
}

/// `DELETE /assets/{asset_id}`; `request_id` as for [`DeletePointParams`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAssetParams {
    pub asset_id: String,
    pub request_id: String,
}

/// What a successful job produced. Embedding jobs fill `point_ids`, `model` and `model_ver`;
/// delete jobs fill `deleted` (how many points the delete removed; 0 when they were already
/// gone) and list the point ids they targeted, if known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub collection: String,
    pub point_ids: Vec<Uuid>,
    pub vector_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
}

/// Why a job failed, with a stable machine-readable code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The input can never succeed (bad dimension, unknown model, ...): failed on first attempt.
    InvalidInput,
    /// The vector store kept failing until the last delivery.
    VectorStore,
    /// The job's messages ran out of deliveries without a word from the worker (e.g. it crashed
    /// on every attempt); recorded from the max-deliveries advisory.
    MaxDeliveries,
    /// Anything else that stayed broken through every retry.
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        match self {
            Status::Succeeded | Status::Failed => true,
            Status::Queued | Status::Running => false,
        }
    }
}

/// The KV value under `<org_id>.<job_id>` in `HEIMDEX_JOB_STATUS`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub org_id: Uuid,
    /// Empty until the `requested` event has been applied (only possible when a projection
    /// starts mid-stream).
    pub user_id: String,
    pub job_type: String,
    pub status: Status,
    /// The last event applied (`requested`, `started`, ...).
    pub stage: String,
    pub attempts: u32,
    pub params: serde_json::Value,
    pub result: Option<JobResult>,
    pub error: Option<JobError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Stream sequence of the last event applied; older or repeated events are ignored.
    pub last_event_seq: u64,
}

/// Whether an event changed the projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// Already applied (sequence not newer) — nothing to write.
    Stale,
}

impl JobStatus {
    /// The status a job has before any of its events is applied.
    pub fn empty(org_id: Uuid, job_id: Uuid, time: DateTime<Utc>) -> Self {
        Self {
            job_id,
            org_id,
            user_id: String::new(),
            job_type: String::new(),
            status: Status::Queued,
            stage: String::new(),
            attempts: 0,
            params: serde_json::Value::Null,
            result: None,
            error: None,
            created_at: time,
            updated_at: time,
            last_event_seq: 0,
        }
    }

    /// The status right after the `requested` event (what `GET /jobs/{id}` answers from the
    /// stream while the projection has not caught up).
    pub fn from_event(event: &JobEvent, seq: u64) -> Self {
        let mut status = Self::empty(event.org_id, event.job_id, event.time);
        status.apply(event, seq);
        status
    }

    /// Folds one event in. Events at or below `last_event_seq` are ignored; a terminal status
    /// is final (the first terminal event wins) and nothing moves a job backwards.
    pub fn apply(&mut self, event: &JobEvent, seq: u64) -> Applied {
        if seq <= self.last_event_seq {
            return Applied::Stale;
        }
        self.last_event_seq = seq;
        self.updated_at = self.updated_at.max(event.time);
        match &event.data {
            EventData::Requested(requested) => {
                self.user_id.clone_from(&requested.user_id);
                self.job_type = requested.spec.job_type().to_owned();
                self.params = requested.spec.params();
                self.created_at = event.time;
                if self.stage.is_empty() {
                    self.stage = "requested".to_owned();
                }
            }
            EventData::Started(started) => {
                self.attempts = self.attempts.max(started.attempt);
                if self.status == Status::Queued {
                    self.status = Status::Running;
                    self.stage = "started".to_owned();
                }
            }
            EventData::Succeeded(succeeded) => {
                self.attempts = self.attempts.max(succeeded.attempt);
                if !self.status.is_terminal() {
                    self.status = Status::Succeeded;
                    self.stage = "succeeded".to_owned();
                    self.result = Some(succeeded.result.clone());
                }
            }
            EventData::Failed(failed) => {
                self.attempts = self.attempts.max(failed.attempt);
                if !self.status.is_terminal() {
                    self.status = Status::Failed;
                    self.stage = "failed".to_owned();
                    self.error = Some(failed.error.clone());
                }
            }
        }
        Applied::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Failed, Requested, Started, Succeeded};

    fn org() -> Uuid {
        Uuid::from_u128(0x550e_8400)
    }

    fn job() -> Uuid {
        Uuid::from_u128(42)
    }

    fn event(data: EventData) -> JobEvent {
        JobEvent::new(org(), job(), data)
    }

    fn requested() -> JobEvent {
        event(EventData::Requested(Requested {
            job_id: job(),
            job_key: "k".into(),
            user_id: "alice".into(),
            spec: JobSpec::MockEmbedding(MockParams::new("doc-123", "chunk-0")),
        }))
    }

    fn started(attempt: u32) -> JobEvent {
        event(EventData::Started(Started { attempt }))
    }

    fn result() -> JobResult {
        JobResult {
            collection: "embeddings".into(),
            point_ids: vec![Uuid::from_u128(1)],
            vector_size: 384,
            model: Some(MOCK_MODEL.into()),
            model_ver: Some(MOCK_MODEL_VER.into()),
            deleted: None,
        }
    }

    fn succeeded(attempt: u32) -> JobEvent {
        event(EventData::Succeeded(Succeeded {
            attempt,
            result: result(),
        }))
    }

    fn failed(attempt: u32) -> JobEvent {
        event(EventData::Failed(Failed {
            attempt,
            error: JobError::new(JobErrorCode::VectorStore, "unreachable"),
        }))
    }

    #[test]
    fn given_requested_then_queued_with_params() {
        let status = JobStatus::from_event(&requested(), 1);
        assert_eq!(status.status, Status::Queued);
        assert_eq!(status.stage, "requested");
        assert_eq!(status.user_id, "alice");
        assert_eq!(status.job_type, "mock_embedding");
        assert_eq!(status.params["segment_id"], "chunk-0");
        assert_eq!(status.params["model"], "mock");
        assert_eq!(status.last_event_seq, 1);
    }

    #[test]
    fn given_started_when_succeeded_then_terminal_with_result() {
        let mut status = JobStatus::from_event(&requested(), 1);
        assert_eq!(status.apply(&started(1), 2), Applied::Changed);
        assert_eq!(status.status, Status::Running);
        status.apply(&succeeded(1), 3);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.result, Some(result()));
        assert_eq!(status.attempts, 1);
    }

    #[test]
    fn replayed_or_older_events_are_stale() {
        let mut status = JobStatus::from_event(&requested(), 5);
        assert_eq!(status.apply(&started(1), 5), Applied::Stale);
        assert_eq!(status.apply(&started(1), 4), Applied::Stale);
        assert_eq!(status.status, Status::Queued);
    }

    #[test]
    fn status_never_moves_backwards() {
        let mut status = JobStatus::from_event(&requested(), 1);
        status.apply(&succeeded(2), 10);
        // A late `started` from a slow redelivered attempt, and a later `failed`.
        status.apply(&started(3), 11);
        status.apply(&failed(3), 12);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.error, None);
        assert_eq!(status.attempts, 3);
        assert_eq!(status.last_event_seq, 12);
    }

    #[test]
    fn failure_after_retries_records_reason() {
        let mut status = JobStatus::from_event(&requested(), 1);
        for (seq, attempt) in [(2, 1), (3, 2), (4, 3), (5, 4)] {
            status.apply(&started(attempt), seq);
            assert_eq!(status.status, Status::Running);
        }
        status.apply(&failed(4), 6);
        assert_eq!(status.status, Status::Failed);
        assert_eq!(status.attempts, 4);
        assert_eq!(
            status.error.as_ref().map(|e| e.code),
            Some(JobErrorCode::VectorStore)
        );
    }

    #[test]
    fn events_without_requested_still_project() {
        let mut status = JobStatus::empty(org(), job(), chrono::Utc::now());
        status.apply(&started(1), 7);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.job_id, job());
    }

    #[test]
    fn every_job_type_round_trips_and_names_itself() {
        let specs = [
            JobSpec::MockEmbedding(MockParams::new("a", "s")),
            JobSpec::Embedding(EmbedParams {
                asset_id: "a".into(),
                segment_id: "chunk-0".into(),
                model: "minilm-l6-v2".into(),
                model_ver: "st-v1-53aa5117".into(),
                text: "hello".into(),
                chunk: Some(ChunkInfo {
                    chunk_index: 0,
                    char_start: 0,
                    char_end: 5,
                }),
            }),
            JobSpec::DeletePoint(DeletePointParams {
                point_id: Uuid::from_u128(7),
                request_id: "r".into(),
            }),
            JobSpec::DeleteAsset(DeleteAssetParams {
                asset_id: "a".into(),
                request_id: "r".into(),
            }),
        ];
        for spec in specs {
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(json["job_type"], spec.job_type());
            assert_eq!(json["params"], spec.params());
            assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), spec);
        }
    }

    #[test]
    fn status_serializes_in_screaming_case() {
        assert_eq!(
            serde_json::to_value(Status::Succeeded).unwrap(),
            "SUCCEEDED"
        );
    }
}

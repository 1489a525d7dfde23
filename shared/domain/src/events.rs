//! Job events: CloudEvents 1.0 documents (structured mode) on the subjects
//! `heimdex.jobs.<org_id>.<job_id>.<event>`. The stream of these events is the source of truth;
//! job status and vectors are derived from it.
//!
//! Event types carry a version (`heimdex.job.requested.v1`). Readers accept every version that
//! was ever written: when a `v2` appears, its decoder goes next to the `v1` one in
//! [`JobEvent::decode`] and older payloads are upcast there.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::{JobError, JobResult, JobSpec};

/// The root of every job subject.
pub const SUBJECT_ROOT: &str = "heimdex.jobs";
/// CloudEvents `source` of events written by Heimdex.
pub const EVENT_SOURCE: &str = "heimdex";
/// CloudEvents `specversion` this code writes.
pub const SPEC_VERSION: &str = "1.0";

/// What happened to a job. The variant decides the subject's last token and the event `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Requested,
    Started,
    Succeeded,
    Failed,
    /// An operator asked for a failed job to run again (`POST /jobs/{id}/retry`).
    Retried,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Requested,
        EventKind::Started,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Retried,
    ];

    /// The subject token, e.g. `requested`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Started => "started",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Retried => "retried",
        }
    }

    /// The CloudEvents `type` this code writes, e.g. `heimdex.job.requested.v1`.
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Requested => "heimdex.job.requested.v1",
            EventKind::Started => "heimdex.job.started.v1",
            EventKind::Succeeded => "heimdex.job.succeeded.v1",
            EventKind::Failed => "heimdex.job.failed.v1",
            EventKind::Retried => "heimdex.job.retried.v1",
        }
    }

    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == token)
    }
}

/// `heimdex.jobs.<org_id>.<job_id>.<event>`
pub fn subject(org_id: Uuid, job_id: Uuid, kind: EventKind) -> String {
    format!("{SUBJECT_ROOT}.{org_id}.{job_id}.{}", kind.as_str())
}

/// The subjects of every job's events of one kind: `heimdex.jobs.*.*.<event>`
pub fn kind_subjects(kind: EventKind) -> String {
    format!("{SUBJECT_ROOT}.*.*.{}", kind.as_str())
}

/// All subjects of one job: `heimdex.jobs.<org_id>.<job_id>.*`
pub fn job_subjects(org_id: Uuid, job_id: Uuid) -> String {
    format!("{SUBJECT_ROOT}.{org_id}.{job_id}.*")
}

/// The parts of a job subject. Unknown event tokens are kept as `None` so a reader written
/// before an event type existed can still skip it gracefully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubjectParts {
    pub org_id: Uuid,
    pub job_id: Uuid,
    pub kind: Option<EventKind>,
}

pub fn parse_subject(subject: &str) -> Option<SubjectParts> {
    let rest = subject.strip_prefix(SUBJECT_ROOT)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let org_id = Uuid::parse_str(tokens.next()?).ok()?;
    let job_id = Uuid::parse_str(tokens.next()?).ok()?;
    let kind = EventKind::parse(tokens.next()?);
    if tokens.next().is_some() {
        return None;
    }
    Some(SubjectParts {
        org_id,
        job_id,
        kind,
    })
}

/// The CloudEvents 1.0 structured-mode envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    pub specversion: String,
    /// Equal to the event's `Nats-Msg-Id`.
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The job id.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    /// Extension attribute: the tenant.
    pub orgid: Uuid,
    pub data: T,
}

/// `requested`: a client asked for a job. Stored exactly once per job (expected subject
/// sequence 0), so it is the job's birth certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    pub job_id: Uuid,
    pub job_key: String,
    pub user_id: String,
    #[serde(flatten)]
    pub spec: JobSpec,
}

/// `started`: a worker began attempt `attempt` (1-based: the JetStream delivery count) of round
/// `round` (0 for the run the `requested` event asked for, n for the n-th retry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub attempt: u32,
    /// Absent in events written before retries existed: those are all round 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
}

/// `succeeded`: terminal for its round; the job's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Succeeded {
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    pub result: JobResult,
}

/// `failed`: terminal for its round; the job will not be tried again without an explicit retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    pub error: JobError,
}

/// `retried`: round `round` (1 for the first retry) of a FAILED job was asked for. It carries
/// the job's spec, copied from its `requested` event, so the worker runs it from this message
/// alone. Stored at most once per round: its id is `<job_id>:retried:<round>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    pub round: u32,
    /// Who asked for the retry.
    pub user_id: String,
    #[serde(flatten)]
    pub spec: JobSpec,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A decoded event of any kind, with its envelope attributes that readers need.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    pub id: String,
    pub org_id: Uuid,
    pub job_id: Uuid,
    pub time: DateTime<Utc>,
    pub data: EventData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventData {
    Requested(Requested),
    Started(Started),
    Succeeded(Succeeded),
    Failed(Failed),
    Retried(Retried),
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Requested(_) => EventKind::Requested,
            EventData::Started(_) => EventKind::Started,
            EventData::Succeeded(_) => EventKind::Succeeded,
            EventData::Failed(_) => EventKind::Failed,
            EventData::Retried(_) => EventKind::Retried,
        }
    }

    /// The round the event belongs to: 0 for `requested` and the first run, n from the n-th
    /// `retried` on.
    pub fn round(&self) -> u32 {
        match self {
            EventData::Requested(_) => 0,
            EventData::Started(Started { round, .. })
            | EventData::Succeeded(Succeeded { round, .. })
            | EventData::Failed(Failed { round, .. })
            | EventData::Retried(Retried { round, .. }) => *round,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported CloudEvents specversion {0:?}")]
    SpecVersion(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("event subject {0:?} is not a job id")]
    BadSubject(String),
}

impl JobEvent {
    pub fn new(org_id: Uuid, job_id: Uuid, data: EventData) -> Self {
        let id = match &data {
            EventData::Requested(requested) => requested.job_key.clone(),
            EventData::Started(Started { attempt, round })
            | EventData::Succeeded(Succeeded { attempt, round, .. })
            | EventData::Failed(Failed { attempt, round, .. }) => {
                later_event_msg_id(job_id, data.kind(), *round, *attempt)
            }
            EventData::Retried(Retried { round, .. }) => retried_msg_id(job_id, *round),
        };
        Self {
            id,
            org_id,
            job_id,
            time: Utc::now(),
            data,
        }
    }

    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    pub fn subject(&self) -> String {
        subject(self.org_id, self.job_id, self.kind())
    }

    /// The JSON document published to NATS.
    pub fn encode(&self) -> Vec<u8> {
        fn envelope<T: Serialize>(event: &JobEvent, data: &T) -> Vec<u8> {
            serde_json::to_vec(&CloudEvent {
                specversion: SPEC_VERSION.to_owned(),
                id: event.id.clone(),
                source: EVENT_SOURCE.to_owned(),
                event_type: event.kind().event_type().to_owned(),
                subject: event.job_id.to_string(),
                time: event.time,
                datacontenttype: "application/json".to_owned(),
                orgid: event.org_id,
                data,
            })
            .expect("events serialize to JSON")
        }
        match &self.data {
            EventData::Requested(data) => envelope(self, data),
            EventData::Started(data) => envelope(self, data),
            EventData::Succeeded(data) => envelope(self, data),
            EventData::Failed(data) => envelope(self, data),
            EventData::Retried(data) => envelope(self, data),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // One pass over the envelope: `data` is kept as the raw JSON text and parsed straight
        // into its event's type, not built as a `serde_json::Value` tree first.
        let envelope: CloudEvent<&serde_json::value::RawValue> = serde_json::from_slice(bytes)?;
        if envelope.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(envelope.specversion));
        }
        let job_id = Uuid::parse_str(&envelope.subject)
            .map_err(|_| DecodeError::BadSubject(envelope.subject.clone()))?;
        let raw = envelope.data.get();
        let data = match envelope.event_type.as_str() {
            "heimdex.job.requested.v1" => EventData::Requested(serde_json::from_str(raw)?),
            "heimdex.job.started.v1" => EventData::Started(serde_json::from_str(raw)?),
            "heimdex.job.succeeded.v1" => EventData::Succeeded(serde_json::from_str(raw)?),
            "heimdex.job.failed.v1" => EventData::Failed(serde_json::from_str(raw)?),
            "heimdex.job.retried.v1" => EventData::Retried(serde_json::from_str(raw)?),
            _ => return Err(DecodeError::UnknownType(envelope.event_type)),
        };
        Ok(Self {
            id: envelope.id,
            org_id: envelope.orgid,
            job_id,
            time: envelope.time,
            data,
        })
    }
}

/// `Nats-Msg-Id` of the worker's events: `<job_id>:<event>:<attempt>` in round 0 (as before
/// retries existed) and `<job_id>:<event>:<round>.<attempt>` in a retried round, so a new round's
/// `started:1` is not taken for the first round's. A worker that publishes the same event twice
/// for one attempt (say, after a reconnect) is de-duplicated.
pub fn later_event_msg_id(job_id: Uuid, kind: EventKind, round: u32, attempt: u32) -> String {
    if round == 0 {
        format!("{job_id}:{}:{attempt}", kind.as_str())
    } else {
        format!("{job_id}:{}:{round}.{attempt}", kind.as_str())
    }
}

/// `Nats-Msg-Id` of the `retried` event of round `round`: `<job_id>:retried:<round>`. Every
/// retry request for the same failure computes the same round, so concurrent or repeated
/// requests store one event.
pub fn retried_msg_id(job_id: Uuid, round: u32) -> String {
    format!("{job_id}:retried:{round}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobErrorCode;

    fn org() -> Uuid {
        Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap()
    }

    #[test]
    fn subject_round_trip() {
        let job = Uuid::from_u128(7);
        let s = subject(org(), job, EventKind::Succeeded);
        assert_eq!(s, format!("heimdex.jobs.{}.{}.succeeded", org(), job));
        let parts = parse_subject(&s).unwrap();
        assert_eq!(parts.org_id, org());
        assert_eq!(parts.job_id, job);
        assert_eq!(parts.kind, Some(EventKind::Succeeded));
        assert_eq!(parse_subject("heimdex.jobs.x.y.requested"), None);
        assert_eq!(parse_subject(&format!("{s}.extra")), None);
        let future = parse_subject(&format!("heimdex.jobs.{}.{}.archived", org(), job)).unwrap();
        assert_eq!(future.kind, None);
    }

    #[test]
    fn requested_event_is_a_cloudevent_and_round_trips() {
        let spec = JobSpec::MockEmbedding(crate::jobs::MockParams::new(
            crate::AssetId::parse("doc-123").unwrap(),
            crate::SegmentId::parse("chunk-0").unwrap(),
        ));
        let key = crate::ids::job_key(org(), spec.job_type(), &spec.params());
        let job_id = crate::ids::job_id(&key);
        let event = JobEvent::new(
            org(),
            job_id,
            EventData::Requested(Requested {
                job_id,
                job_key: key.clone(),
                user_id: "user-1".into(),
                spec,
            }),
        );
        assert_eq!(event.id, key);
        let bytes = event.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "heimdex.job.requested.v1");
        assert_eq!(json["subject"], job_id.to_string());
        assert_eq!(json["orgid"], org().to_string());
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["job_type"], "mock_embedding");
        assert_eq!(json["data"]["params"]["asset_id"], "doc-123");
        assert_eq!(JobEvent::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn later_events_use_attempt_scoped_ids() {
        let job = Uuid::from_u128(9);
        let failed = JobEvent::new(
            org(),
            job,
            EventData::Failed(Failed {
                attempt: 4,
                round: 0,
                error: JobError::new(JobErrorCode::VectorStore, "down"),
            }),
        );
        assert_eq!(failed.id, format!("{job}:failed:4"));
        assert_eq!(JobEvent::decode(&failed.encode()).unwrap(), failed);
        // Round 0 is written as before retries existed: no `round` field.
        let json: serde_json::Value = serde_json::from_slice(&failed.encode()).unwrap();
        assert!(json["data"].get("round").is_none(), "{json}");
    }

    #[test]
    fn retried_rounds_get_their_own_event_ids() {
        let job = Uuid::from_u128(9);
        let started = JobEvent::new(
            org(),
            job,
            EventData::Started(Started {
                attempt: 1,
                round: 2,
            }),
        );
        assert_eq!(started.id, format!("{job}:started:2.1"));
        assert_ne!(
            started.id,
            later_event_msg_id(job, EventKind::Started, 0, 1),
            "round 2's first start is not round 0's"
        );
        let decoded = JobEvent::decode(&started.encode()).unwrap();
        assert_eq!(decoded.data.round(), 2);

        let spec = JobSpec::MockEmbedding(crate::jobs::MockParams::new(
            crate::AssetId::parse("doc-123").unwrap(),
            crate::SegmentId::parse("chunk-0").unwrap(),
        ));
        let retried = JobEvent::new(
            org(),
            job,
            EventData::Retried(Retried {
                round: 1,
                user_id: "ops".into(),
                spec: spec.clone(),
            }),
        );
        assert_eq!(retried.id, format!("{job}:retried:1"));
        assert_eq!(
            retried.subject(),
            format!("heimdex.jobs.{}.{job}.retried", org())
        );
        let json: serde_json::Value = serde_json::from_slice(&retried.encode()).unwrap();
        assert_eq!(json["type"], "heimdex.job.retried.v1");
        assert_eq!(json["data"]["round"], 1);
        assert_eq!(json["data"]["job_type"], "mock_embedding");
        assert_eq!(JobEvent::decode(&retried.encode()).unwrap(), retried);
    }

    #[test]
    fn events_written_before_rounds_existed_decode_as_round_zero() {
        let job = Uuid::from_u128(9);
        let stored = serde_json::json!({
            "specversion": "1.0", "id": format!("{job}:started:3"), "source": "heimdex",
            "type": "heimdex.job.started.v1", "subject": job.to_string(),
            "time": "2026-01-01T00:00:00Z", "datacontenttype": "application/json",
            "orgid": org().to_string(), "data": {"attempt": 3}
        });
        let event = JobEvent::decode(stored.to_string().as_bytes()).unwrap();
        assert_eq!(
            event.data,
            EventData::Started(Started {
                attempt: 3,
                round: 0
            })
        );
    }

    #[test]
    fn unknown_types_and_versions_are_rejected_with_a_reason() {
        let job = Uuid::from_u128(9);
        let started = JobEvent::new(
            org(),
            job,
            EventData::Started(Started {
                attempt: 1,
                round: 0,
            }),
        );
        let mut json: serde_json::Value = serde_json::from_slice(&started.encode()).unwrap();
        json["type"] = "heimdex.job.started.v99".into();
        let err = JobEvent::decode(json.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownType(t) if t.ends_with("v99")));
        json["specversion"] = "0.3".into();
        assert!(matches!(
            JobEvent::decode(json.to_string().as_bytes()),
            Err(DecodeError::SpecVersion(_))
        ));
    }
}

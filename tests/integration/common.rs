//! Helpers several integration test modules share and that need the test-only async-nats
//! dependency (so they cannot live in `tests/support`).

use async_nats::jetstream::message::PublishMessage;
use heimdex_domain::events::{EventData, JobEvent, Requested};
use heimdex_domain::ids;
use heimdex_domain::jobs::JobSpec;
use serde_json::Value;
use uuid::Uuid;

/// Publishes a job's `requested` event straight to the stream, past the API's checks (for jobs
/// the API would refuse, such as an unknown model), exactly as the API would: the job key as
/// `Nats-Msg-Id` and an expected last subject sequence of 0. Returns the job id.
pub async fn publish_requested(
    js: &async_nats::jetstream::Context,
    org: Uuid,
    user_id: &str,
    spec: JobSpec,
) -> Uuid {
    let key = ids::job_key(org, spec.job_type(), &spec.params());
    let job_id = ids::job_id(&key);
    let event = JobEvent::new(
        org,
        job_id,
        EventData::Requested(Requested {
            job_id,
            job_key: key.clone(),
            user_id: user_id.into(),
            spec,
        }),
    );
    js.send_publish(
        event.subject(),
        PublishMessage::build()
            .payload(event.encode().into())
            .message_id(&key)
            .expected_last_subject_sequence(0),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    job_id
}

/// Every `job_id` string anywhere in a JSON document, in document order (the accepted bodies of
/// single, batch and document calls all name their jobs this way).
pub fn job_ids(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("job_id", Value::String(id)) => out.push(id.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

//! The projector after a crash: events an earlier projector was delivered and never
//! acknowledged come back only after the consumer's ack wait (30 s), while newer events flow
//! on. Here the worker's `started` and `succeeded` are such events, and the max-deliveries
//! advisory's `failed`, stored after them, arrives first. The first end in the stream wins, so
//! the job SUCCEEDED; the bucket must never show it FAILED meanwhile.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use heimdex::serve::Roles;
use heimdex_domain::events::{EventData, Failed, Started};
use heimdex_domain::jobs::{JobError, JobErrorCode, JobStatus, Status};
use heimdex_event_store::jetstream::{JOBS_STREAM, STATUS_BUCKET};
use heimdex_event_store::status::status_key;
use heimdex_tests::{TestNats, wait_for_job};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{Services, append, job_id_of, mock_succeeded};

const API_AND_PROJECTOR: Roles = Roles {
    api: true,
    worker: false,
    projector: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_overtaking_an_unacknowledged_one_is_not_shown() {
    let nats = TestNats::start().await;

    // A job is requested and projected QUEUED; then the service stops.
    let services = Services::start(&nats, API_AND_PROJECTOR, &[]).await;
    let org = Uuid::new_v4();
    let token = services.token(org);
    let http = reqwest::Client::new();
    let accepted = http
        .post(format!("{}/vectors/mock", services.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "late", "segment_id": "s"}))
        .send()
        .await
        .unwrap();
    let job_id = job_id_of(&accepted.json().await.unwrap());
    let job = Uuid::parse_str(&job_id).unwrap();
    let queued = wait_for_job(
        &http,
        &services.base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(queued["status"], "QUEUED");
    // QUEUED is also answered from the `requested` event itself, before the projector has it:
    // stop only once the projector has taken and acknowledged it, so that the fetch below
    // gets the worker's events alone.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    heimdex_tests::eventually(Duration::from_secs(10), || async {
        let mut consumer: PullConsumer = js
            .get_stream(JOBS_STREAM)
            .await
            .ok()?
            .get_consumer("projector")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
    .expect("the projector acknowledged the job's `requested`");
    let settings = services.settings.clone();
    services.stop().await;

    // The worker's events are stored, and a projector that then dies is delivered them and
    // never acknowledges them.
    let events =
        heimdex::infra::connect_nats(&settings, &nats.url(), "t", &CancellationToken::new())
            .await
            .unwrap();
    let started = EventData::Started(Started {
        attempt: 1,
        round: 0,
    });
    append(&events.log, org, job, started).await;
    append(&events.log, org, job, mock_succeeded(1)).await;
    let consumer: PullConsumer = events
        .js
        .get_stream(JOBS_STREAM)
        .await
        .unwrap()
        .get_consumer("projector")
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut unacknowledged = 0;
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        assert!(
            message.subject.ends_with(".started") || message.subject.ends_with(".succeeded"),
            "{}",
            message.subject
        );
        unacknowledged += 1;
    }
    assert_eq!(unacknowledged, 2, "the dead projector was delivered both");

    // The advisory's `failed` comes after them in the stream.
    let failed = EventData::Failed(Failed {
        attempt: 4,
        round: 0,
        error: JobError::new(JobErrorCode::MaxDeliveries, "no outcome after 4 deliveries"),
    });
    append(&events.log, org, job, failed).await;

    // A new projector starts: `failed` reaches it first, the other two only after 30 s.
    let kv = events.js.get_key_value(STATUS_BUCKET).await.unwrap();
    let mut watch = kv.watch(status_key(org, job)).await.unwrap();
    let services = Services::start(&nats, API_AND_PROJECTOR, &[]).await;
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(entry) = watch.next().await {
            let status: JobStatus = serde_json::from_slice(&entry.unwrap().value).unwrap();
            seen.push(status.status);
            if status.status.is_terminal() {
                return status;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the job ends within 20 s, well before the ack wait returns the late events");
    assert_eq!(
        end.status,
        Status::Succeeded,
        "the first end in the stream wins, and no other is shown first (statuses seen: {seen:?})"
    );
    assert_eq!(end.attempts, 4);
    services.stop().await;
}

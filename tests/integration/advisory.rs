//! The max-deliveries advisory listener: a job whose worker died on every delivery is recorded
//! FAILED (code `max_deliveries`) instead of staying QUEUED/RUNNING forever. No worker runs here,
//! so the job is never processed; the advisory is published in JetStream's documented shape
//! (`io.nats.jetstream.advisory.v1.max_deliver`) for the job's `requested` message, while no
//! listener is running (all workers away, or reconnecting): it must wait in the stream for the
//! listener that starts later.

use std::time::Duration;

use heimdex::serve::{self, Roles};
use heimdex_tests::{TestNats, settings, wait_for_job};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_deliveries_advisory_marks_the_job_failed() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let shutdown = CancellationToken::new();
    let roles = Roles {
        api: true,
        worker: false,
        projector: true,
    };
    let running = serve::start(&s, roles, &nats.url(), shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.api_addr.unwrap());
    let services = tokio::spawn(running.wait());

    let client = async_nats::connect(nats.url()).await.unwrap();
    let events = heimdex::infra::connect_nats(&s, &nats.url(), "t", &shutdown)
        .await
        .unwrap();
    // The advisories' stream and consumer exist (as they do once any worker has started), but
    // no listener consumes them yet.
    let consumer = heimdex_worker::advisory::consumer(&events, &shutdown)
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let token =
        heimdex_api::auth::issue_token(&s.api.jwt, Uuid::new_v4(), "t", Duration::from_secs(600))
            .unwrap();
    let accepted: serde_json::Value = http
        .post(format!("{base}/vectors/mock"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "doomed", "segment_id": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let queued = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(queued["status"], "QUEUED");
    let seq = queued["last_event_seq"].as_u64().unwrap();

    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "test",
        "timestamp": "2026-01-01T00:00:00Z",
        "stream": "HEIMDEX_JOBS",
        "consumer": "worker",
        "stream_seq": seq,
        "deliveries": 4
    });
    client
        .publish(
            heimdex_worker::advisory::subject(),
            advisory.to_string().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Nobody listens: the job stays QUEUED, and the advisory waits in its stream.
    let js = async_nats::jetstream::new(client.clone());
    heimdex_tests::eventually(Duration::from_secs(10), || async {
        let mut stream = js.get_stream("HEIMDEX_ADVISORIES").await.ok()?;
        (stream.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await
    .expect("the advisory is kept while no listener runs");
    let job = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "QUEUED",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(job["status"], "QUEUED");

    let listener = tokio::spawn(heimdex_worker::advisory::run(
        events.log.clone(),
        consumer,
        shutdown.clone(),
    ));
    let failed = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "FAILED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        failed["status"], "FAILED",
        "job marked FAILED from the advisory"
    );
    assert_eq!(failed["error"]["code"], "max_deliveries");
    assert_eq!(failed["attempts"], 4);

    shutdown.cancel();
    let _ = services.await;
    let _ = listener.await;
}

/// The worker stored the job's end and died before acknowledging the delivery, which then ran
/// out: the advisory records nothing, since the round is over (a `failed` event would
/// contradict the end the job shows and count it as failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_for_a_job_that_ended_records_nothing() {
    use heimdex_domain::events::{EventData, EventKind, JobEvent, Started, Succeeded};
    use heimdex_domain::jobs::JobResult;

    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let shutdown = CancellationToken::new();
    let roles = Roles {
        api: true,
        worker: false,
        projector: true,
    };
    let running = serve::start(&s, roles, &nats.url(), shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.api_addr.unwrap());
    let services = tokio::spawn(running.wait());
    let events = heimdex::infra::connect_nats(&s, &nats.url(), "t", &shutdown)
        .await
        .unwrap();
    let consumer = heimdex_worker::advisory::consumer(&events, &shutdown)
        .await
        .unwrap();
    let listener = tokio::spawn(heimdex_worker::advisory::run(
        events.log.clone(),
        consumer,
        shutdown.clone(),
    ));

    let http = reqwest::Client::new();
    let org = Uuid::new_v4();
    let token =
        heimdex_api::auth::issue_token(&s.api.jwt, org, "t", Duration::from_secs(600)).unwrap();
    let accepted: serde_json::Value = http
        .post(format!("{base}/vectors/mock"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "ended", "segment_id": "s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let job = Uuid::parse_str(&job_id).unwrap();
    let requested_seq = events
        .log
        .last(org, job, EventKind::Requested)
        .await
        .unwrap()
        .unwrap()
        .seq;
    for data in [
        EventData::Started(Started {
            attempt: 4,
            round: 0,
        }),
        EventData::Succeeded(Succeeded {
            attempt: 4,
            round: 0,
            result: JobResult {
                collection: "c".into(),
                point_ids: vec![Uuid::new_v4()],
                vector_size: 384,
                model: None,
                model_ver: None,
                deleted: None,
                written: None,
                kept: None,
                superseded: false,
            },
        }),
    ] {
        events
            .log
            .send(&JobEvent::new(org, job, data))
            .await
            .unwrap()
            .stored()
            .await
            .unwrap();
    }
    let succeeded = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "SUCCEEDED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(succeeded["status"], "SUCCEEDED");

    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "id": "test",
        "timestamp": "2026-01-01T00:00:00Z",
        "stream": "HEIMDEX_JOBS",
        "consumer": "worker",
        "stream_seq": requested_seq,
        "deliveries": 4
    });
    let client = async_nats::connect(nats.url()).await.unwrap();
    client
        .publish(
            heimdex_worker::advisory::subject(),
            advisory.to_string().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Handled (acknowledged, so gone from its work-queue stream) ...
    let js = async_nats::jetstream::new(client.clone());
    heimdex_tests::eventually(Duration::from_secs(10), || async {
        let mut stream = js.get_stream("HEIMDEX_ADVISORIES").await.ok()?;
        let state = &stream.info().await.ok()?.state;
        (state.last_sequence == 1 && state.messages == 0).then_some(())
    })
    .await
    .expect("the advisory is handled");
    // ... without a `failed` event.
    assert!(
        events
            .log
            .last(org, job, EventKind::Failed)
            .await
            .unwrap()
            .is_none()
    );
    let job = wait_for_job(
        &http,
        &base,
        &token,
        &job_id,
        "SUCCEEDED",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(job["status"], "SUCCEEDED");

    shutdown.cancel();
    let _ = services.await;
    let _ = listener.await;
}

//! Poison input amid good traffic: jobs that can never succeed (an unknown model, whitespace
//! text) and an undecodable event, published straight to the stream as another producer or an
//! older API could. Each poison job gets exactly one attempt and ends FAILED with a reason; the
//! undecodable message is terminated at once, never redelivered; the good jobs are unaffected.

use std::time::{Duration, Instant};

use heimdex_domain::jobs::{EmbedParams, JobSpec, Status};
use uuid::Uuid;

use crate::common::publish_requested;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_input_fails_once_with_a_reason() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::start(dir.path(), &[], Vec::new()).await;
    let org = deployment.ledger.org;

    let (good, poison) = scale((500, 20), (5_000, 200));
    let submitting = tokio::spawn({
        let client = deployment.client.clone();
        async move { submit_mock_jobs(&client, "good", good, 16, 500.0).await }
    });
    for i in 0..poison {
        let (model, text) = if i % 2 == 0 {
            ("no-such-model", format!("text {i}"))
        } else {
            ("minilm-l6-v2", " \n\t ".to_owned())
        };
        let spec = JobSpec::Embedding(EmbedParams {
            asset_id: heimdex_domain::AssetId::parse("poison").unwrap(),
            segment_id: heimdex_domain::SegmentId::parse(format!("p-{i}")).unwrap(),
            model: model.into(),
            model_ver: "1".into(),
            text,
            chunk: None,
            generation: 0,
            metadata: Default::default(),
        });
        let job = publish_requested(&deployment.js, org, "faults", spec).await;
        deployment.ledger.must_fail(job);
    }
    // Not even an event: bytes no producer of ours would write, on a requested subject.
    let garbage = 5;
    for _ in 0..garbage {
        deployment
            .js
            .publish(
                format!("heimdex.jobs.{org}.{}.requested", Uuid::new_v4()),
                "\u{0}not json".into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(submitting.await.unwrap(), good);
    let fault_over = Instant::now();

    let (statuses, _) =
        wait_terminal(&deployment.js, &deployment.ledger, Duration::from_secs(120)).await;
    let mut reasons = std::collections::BTreeSet::new();
    for status in statuses.values().filter(|s| s.status == Status::Failed) {
        assert_eq!(status.attempts, 1, "one attempt: {status:?}");
        let error = status.error.as_ref().expect("a FAILED job says why");
        assert!(!error.message.is_empty(), "{status:?}");
        reasons.insert(error.message.clone());
    }
    // Everything delivered to the worker was settled on its first delivery: no redelivery, and
    // nothing left pending or unacknowledged (the garbage was terminated, not retried).
    wait_consumer_drained(
        &deployment.js,
        heimdex_event_store::jetstream::WORKER_CONSUMER,
        Duration::from_secs(30),
    )
    .await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = deployment
        .js
        .get_stream(heimdex_event_store::jetstream::JOBS_STREAM)
        .await
        .unwrap()
        .get_consumer(heimdex_event_store::jetstream::WORKER_CONSUMER)
        .await
        .unwrap();
    let consumer = consumer.info().await.unwrap().clone();
    assert_eq!(consumer.num_redelivered, 0, "nothing was delivered twice");

    let mut outcome = deployment.finish("poison input", fault_over).await;
    assert_eq!(outcome.failed, poison, "every poison job FAILED");
    outcome.note(format!(
        "{poison} poison jobs (unknown model, whitespace text) and {garbage} undecodable \
         events among {good} good jobs; every poison job FAILED after 1 attempt; 0 redeliveries; \
         reasons: {reasons:?}"
    ));
    outcome.report_and_assert();
}

use std::time::Duration;

use heimdex_tests::{TestNats, settings};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_creates_from_definitions_and_refuses_conflicts() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let token = CancellationToken::new();

    // First start creates everything from nats/*.json; a second start finds it unchanged.
    heimdex::infra::connect_nats(&s, &nats.url(), "t", &token)
        .await
        .unwrap();
    let n = heimdex::infra::connect_nats(&s, &nats.url(), "t", &token)
        .await
        .unwrap();
    let mut stream = n.js.get_stream("HEIMDEX_JOBS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert!(info.config.allow_direct);
    let worker = heimdex_event_store::jetstream::ensure_consumer(&n.stream, &n.defs.worker)
        .await
        .unwrap();
    assert_eq!(worker.cached_info().config.max_deliver, 4);

    // A deployment configured differently is refused with a clear message.
    let other = settings(
        data.path(),
        &nats.url(),
        &[("NATS_DUPLICATE_WINDOW_SEC", "30")],
    );
    let err = match heimdex::infra::connect_nats(&other, &nats.url(), "t", &token).await {
        Ok(_) => panic!("conflicting stream accepted"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("HEIMDEX_JOBS") && err.contains("duplicate_window"),
        "{err}"
    );

    // So is a consumer edited behind our back.
    let mut edited = n.defs.worker.clone();
    edited.max_deliver = 9;
    n.stream.update_consumer(edited).await.unwrap();
    let err = heimdex_event_store::jetstream::ensure_consumer(&n.stream, &n.defs.worker)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_deliver"), "{err}");
}

/// A `worker` consumer from before `retried` events existed (filtering `requested` only) is
/// widened in place, keeping its position; a narrower or unrelated filter is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumer_from_before_retries_is_widened_in_place() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let s = settings(data.path(), &nats.url(), &[]);
    let n = heimdex::infra::connect_nats(&s, &nats.url(), "t", &CancellationToken::new())
        .await
        .unwrap();
    let mut old = n.defs.worker.clone();
    old.filter_subjects = Vec::new();
    old.filter_subject = "heimdex.jobs.*.*.requested".to_owned();
    n.stream.delete_consumer("worker").await.ok();
    n.stream.create_consumer(old).await.unwrap();

    let mut worker = heimdex_event_store::jetstream::ensure_consumer(&n.stream, &n.defs.worker)
        .await
        .unwrap();
    let mut filters = worker.info().await.unwrap().config.filter_subjects.clone();
    filters.sort();
    assert_eq!(
        filters,
        ["heimdex.jobs.*.*.requested", "heimdex.jobs.*.*.retried"]
    );

    let mut unrelated = n.defs.worker.clone();
    unrelated.filter_subjects = Vec::new();
    unrelated.filter_subject = "heimdex.jobs.*.*.started".to_owned();
    n.stream.update_consumer(unrelated).await.unwrap();
    let err = heimdex_event_store::jetstream::ensure_consumer(&n.stream, &n.defs.worker)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("filter_subjects"), "{err}");
}

//! One trace covers POST → NATS → worker → vector-store upsert: the API injects `traceparent`
//! into the `requested` event's headers and the worker continues it. Its own test binary,
//! because it installs the process-wide subscriber with the SDK's in-memory exporter.

use std::time::Duration;

use heimdex_telemetry::testing::{TestTelemetry, parent_span_id_of, span_id_of, trace_id_of};
use heimdex_tests::{TestApp, eventually};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_post_worker_and_upsert() {
    let telemetry = TestTelemetry::global().expect("test subscriber installs");
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    // The client's own trace continues into Heimdex through the HTTP `traceparent` header.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let accepted: serde_json::Value = app
        .http
        .post(app.url("/vectors/mock"))
        .bearer_auth(&token)
        .header(
            "traceparent",
            format!("00-{client_trace}-00f067aa0ba902b7-01"),
        )
        .json(&serde_json::json!({"asset_id": "traced", "segment_id": "seg-0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let job = app
        .wait_for_job(&token, &job_id, "SUCCEEDED", Duration::from_secs(20))
        .await;
    assert_eq!(job["status"], "SUCCEEDED");

    // The worker's spans close after it acknowledges; poll the exporter until they are there.
    let (submit, worker, upsert) = eventually(Duration::from_secs(10), || async {
        let spans = telemetry.finished_spans();
        let find = |name: &str| {
            spans
                .iter()
                .find(|s| {
                    s.name == name
                        && s.attributes
                            .iter()
                            .any(|kv| kv.value.as_str().contains(&job_id))
                })
                .cloned()
        };
        let submit = find("submit")?;
        let worker = find("worker.job")?;
        let upsert = spans
            .iter()
            .find(|s| {
                s.name == "vector_store.upsert" && parent_span_id_of(s) == span_id_of(&worker)
            })
            .cloned()?;
        Some((submit, worker, upsert))
    })
    .await
    .expect("submit, worker.job and vector_store.upsert spans exported");

    let trace = trace_id_of(&submit);
    assert_eq!(trace, client_trace, "the API continues the client's trace");
    assert_eq!(
        trace_id_of(&worker),
        trace,
        "worker continues the API's trace"
    );
    assert_eq!(trace_id_of(&upsert), trace, "upsert is in the same trace");
    assert_eq!(
        parent_span_id_of(&worker),
        span_id_of(&submit),
        "worker.job's parent is the publishing span"
    );
    app.stop().await;
}

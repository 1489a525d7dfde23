//! One trace covers POST → publish → worker (consume, embed, upsert): the API injects
//! `traceparent` into the `requested` event's headers and the worker continues it; the
//! projector's batch span links to it.
//!
//! * `traces_reach_a_real_receiver_over_both_protocols`: the real `heimdex serve` binary with
//!   `RUST_LOG=warn`, exporting to an OTLP receiver over gRPC and then over HTTP/protobuf.
//! * `one_trace_spans_post_worker_and_upsert`: the same trace in-process, through the SDK's
//!   in-memory exporter, continuing a client's own `traceparent`. Its own test binary, because
//!   it installs the process-wide subscriber.

mod otlp;

use std::time::Duration;

use heimdex_telemetry::testing::{TestTelemetry, parent_span_id_of, span_id_of, trace_id_of};
use heimdex_tests::{ServeProcess, TestApp, eventually, wait_for_job};
use uuid::Uuid;

use otlp::{Protocol, Receiver};

/// OTLP's `SpanKind` numbers.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_a_real_receiver_over_both_protocols() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        one_job_traced_at_warn(protocol).await;
    }
}

async fn one_job_traced_at_warn(protocol: Protocol) {
    let receiver = Receiver::start(protocol).await;
    let endpoint = receiver.endpoint();
    let mut serve = ServeProcess::start(&[
        ("RUST_LOG", "warn"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
        // Export every 200 ms instead of every 5 s; the SDK reads this one itself.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let http = reqwest::Client::new();
    let token = serve.token(Uuid::new_v4());
    let accepted: serde_json::Value = http
        .post(format!("{}/vectors/mock", serve.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"asset_id": "traced", "segment_id": "seg-0"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("202 body");
    let job_id = accepted["job_id"].as_str().expect("job_id").to_owned();
    let job = wait_for_job(
        &http,
        &serve.base,
        &token,
        &job_id,
        "SUCCEEDED",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    // A graceful stop flushes what the batch processor still holds.
    let status = serve.terminate().await;
    assert!(
        status.success(),
        "serve exited with {status}\n{}",
        serve.log()
    );
    let log = serve.log();

    let spans = receiver.spans();
    let context = format!(
        "{protocol:?}: {} spans in {} requests; log:\n{log}",
        spans.len(),
        receiver.requests()
    );
    let publish = spans
        .iter()
        .find(|s| s.name == "publish" && s.attributes.get("job_id") == Some(&job_id))
        .unwrap_or_else(|| panic!("no publish span for the job; {context}"));
    let trace = publish.trace_id.clone();
    let in_trace: Vec<&otlp::Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let find = |name: &str| {
        in_trace
            .iter()
            .find(|s| s.name == name)
            .copied()
            .unwrap_or_else(|| {
                let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
                panic!("no {name} span in the job's trace {names:?}; {context}")
            })
    };

    let request = find("POST /vectors/mock");
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.parent_span_id, "", "the request starts the trace");
    assert_eq!(request.attributes["http.route"], "/vectors/mock");
    assert_eq!(request.attributes["http.response.status_code"], "202");
    assert_eq!(request.service, "heimdex");

    assert_eq!(publish.kind, PRODUCER);
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.attributes["messaging.system"], "nats");

    let consume = find("worker.consume");
    assert_eq!(consume.kind, CONSUMER);
    assert_eq!(
        consume.parent_span_id, publish.span_id,
        "the worker continues the publish span's trace"
    );
    let embed = find("worker.embed");
    assert_eq!(embed.parent_span_id, consume.span_id);
    assert_eq!(embed.attributes["model"], "mock");
    let upsert = find("vector_store.upsert");
    assert_eq!(upsert.parent_span_id, consume.span_id);

    // The projector folds many jobs per write: its span links to the job's trace.
    let applied = spans
        .iter()
        .filter(|s| s.name == "projector.apply")
        .any(|s| s.links.iter().any(|(trace_id, _)| *trace_id == trace));
    assert!(
        applied,
        "no projector.apply span links to the trace; {context}"
    );

    // RUST_LOG=warn held for the logs: the start-up INFO lines are not there.
    assert!(!log.contains("INFO"), "{log}");
}

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
    let (publish, consume, upsert) = eventually(Duration::from_secs(10), || async {
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
        let publish = find("publish")?;
        let consume = find("worker.consume")?;
        let upsert = spans
            .iter()
            .find(|s| {
                s.name == "vector_store.upsert" && parent_span_id_of(s) == span_id_of(&consume)
            })
            .cloned()?;
        Some((publish, consume, upsert))
    })
    .await
    .expect("publish, worker.consume and vector_store.upsert spans exported");

    let trace = trace_id_of(&publish);
    assert_eq!(trace, client_trace, "the API continues the client's trace");
    assert_eq!(
        trace_id_of(&consume),
        trace,
        "worker continues the API's trace"
    );
    assert_eq!(trace_id_of(&upsert), trace, "upsert is in the same trace");
    assert_eq!(
        parent_span_id_of(&consume),
        span_id_of(&publish),
        "worker.consume's parent is the publishing span"
    );
    app.stop().await;
}

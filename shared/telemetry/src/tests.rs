use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::subscriber::with_default;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::*;
use crate::testing::{TestTelemetry, parent_span_id_of, span_id_of, trace_id_of};

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `00-<32 hex>-<16 hex>-01` with non-zero ids; returns (trace id, span id).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?} must have 4 fields");
    assert_eq!(parts[0], "00", "version in {value:?}");
    assert!(is_lower_hex(parts[1], 32), "trace id in {value:?}");
    assert!(is_lower_hex(parts[2], 16), "span id in {value:?}");
    assert_eq!(parts[3], "01", "sampled flag in {value:?}");
    assert_ne!(parts[1], "0".repeat(32), "zero trace id in {value:?}");
    assert_ne!(parts[2], "0".repeat(16), "zero span id in {value:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Producer side: a `publish` span that injects its context; returns (headers, trace id, span id).
fn publish(telemetry: &TestTelemetry) -> (HeaderMap, String, String) {
    with_default(telemetry.subscriber(), || {
        let span = tracing::info_span!("publish");
        let _entered = span.enter();
        let mut headers = HeaderMap::new();
        inject_context(&mut headers);
        let span_context = span.context().span().span_context().clone();
        (
            headers,
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

#[test]
fn nats_headers_roundtrip_continues_the_trace() {
    let producer = TestTelemetry::new();
    let (headers, trace_id, span_id) = publish(&producer);

    let traceparent = headers
        .get("traceparent")
        .expect("traceparent header injected")
        .as_str()
        .to_owned();
    let (tp_trace, tp_span) = parse_traceparent(&traceparent);
    assert_eq!(tp_trace, trace_id);
    assert_eq!(tp_span, span_id);

    // The producer span was exported with the same ids.
    let published = producer.find("publish").expect("publish span exported");
    assert_eq!(trace_id_of(&published), trace_id);
    assert_eq!(span_id_of(&published), span_id);

    // Consumer side: a separate pipeline, as in another process.
    let consumer = TestTelemetry::new();
    let seen_inside = with_default(consumer.subscriber(), || {
        let span = tracing::info_span!("consume");
        set_parent_from_headers(&span, Some(&headers));
        let _entered = span.enter();
        current_trace_id()
    });
    assert_eq!(seen_inside.as_deref(), Some(trace_id.as_str()));

    let consumed = consumer.find("consume").expect("consume span exported");
    assert_eq!(trace_id_of(&consumed), trace_id);
    assert_eq!(parent_span_id_of(&consumed), span_id);
    assert!(consumed.parent_span_is_remote);
    assert_eq!(consumer.spans_in_trace(&trace_id).len(), 1);
}

#[test]
fn child_spans_of_the_consumer_stay_in_the_trace() {
    let telemetry = TestTelemetry::new();
    let (headers, trace_id, _) = publish(&telemetry);
    with_default(telemetry.subscriber(), || {
        let span = tracing::info_span!("consume");
        set_parent_from_headers(&span, Some(&headers));
        let _entered = span.enter();
        let upsert = tracing::debug_span!("upsert");
        let _upsert = upsert.enter();
    });
    let consume = telemetry.find("consume").expect("consume span");
    let upsert = telemetry.find("upsert").expect("upsert span");
    assert_eq!(trace_id_of(&upsert), trace_id);
    assert_eq!(parent_span_id_of(&upsert), span_id_of(&consume));
    let mut names: Vec<String> = telemetry
        .spans_in_trace(&trace_id)
        .iter()
        .map(|span| span.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["consume", "publish", "upsert"]);
}

#[test]
fn without_headers_the_consumer_starts_a_new_trace() {
    let telemetry = TestTelemetry::new();
    let (_, trace_id, _) = publish(&telemetry);
    with_default(telemetry.subscriber(), || {
        let span = tracing::info_span!("consume");
        set_parent_from_headers(&span, None);
        set_parent_from_headers(&span, Some(&HeaderMap::new()));
        let _entered = span.enter();
    });
    let consumed = telemetry.find("consume").expect("consume span exported");
    assert_ne!(trace_id_of(&consumed), trace_id);
    assert_eq!(parent_span_id_of(&consumed), "0".repeat(16));
}

#[test]
fn malformed_traceparent_is_ignored() {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", "00-not-a-trace-01");
    assert!(
        !extract_context(Some(&headers))
            .span()
            .span_context()
            .is_valid()
    );
    assert!(!extract_context(None).span().span_context().is_valid());
}

#[test]
fn extract_reads_tracestate_and_case_insensitive_names() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    headers.insert("tracestate", "vendor=abc");
    let cx = extract_context(Some(&headers));
    let span = cx.span();
    let span_context = span.span_context();
    assert!(span_context.is_valid());
    assert!(span_context.is_remote());
    assert_eq!(
        span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(span_context.span_id().to_string(), "b7ad6b7169203331");
    assert_eq!(span_context.trace_state().get("vendor"), Some("abc"));

    // And it round-trips back out through the injector.
    let mut out = HeaderMap::new();
    PROPAGATOR.inject_context(&cx, &mut HeaderInjector(&mut out));
    assert_eq!(
        out.get("traceparent").map(HeaderValue::as_str),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(
        out.get("tracestate").map(HeaderValue::as_str),
        Some("vendor=abc")
    );
}

#[test]
fn injector_skips_invalid_values_and_extractor_lists_keys() {
    let mut headers = HeaderMap::new();
    let mut injector = HeaderInjector(&mut headers);
    injector.set("traceparent", "ok".to_owned());
    injector.set("tracestate", "bad\r\nvalue".to_owned());
    injector.set("bad:name", "x".to_owned());
    let extractor = HeaderExtractor(&headers);
    assert_eq!(extractor.get("traceparent"), Some("ok"));
    assert_eq!(extractor.get("tracestate"), None);
    assert_eq!(extractor.keys(), vec!["traceparent"]);
}

#[test]
fn inject_outside_a_span_writes_nothing() {
    let telemetry = TestTelemetry::new();
    with_default(telemetry.subscriber(), || {
        let mut headers = HeaderMap::new();
        inject_context(&mut headers);
        assert!(headers.is_empty());
        assert_eq!(current_trace_id(), None);
    });
}

#[test]
fn current_trace_id_is_hex_inside_a_span() {
    let telemetry = TestTelemetry::new();
    let id = with_default(telemetry.subscriber(), || {
        let span = tracing::info_span!("work");
        let _entered = span.enter();
        current_trace_id()
    })
    .expect("trace id inside a span");
    assert!(is_lower_hex(&id, 32), "{id}");
    let work = telemetry.find("work").expect("work span");
    assert_eq!(trace_id_of(&work), id);
}

#[test]
fn set_default_guard_collects_spans_on_this_thread() {
    let telemetry = TestTelemetry::new();
    {
        let _guard = telemetry.set_default();
        let span = tracing::info_span!("guarded");
        let _entered = span.enter();
    }
    assert!(telemetry.find("guarded").is_some());
    telemetry.reset();
    assert!(telemetry.finished_spans().is_empty());
}

#[test]
fn transport_targets_are_excluded_from_export() {
    assert!(is_transport_target("h2::codec"));
    assert!(is_transport_target("hyper_util::client"));
    assert!(is_transport_target("tonic"));
    assert!(is_transport_target("opentelemetry_sdk::trace"));
    assert!(!is_transport_target("heimdex_worker::consumer"));
    assert!(!is_transport_target("hyperloop"));
}

#[test]
fn config_defaults_and_log_format_parsing() {
    let cfg = TelemetryConfig::new("worker");
    assert_eq!(cfg.service_name, "worker");
    assert_eq!(cfg.filter, "info");
    assert_eq!(cfg.otlp_endpoint, None);
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!("JSON".parse::<LogFormat>().ok(), Some(LogFormat::Json));
    assert_eq!("pretty".parse::<LogFormat>().ok(), Some(LogFormat::Pretty));
    assert!("yaml".parse::<LogFormat>().is_err());
    assert_eq!(cfg.trace_filter, "info");
    assert_eq!(cfg.otlp_protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(cfg.sampler, TraceSampler::default());
    assert!(env_filter("", DEFAULT_FILTER).is_ok());
    assert!(env_filter("info,heimdex_worker=debug", DEFAULT_FILTER).is_ok());
    assert!(matches!(
        env_filter("heimdex=[bad", DEFAULT_FILTER),
        Err(TelemetryError::InvalidFilter { .. })
    ));
}

//! `init` installs the global subscriber once; later calls error instead of panicking.
//! (Own test binary: the global subscriber is per process.)

use heimdex_telemetry::{
    LogFormat, OtlpProtocol, TelemetryConfig, TelemetryError, current_trace_id, init,
};

#[test]
fn init_succeeds_once_then_errors() {
    let mut cfg = TelemetryConfig::new("init-test");
    cfg.log_format = LogFormat::Pretty;

    // OTLP/gRPC export needs a Tokio runtime; failing here must not consume the one-time init.
    cfg.otlp_endpoint = Some("http://127.0.0.1:4317".to_owned());
    cfg.otlp_protocol = OtlpProtocol::Grpc;
    assert!(matches!(init(&cfg), Err(TelemetryError::NoTokioRuntime)));
    cfg.otlp_endpoint = None;

    cfg.filter = "heimdex=[bad".to_owned();
    assert!(matches!(
        init(&cfg),
        Err(TelemetryError::InvalidFilter { .. })
    ));
    cfg.filter = "warn".to_owned();
    cfg.trace_filter = "heimdex=[bad".to_owned();
    assert!(matches!(
        init(&cfg),
        Err(TelemetryError::InvalidFilter { .. })
    ));
    cfg.trace_filter = String::new();

    let guard = init(&cfg).expect("first valid init succeeds");
    assert!(!guard.exporting());
    assert!(matches!(
        init(&cfg),
        Err(TelemetryError::AlreadyInitialized)
    ));
    assert!(tracing::dispatcher::has_been_set());

    // No OpenTelemetry layer without an endpoint: no trace ids.
    let span = tracing::warn_span!("no-otel");
    let _entered = span.enter();
    assert_eq!(current_trace_id(), None);
    drop(guard);
}

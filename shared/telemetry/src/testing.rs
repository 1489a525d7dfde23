//! Test support: an OpenTelemetry pipeline that keeps finished spans in memory.
//!
//! Enable with `heimdex-telemetry = { workspace = true, features = ["testing"] }` in
//! `[dev-dependencies]`.
//!
//! ```ignore
//! let telemetry = heimdex_telemetry::testing::TestTelemetry::new();
//! let _guard = telemetry.set_default(); // this thread (and current-thread Tokio runtimes)
//! // ... run code that publishes / consumes NATS messages ...
//! let spans = telemetry.spans_in_trace(&trace_id);
//! ```
//!
//! Spans are exported synchronously (simple span processor) the moment they close, so they
//! are visible to [`TestTelemetry::finished_spans`] right after the span is dropped.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use crate::TelemetryError;

/// Handle to an in-memory span pipeline. Cheap to clone; clones share the same spans.
#[derive(Debug, Clone)]
pub struct TestTelemetry {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

impl Default for TestTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTelemetry {
    /// A fresh pipeline (nothing is installed yet; see [`Self::set_default`] / [`Self::subscriber`]).
    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    /// A subscriber with the OpenTelemetry layer feeding this handle (all levels), for
    /// `tracing::subscriber::with_default`. If `RUST_LOG` is set, log lines are also written
    /// to the test output, filtered by it.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let logs = std::env::var("RUST_LOG")
            .ok()
            .and_then(|directives| EnvFilter::try_new(directives).ok())
            .map(|filter| {
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter)
            });
        tracing_subscriber::registry()
            .with(crate::otel_layer(
                self.provider.tracer("heimdex-telemetry-test"),
            ))
            .with(logs)
    }

    /// Installs [`Self::subscriber`] as this thread's default until the guard drops. Spans
    /// created on other threads (multi-thread runtimes, `spawn_blocking`) are NOT seen; use
    /// [`TestTelemetry::global`] for those.
    pub fn set_default(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.subscriber())
    }

    /// The process-wide test pipeline, installed as the global subscriber on first call and
    /// returned (shared) on every later call. Since tests in one binary run in parallel and
    /// share it, select spans with [`Self::spans_in_trace`] rather than [`Self::reset`].
    ///
    /// Errors if a different global subscriber was installed first (e.g. by [`crate::init`]).
    pub fn global() -> Result<Self, TelemetryError> {
        static GLOBAL: OnceLock<Option<TestTelemetry>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let telemetry = Self::new();
                telemetry.subscriber().try_init().ok().map(|()| telemetry)
            })
            .clone()
            .ok_or(TelemetryError::AlreadyInitialized)
    }

    /// All spans finished so far, in the order they ended.
    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    /// Finished spans belonging to the trace with this hex id (as from [`crate::current_trace_id`]).
    pub fn spans_in_trace(&self, trace_id_hex: &str) -> Vec<SpanData> {
        self.finished_spans()
            .into_iter()
            .filter(|span| trace_id_of(span).eq_ignore_ascii_case(trace_id_hex))
            .collect()
    }

    /// The most recently finished span with this name.
    pub fn find(&self, name: &str) -> Option<SpanData> {
        self.finished_spans()
            .into_iter()
            .rev()
            .find(|span| span.name == name)
    }

    /// Forgets all finished spans.
    pub fn reset(&self) {
        self.exporter.reset();
    }

    /// The underlying SDK exporter, for anything not covered above.
    pub fn exporter(&self) -> &InMemorySpanExporter {
        &self.exporter
    }
}

/// A finished span's trace id as 32 lowercase hex characters.
pub fn trace_id_of(span: &SpanData) -> String {
    span.span_context.trace_id().to_string()
}

/// A finished span's span id as 16 lowercase hex characters.
pub fn span_id_of(span: &SpanData) -> String {
    span.span_context.span_id().to_string()
}

/// A finished span's parent span id as 16 lowercase hex characters (all zeros for roots).
pub fn parent_span_id_of(span: &SpanData) -> String {
    span.parent_span_id.to_string()
}

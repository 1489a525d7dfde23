//! Heimdex telemetry: one place that wires `tracing` logs and OpenTelemetry traces for every
//! service (api, worker, projector), and carries W3C trace context across NATS messages.
//!
//! * [`init`] installs the process-wide subscriber (JSON/pretty logs on stderr, filtered by
//!   `RUST_LOG`, and optional OTLP trace export over gRPC or HTTP/protobuf with a filter of its
//!   own, so traces survive quiet logs) and returns a [`TelemetryGuard`] that flushes on drop.
//! * [`inject_context`] / [`extract_context`] / [`set_parent_from_headers`] move the current
//!   trace across NATS headers (`traceparent`, `tracestate`); [`add_link_from_headers`] links a
//!   span that serves many messages to each message's trace.
//! * [`current_trace_id`] returns the current span's trace id as 32 lowercase hex characters.
//! * [`metrics`]: the Prometheus recorder behind the `metrics` facade, and the catalogue of
//!   every metric Heimdex exports.
//! * `testing` (cargo feature `testing`) collects finished spans in memory for tests.

use std::io::IsTerminal;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

mod export;
pub mod metrics;
mod noise;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use export::{OtlpProtocol, RootSampler, SamplerError, TraceSampler, traces_url};
pub use noise::{KNOWN_NOISE, KnownNoise};

/// Re-exported so callers can name `opentelemetry::Context` without their own dependency
/// (and without risking a second, incompatible `opentelemetry` version).
pub use opentelemetry;
/// Re-exported for callers that want `span.set_parent(..)` / `span.context()` directly.
pub use tracing_opentelemetry::OpenTelemetrySpanExt as SpanExt;

/// Filter directive used when [`TelemetryConfig::filter`] is empty.
pub const DEFAULT_FILTER: &str = "info";
/// Filter directive used when [`TelemetryConfig::trace_filter`] is empty: every span Heimdex
/// makes is at INFO, so this exports all of them whatever the log level.
pub const DEFAULT_TRACE_FILTER: &str = "info";

/// How log lines are rendered on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable, coloured when stderr is a terminal (development).
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = TelemetryError;

    /// Accepts `json` or `pretty` (case-insensitive; `text`/`human` are aliases of `pretty`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" | "human" => Ok(Self::Pretty),
            _other => Err(TelemetryError::InvalidLogFormat(s.to_owned())),
        }
    }
}

/// Telemetry settings shared by all services.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Reported as the OpenTelemetry `service.name` resource attribute.
    pub service_name: String,
    pub log_format: LogFormat,
    /// OTLP collector endpoint (a base URL, e.g. `http://otel-collector:4318`). `None`
    /// disables export.
    pub otlp_endpoint: Option<String>,
    /// How spans are sent to `otlp_endpoint`.
    pub otlp_protocol: OtlpProtocol,
    /// Which traces are kept.
    pub sampler: TraceSampler,
    /// `RUST_LOG`-style directives for the log lines on stderr, e.g.
    /// `info,heimdex_worker=debug`. Empty means `info`. They do not touch exported spans.
    pub filter: String,
    /// The same kind of directives for exported spans, applied on their own: `RUST_LOG=warn`
    /// keeps the logs quiet and the traces whole. Empty means `info`.
    pub trace_filter: String,
}

impl TelemetryConfig {
    /// Config with the given service name and defaults for everything else.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            ..Self::default()
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "heimdex".to_owned(),
            log_format: LogFormat::default(),
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sampler: TraceSampler::default(),
            filter: DEFAULT_FILTER.to_owned(),
            trace_filter: DEFAULT_TRACE_FILTER.to_owned(),
        }
    }
}

/// Errors from [`init`] (and [`testing`] installation).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialized,
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("invalid log format {0:?} (expected `json` or `pretty`)")]
    InvalidLogFormat(String),
    #[error(
        "invalid OTLP protocol {0:?} (expected `grpc` or `http/protobuf`; `http/json` is not supported)"
    )]
    InvalidProtocol(String),
    #[error(
        "OTLP export needs a Tokio runtime: call `init` from inside one (e.g. in `#[tokio::main]`)"
    )]
    NoTokioRuntime,
    #[error("building the OTLP span exporter failed: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the global tracing subscriber failed: {0}")]
    SetGlobalSubscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; flushes pending spans and shuts the exporter down on drop.
///
/// Hold it for the whole life of `main` (`let _telemetry = init(&cfg)?;`). Drop it while the
/// Tokio runtime is still running so the final export can complete.
#[must_use = "dropping the guard immediately shuts trace export down"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            // The subscriber may be the thing that is failing; write directly.
            eprintln!("heimdex-telemetry: trace provider shutdown failed: {err}");
        }
    }
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Installs the global tracing subscriber (and, with an OTLP endpoint, the OpenTelemetry
/// pipeline) and sets the global text-map propagator to W3C TraceContext.
///
/// Each layer has its own filter: the log lines follow `filter` (`RUST_LOG`), the exported
/// spans follow `trace_filter` and then the sampler, so a quiet log level never empties the
/// traces, and verbose logs never flood the collector.
///
/// Succeeds at most once per process; later calls return [`TelemetryError::AlreadyInitialized`].
/// A failed call can be retried. With gRPC export it must run inside a Tokio runtime (the tonic
/// channel is bound to it); spans are exported by a batch span processor.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if INITIALIZED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(TelemetryError::AlreadyInitialized);
    }
    let result = try_init(cfg);
    if result.is_err() {
        INITIALIZED.store(false, Ordering::Release);
    }
    result
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

fn try_init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    // Both drop the dependencies' known meaningless warnings (module `noise`).
    let log_filter = env_filter(&cfg.filter, DEFAULT_FILTER)?.and(KnownNoise);
    let trace_filter = env_filter(&cfg.trace_filter, DEFAULT_TRACE_FILTER)?.and(KnownNoise);

    let provider = match cfg.otlp_endpoint.as_deref() {
        Some(endpoint) => Some(export::otlp_provider(
            &cfg.service_name,
            endpoint,
            cfg.otlp_protocol,
            cfg.sampler,
        )?),
        None => None,
    };

    let fmt_layer: BoxedLayer = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let mut layers = vec![fmt_layer];
    if let Some(provider) = &provider {
        layers.push(
            otel_layer(provider.tracer(tracer_name(&cfg.service_name)))
                .with_filter(trace_filter)
                .boxed(),
        );
    }

    let installed = tracing_subscriber::registry().with(layers).try_init();
    if let Err(err) = installed {
        if let Some(provider) = provider {
            let _ignored = provider.shutdown();
        }
        return Err(err.into());
    }

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    if let Some(endpoint) = &cfg.otlp_endpoint {
        export::warn_on_port_mismatch(endpoint, cfg.otlp_protocol);
    }
    Ok(TelemetryGuard { provider })
}

fn env_filter(filter: &str, default: &str) -> Result<EnvFilter, TelemetryError> {
    let directives = if filter.trim().is_empty() {
        default
    } else {
        filter
    };
    EnvFilter::try_new(directives).map_err(|source| TelemetryError::InvalidFilter {
        filter: filter.to_owned(),
        source,
    })
}

fn tracer_name(service_name: &str) -> String {
    if service_name.is_empty() {
        env!("CARGO_PKG_NAME").to_owned()
    } else {
        service_name.to_owned()
    }
}

/// The OpenTelemetry layer, minus spans from the exporter's own transport stack (which would
/// otherwise feed back into the exporter when verbose filters are used).
pub(crate) fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            !is_transport_target(meta.target())
        }))
        .boxed()
}

fn is_transport_target(target: &str) -> bool {
    const TRANSPORT: [&str; 10] = [
        "h2",
        "hyper",
        "hyper_util",
        "reqwest",
        "tonic",
        "tower",
        "opentelemetry",
        "opentelemetry_http",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
    ];
    let krate = target.split("::").next().unwrap_or(target);
    TRANSPORT.contains(&krate)
}

// ---------------------------------------------------------------------------------------------
// NATS propagation
// ---------------------------------------------------------------------------------------------

/// W3C TraceContext is Heimdex's wire format, so propagation does not depend on whether
/// [`init`] (which also sets the global propagator) ran in this process.
static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// [`Injector`] writing into NATS message headers. Invalid names/values are skipped, never panic.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (key.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            self.0.insert(name, value);
        }
    }
}

/// [`Extractor`] reading NATS message headers. Lookups fall back to a case-insensitive match.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if let Ok(name) = key.parse::<HeaderName>()
            && let Some(value) = self.0.get(name)
        {
            return Some(value.as_str());
        }
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current tracing span's trace context (`traceparent`, plus `tracestate` when
/// non-empty) into `headers`. Does nothing when there is no sampled/valid current span.
pub fn inject_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    PROPAGATOR.inject_context(&cx, &mut HeaderInjector(headers));
}

/// Reads a remote trace context from NATS headers. Missing or malformed headers yield an empty
/// context (whose span context is invalid).
pub fn extract_context(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => PROPAGATOR
            .extract_with_context(&opentelemetry::Context::new(), &HeaderExtractor(headers)),
        None => opentelemetry::Context::new(),
    }
}

/// Makes `span` a child of the trace context carried in `headers`, continuing the producer's
/// trace. Call it right after creating the span and BEFORE entering/instrumenting with it
/// (a started span's parent can no longer change). If the headers carry no valid context the
/// span is left untouched.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let cx = extract_context(headers);
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(error = %err, "could not continue trace from NATS headers");
    }
}

/// Links `span` to the trace context carried in `headers`: for a span that serves many messages
/// at once (a batch), which has no single parent but belongs to each message's trace. Headers
/// without a valid context add nothing. The SDK keeps at most 128 links per span.
pub fn add_link_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let cx = extract_context(headers);
    let span_context = cx.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}

/// Renames `span` in the exported trace (its tracing name is static): for a name known only
/// once the work is done, such as an HTTP request's route. Does nothing without an
/// OpenTelemetry layer.
pub fn set_span_name(span: &tracing::Span, name: impl Into<std::borrow::Cow<'static, str>>) {
    span.context().span().update_name(name.into());
}

/// Like [`set_parent_from_headers`], for any transport: makes `span` a child of the W3C trace
/// context given by a `traceparent` (and optional `tracestate`) value — e.g. the HTTP headers
/// of an incoming request, so a client's trace continues into Heimdex. Invalid or absent
/// values leave the span a root.
pub fn set_parent_from_traceparent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(tracestate) = tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let cx = PROPAGATOR.extract_with_context(&opentelemetry::Context::new(), &carrier);
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(err) = span.set_parent(cx) {
        tracing::debug!(error = %err, "could not continue trace from traceparent");
    }
}

/// The current span's OpenTelemetry trace id as 32 lowercase hex characters, or `None` when
/// there is no current span or no OpenTelemetry layer is installed.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests;

/// An error and its causes on one line, `outer: inner: root`: how errors are logged, so a log
/// line carries the whole chain of `#[source]`s and not only the outermost message.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

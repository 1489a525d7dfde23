//! Prometheus metrics: the process-wide recorder, and the catalogue of every metric Heimdex
//! exports.
//!
//! The crates that count use the [`metrics`] facade's macros (`counter!`, `histogram!`,
//! `gauge!`) with the names below; [`install`] puts the Prometheus recorder behind them once per
//! process, and [`render`] is what `GET /metrics` answers, in the Prometheus text format
//! (version 0.0.4). Until [`install`] runs, the macros count nothing, at no cost.
//!
//! Names follow Prometheus' conventions: the `heimdex_` prefix, base units in the name
//! (`_seconds`), `_total` on counters. Every label takes values from a small, fixed set (a route
//! *template*, a job type, an error code, an operation...): never an org id, a job id or a raw
//! path, so the number of series stays bounded whatever the traffic.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What kind of metric a [`MetricDef`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric: its name, kind, labels and meaning (the `# HELP` line).
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric Heimdex exports. The README's "Metrics" section, the dashboard and the alert
/// rules in `deploy/` name these (a test checks that they name nothing else).
pub const CATALOGUE: &[MetricDef] = &[
    def(
        "heimdex_build_info",
        Kind::Gauge,
        &["version"],
        "Always 1; the version of the running binary.",
    ),
    def(
        "heimdex_http_request_duration_seconds",
        Kind::Histogram,
        &["route", "method", "status"],
        "HTTP requests by route template (`unmatched` for a 404), method and status code.",
    ),
    def(
        "heimdex_http_connections_refused_total",
        Kind::Counter,
        &[],
        "Connections refused at once because HEIMDEX_MAX_CONNECTIONS were open.",
    ),
    def(
        "heimdex_requests_refused_total",
        Kind::Counter,
        &["reason"],
        "Job submissions refused before anything was stored: `rate_limited` (429) or \
         `backlog_full` (503).",
    ),
    def(
        "heimdex_jobs_accepted_total",
        Kind::Counter,
        &["job_type"],
        "Jobs created (their `requested` event stored); a duplicate submission is not counted.",
    ),
    def(
        "heimdex_jobs_succeeded_total",
        Kind::Counter,
        &["job_type"],
        "Job rounds that ended in success (their `succeeded` event stored).",
    ),
    def(
        "heimdex_jobs_failed_total",
        Kind::Counter,
        &["job_type", "code"],
        "Job rounds that ended in failure (their `failed` event stored), by error code.",
    ),
    def(
        "heimdex_job_retries_total",
        Kind::Counter,
        &["job_type", "code"],
        "Attempts that failed in a way that may pass and were scheduled for another delivery.",
    ),
    def(
        "heimdex_job_duration_seconds",
        Kind::Histogram,
        &["job_type", "outcome"],
        "From a job's request (or retry) to its end being stored: queueing included.",
    ),
    def(
        "heimdex_worker_backlog_jobs",
        Kind::Gauge,
        &[],
        "Jobs waiting for or held by workers: the `worker` consumer's pending plus ack-pending.",
    ),
    def(
        "heimdex_projector_lag_events",
        Kind::Gauge,
        &[],
        "Events the projector has not applied yet: the `projector` consumer's pending plus \
         ack-pending.",
    ),
    def(
        "heimdex_nats_up",
        Kind::Gauge,
        &[],
        "1 when the last check of the job stream (JetStream) answered, else 0.",
    ),
    def(
        "heimdex_vector_store_up",
        Kind::Gauge,
        &["backend"],
        "1 when the last probe of the vector store answered, else 0.",
    ),
    def(
        "heimdex_embed_batch_texts",
        Kind::Histogram,
        &["priority"],
        "Texts per call of the embedding queue (`query` for search, `bulk` for ingest; merged \
         batches count as one call).",
    ),
    def(
        "heimdex_embed_duration_seconds",
        Kind::Histogram,
        &["priority"],
        "Duration of one call of the embedding queue (a bulk call includes the queries served \
         between its steps).",
    ),
    def(
        "heimdex_vector_store_operation_duration_seconds",
        Kind::Histogram,
        &["operation", "backend", "outcome"],
        "Vector-store operations by operation, backend (`embedded` or `remote`) and outcome.",
    ),
    def(
        "heimdex_vector_store_optimizing",
        Kind::Gauge,
        &["collection"],
        "Embedded store: 1 while a run of its optimizers (HNSW indexing, merging, vacuum) is \
         due or under way, else 0. A due run waits for the writes to pause (a second without \
         one, at most 10 s); writes and searches go on meanwhile.",
    ),
    def(
        "heimdex_vector_store_optimize_duration_seconds",
        Kind::Histogram,
        &["collection"],
        "Embedded store: one run of its optimizers, to its end.",
    ),
    def(
        "heimdex_vector_store_flush_duration_seconds",
        Kind::Histogram,
        &["collection"],
        "Embedded store: one flush (every file of every segment synced), which the writes \
         queued meanwhile share; a write returns once one covers it.",
    ),
    def(
        "heimdex_vector_store_held_writes",
        Kind::Gauge,
        &["collection"],
        "Embedded store: deletes and updates of existing points applied while an optimizer run \
         rebuilds the segments they change, and not yet answered: the first flush after the run \
         makes them durable and answers them.",
    ),
    def(
        "heimdex_vector_store_flushed_writes_total",
        Kind::Counter,
        &["collection"],
        "Embedded store: writes covered by a flush; divided by the flushes \
         (`heimdex_vector_store_flush_duration_seconds_count`), the writes a flush shares.",
    ),
    def(
        "heimdex_vector_store_points",
        Kind::Gauge,
        &["collection"],
        "Embedded store: points held, read every few seconds and at the end of each optimizer \
         run.",
    ),
    def(
        "heimdex_vector_store_indexed_vectors",
        Kind::Gauge,
        &["collection"],
        "Embedded store: vectors covered by an index (HNSW, or the keyword vector's inverted \
         index), read every few seconds and at the end of each optimizer run; the rest are \
         scanned.",
    ),
    def(
        "heimdex_vector_store_wal_bytes",
        Kind::Gauge,
        &["collection"],
        "Embedded store: disk taken by Qdrant Edge's write-ahead log, at the store's open, \
         about once a second while it writes, and after each optimizer run. Edge 0.7 never \
         truncates it; the store frees all but its newest closed segment and its open ones.",
    ),
    def(
        "heimdex_search_duration_seconds",
        Kind::Histogram,
        &["mode", "query"],
        "Successful searches, from the query's embedding to the ranked results, by the mode \
         that ran (`hybrid`, `dense`, `keyword`) and the query's kind (`text` or `vector`).",
    ),
];

/// The catalogue entry named `name`.
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    CATALOGUE.iter().find(|def| def.name == name)
}

/// Bucket bounds of the `_seconds` histograms: 0.5 ms to a minute.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// A job's latency includes its time in the queue, and an optimizer run of a large collection
/// takes minutes: up to an hour.
const JOB_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];
/// Texts per embedding call, up to the queue's largest merged call (1,024).
const TEXTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle) and describes every metric of the [`CATALOGUE`].
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = buckets(PrometheusBuilder::new()).build_recorder();
        let handle = recorder.handle();
        if let Err(err) = metrics::set_global_recorder(recorder) {
            // Only another recorder installed first can cause this; /metrics then stays empty.
            tracing::error!(%err, "cannot install the Prometheus recorder");
        }
        describe();
        metrics::gauge!("heimdex_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let with = |builder: PrometheusBuilder, matcher, bounds: &[f64]| {
        // Only an empty list of bounds is refused, and none of ours is empty.
        builder.set_buckets_for_metric(matcher, bounds)
    };
    let configured = with(
        builder,
        Matcher::Full("heimdex_job_duration_seconds".into()),
        JOB_SECONDS,
    )
    .and_then(|b| {
        with(
            b,
            Matcher::Full("heimdex_vector_store_optimize_duration_seconds".into()),
            JOB_SECONDS,
        )
    })
    .and_then(|b| with(b, Matcher::Suffix("_seconds".into()), SECONDS))
    .and_then(|b| with(b, Matcher::Full("heimdex_embed_batch_texts".into()), TEXTS));
    match configured {
        Ok(builder) => builder,
        Err(err) => unreachable!("bucket bounds are not empty: {err}"),
    }
}

fn describe() {
    for def in CATALOGUE {
        match def.kind {
            Kind::Counter => metrics::describe_counter!(def.name, def.help),
            Kind::Gauge => metrics::describe_gauge!(def.name, def.help),
            Kind::Histogram => metrics::describe_histogram!(def.name, def.help),
        }
    }
}

/// Every metric in the Prometheus text format (installs the recorder if need be).
pub fn render() -> String {
    install().render()
}

/// Drains the histograms' buffers into their buckets, so memory stays bounded however rarely
/// `/metrics` is scraped; call it every few seconds.
pub fn run_upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_follows_the_naming_conventions() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|def| def.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "names are unique");
        for def in CATALOGUE {
            assert!(def.name.starts_with("heimdex_"), "{}", def.name);
            assert_eq!(
                def.name.ends_with("_total"),
                def.kind == Kind::Counter,
                "{}: counters, and only counters, end in _total",
                def.name
            );
            if def.name.contains("duration") {
                assert!(def.name.ends_with("_seconds"), "{}", def.name);
            }
            for label in def.labels {
                assert!(
                    !label.contains("id") && *label != "path",
                    "{}: label {label} would be unbounded",
                    def.name
                );
            }
            assert!(!def.help.is_empty());
        }
    }

    #[test]
    fn histograms_render_as_histograms_with_their_help() {
        install();
        metrics::histogram!("heimdex_embed_batch_texts", "priority" => "bulk").record(3.0);
        metrics::histogram!(
            "heimdex_search_duration_seconds", "mode" => "dense", "query" => "vector"
        )
        .record(0.003);
        let text = render();
        assert!(
            text.contains("# TYPE heimdex_embed_batch_texts histogram"),
            "{text}"
        );
        assert!(
            text.contains("heimdex_embed_batch_texts_bucket{priority=\"bulk\",le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# HELP heimdex_search_duration_seconds Successful searches"),
            "{text}"
        );
        assert!(
            text.contains(
                "heimdex_search_duration_seconds_bucket{mode=\"dense\",query=\"vector\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("heimdex_build_info{version="), "{text}");
    }
}

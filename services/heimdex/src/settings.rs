//! Configuration of every role, assembled in one place.
//!
//! [`SETTINGS`] is the one source: each entry names an environment variable, its command-line
//! flag, its default and what it means. From it come the global flags of the `heimdex` command
//! ([`args`]), the defaults [`Settings::from_vars`] applies, and the README's configuration table
//! ([`markdown_table`], checked by a test). A setting can be given as a flag or as a variable
//! (a `.env` file in the working directory counts as variables; real ones win); a flag wins over
//! both. An empty value counts as unset.
//!
//! [`Settings`] holds one typed configuration per role ([`ApiConfig`], the worker's
//! concurrency, [`NatsConfig`], [`StoreConfig`], [`TelemetryConfig`]); each crate sees only its
//! own. Everything is validated once, at start-up; secrets stay wrapped, so `Debug` and
//! [`Settings::summary`] never show them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use heimdex_api::ApiConfig;
use heimdex_api::auth::JwtConfig;
use heimdex_api::overload::OverloadConfig;
use heimdex_api::probes::ProbeConfig;
use heimdex_event_store::NatsConfig;
use heimdex_event_store::nats_server::SyncInterval;
use heimdex_store::{Backend, StoreConfig};
use heimdex_telemetry::{LogFormat, SamplerError, TelemetryConfig, TraceSampler};

/// The shortest `JWT_SECRET` accepted in production: 32 bytes, the HS256 key size.
pub const MIN_PROD_SECRET_LEN: usize = 32;

/// The signing secret used in `dev` when none is configured. Public by construction, which is why
/// `prod` refuses to start without a real one.
const DEV_JWT_SECRET: &str = "heimdex-dev-secret-do-not-use-in-production";

/// One setting: how it is named on each surface, its default, and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub var: &'static str,
    pub flag: &'static str,
    /// The value used when the setting is not given; `None`: unset (or worked out, as `doc` says).
    pub default: Option<&'static str>,
    /// Shown in the default column when there is no default value (`unset` when empty).
    pub default_doc: &'static str,
    /// A secret: its value never appears in `--help` or logs.
    pub secret: bool,
    /// What it means; Markdown, as the README shows it.
    pub help: &'static str,
}

const fn setting(var: &'static str, flag: &'static str, default: &'static str) -> Setting {
    Setting {
        var,
        flag,
        default: Some(default),
        default_doc: "",
        secret: false,
        help: "",
    }
}

const fn unset(var: &'static str, flag: &'static str) -> Setting {
    Setting {
        var,
        flag,
        default: None,
        default_doc: "",
        secret: false,
        help: "",
    }
}

impl Setting {
    const fn help(mut self, help: &'static str) -> Self {
        self.help = help;
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn default_doc(mut self, doc: &'static str) -> Self {
        self.default_doc = doc;
        self
    }
}

/// Every setting of every role, in the order the README lists them.
pub const SETTINGS: &[Setting] = &[
    setting("HEIMDEX_ENV", "env", "dev").help(
        "`dev` or `prod`. In `prod`, the process won't start without a `JWT_SECRET` of at least \
         32 bytes",
    ),
    setting("HEIMDEX_DATA_DIR", "data-dir", "./data")
        .help("embedded nats-server store (`<dir>/nats`) and Qdrant Edge (`<dir>/qdrant`)"),
    setting("HEIMDEX_API_ADDR", "api-addr", "127.0.0.1:8000").help("where the API listens"),
    unset("HEIMDEX_METRICS_ADDR", "metrics-addr")
        .default_doc("the API port; `127.0.0.1:9464` without the API")
        .help(
            "where a listener of its own serves Prometheus `GET /metrics`. `serve` and `api` \
             always answer `/metrics` on the API port too; `worker` and `projector`, which have \
             no API, listen on `127.0.0.1:9464` when it is unset (if that is taken, say by a \
             second worker on the host, the process starts without it and logs a warning; a \
             taken address that was set stops start-up). See [Metrics](#metrics)",
        ),
    unset("NATS_URL", "nats-url").help(
        "NATS server URL, or several comma separated (the members of a cluster). If unset, \
         `serve` starts its own nats-server. Required by `api`, `worker`, `projector` and \
         `projector rebuild`",
    ),
    unset("NATS_SERVER_BIN", "nats-server-bin").help(
        "nats-server binary for the embedded mode. If unset: `PATH`, then \
         `.tools/bin/nats-server`",
    ),
    setting("HEIMDEX_NATS_LISTEN", "nats-listen", "127.0.0.1:4222")
        .help("listen address of the embedded nats-server (port `0` = random)"),
    setting("NATS_PUBLISH_TIMEOUT_MS", "nats-publish-timeout-ms", "2000").help(
        "how long to wait for a publish ack. If it doesn't arrive in time, or NATS is \
         disconnected, the API answers `503` with `Retry-After`",
    ),
    setting(
        "NATS_DUPLICATE_WINDOW_SEC",
        "nats-duplicate-window-sec",
        "120",
    )
    .help(
        "duplicate window of the `HEIMDEX_JOBS` stream; applied when the stream is created and \
         checked at every start (a different existing window stops start-up). See \
         [Durability](#durability)",
    ),
    setting(
        "NATS_WORKER_ACK_WAIT_MS",
        "nats-worker-ack-wait-ms",
        "30000",
    )
    .help(
        "how long the `worker` consumer waits for an ack before redelivering a job; the worker \
         sends a progress ack every third of it for every job it holds, queued or in work. \
         Applied when the consumer is created and checked at every start. At least `300`",
    ),
    setting("NATS_REPLICAS", "nats-replicas", "1")
        .help("replicas of the stream and the KV bucket (`3` for a cluster)"),
    setting("NATS_SYNC_INTERVAL", "nats-sync-interval", "1s").help(
        "when the **embedded** nats-server fsyncs JetStream: `always` (every write) or a \
         duration (`500ms`, `1s`, `2m`). Ignored with `NATS_URL`: configure your own servers. \
         See [Durability](#durability)",
    ),
    setting(
        "HEIMDEX_RATE_LIMIT_JOBS_PER_SEC",
        "rate-limit-jobs-per-sec",
        "10000",
    )
    .help(
        "per-org token bucket refill, in jobs per second; `0` turns the limit off. See \
         [Overload](#overload)",
    ),
    setting("HEIMDEX_RATE_LIMIT_BURST", "rate-limit-burst", "20000").help(
        "per-org bucket size in jobs: the most an idle org may submit at once, and the largest \
         batch one request may carry (`413` above it)",
    ),
    setting("HEIMDEX_MAX_BACKLOG", "max-backlog", "100000").help(
        "jobs the workers may be behind (the `worker` consumer's pending + ack-pending) before \
         new jobs get `503 backlog_full`; `0` turns the bound off",
    ),
    setting(
        "HEIMDEX_HTTP_HEADER_TIMEOUT_MS",
        "http-header-timeout-ms",
        "10000",
    )
    .help(
        "a request's headers must arrive within this of its first byte (of the connection's \
         opening, for its first request), else the connection is closed",
    ),
    setting(
        "HEIMDEX_HTTP_READ_TIMEOUT_MS",
        "http-read-timeout-ms",
        "30000",
    )
    .help(
        "a whole request (headers and body) must arrive within this of its first byte, else \
         the connection is closed; at least the header timeout",
    ),
    unset("HEIMDEX_MAX_CONNECTIONS", "max-connections")
        .default_doc("`10000`")
        .help(
            "most open HTTP connections; more are answered `503 too_many_connections` at once \
             (`/healthz` still `200`). Unset, it is lowered to the file-descriptor limit minus \
             1,024; set above that, start-up fails. See [Overload](#overload)",
        ),
    unset("QDRANT_URL", "qdrant-url").help(
        "unset or `embedded`: Qdrant Edge in-process. `http://host:6334`: a Qdrant server over \
         gRPC",
    ),
    unset("QDRANT_API_KEY", "qdrant-api-key")
        .secret()
        .help("API key for the Qdrant server"),
    setting("QDRANT_COLLECTION_NAME", "qdrant-collection", "embeddings").help("collection name"),
    setting("VECTOR_SIZE", "vector-size", "384").help("vector dimension"),
    setting("ENABLE_QDRANT", "enable-qdrant", "true")
        .help("whether `/readyz` probes the vector store"),
    unset("HEIMDEX_MODEL_DIR", "model-dir")
        .default_doc("`.tools/models/all-minilm-l6-v2`")
        .help(
            "all-MiniLM-L6-v2 weights in Hugging Face layout (`config.json`, `tokenizer.json`, \
             `model.safetensors`), installed by `deploy/setup.sh`. If they are missing, the \
             start-up log, `/readyz` (`deps.model`) and every request naming the model say so \
             (`503 model_unavailable`); the `mock` model still works",
        ),
    unset("HEIMDEX_EMBED_THREADS", "embed-threads")
        .default_doc("every core the process may use")
        .help(
            "the embedder's thread budget: the threads of its one pool, built when the model \
             loads. One forward pass runs at a time (the process's one embedding queue, shared by \
             the worker and search, text queries first), so this is all the CPU embedding takes",
        ),
    unset("JWT_SECRET", "jwt-secret").secret().help(
        "HS256 secret. If unset in `dev`, a public development secret is used and a warning is \
         logged",
    ),
    unset("HEIMDEX_ADMIN_TOKEN", "admin-token").secret().help(
        "the operator's bearer token for `/admin/*` (the index rebuild, switch, rollback and \
         drop) and the `heimdex index` commands; never a tenant's JWT. Unset: the admin \
         endpoints answer 403",
    ),
    unset("JWT_PUBLIC_KEY", "jwt-public-key")
        .help("PEM public key; when set, tokens are verified as RS256 or ES256 instead of HS256"),
    unset("JWT_ISSUER", "jwt-issuer").help("checked against `iss` when set"),
    unset("JWT_AUDIENCE", "jwt-audience").help("checked against `aud` when set"),
    unset("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp-endpoint").help(
        "the OTLP collector's base URL, e.g. `http://localhost:4318`. If unset, nothing is \
         exported. With `http/protobuf`, `/v1/traces` is appended",
    ),
    setting(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "otlp-protocol",
        "http/protobuf",
    )
    .help(
        "`http/protobuf` (OTLP over HTTP, port 4318 by convention; the OpenTelemetry default) \
         or `grpc` (port 4317). `http/json` is refused at start-up",
    ),
    setting(
        "OTEL_TRACES_SAMPLER",
        "traces-sampler",
        "parentbased_always_on",
    )
    .help(
        "which traces are kept: `always_on`, `always_off`, `traceidratio`, \
         `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`. \
         Parent-based samplers follow the caller's decision (a client's `traceparent`, or the \
         API's for the worker)",
    ),
    setting("OTEL_TRACES_SAMPLER_ARG", "traces-sampler-arg", "1")
        .help("the ratio (0 to 1) of the `traceidratio` samplers"),
    setting("HEIMDEX_TRACE_FILTER", "trace-filter", "info").help(
        "which spans are exported (`RUST_LOG` syntax), independently of `RUST_LOG`: every \
         Heimdex span is at INFO, so `RUST_LOG=warn` keeps the logs quiet and the traces whole",
    ),
    unset("OTEL_SERVICE_NAME", "otel-service-name")
        .default_doc("by role")
        .help("`heimdex` (serve), `heimdex-api`, `heimdex-worker`, `heimdex-projector`"),
    setting("RUST_LOG", "log", "info")
        .help("log filter (the log lines only; exported spans follow `HEIMDEX_TRACE_FILTER`)"),
    setting("LOG_FORMAT", "log-format", "pretty").help("`pretty` or `json`"),
    setting("PROBE_TIMEOUT_MS", "probe-timeout-ms", "500").help("timeout of one readiness probe"),
    setting("PROBE_RETRIES", "probe-retries", "3").help("retries per readiness probe"),
    setting("PROBE_CACHE_SEC", "probe-cache-sec", "10")
        .help("how long a successful probe is cached; failures are cached 3× as long"),
    setting("HEIMDEX_FILE_SWEEP_SEC", "file-sweep-sec", "300")
        .help("how often the projector deletes uploaded files no live document version needs"),
    setting("HEIMDEX_FILE_GRACE_SEC", "file-grace-sec", "900").help(
        "how old an uploaded file must be before a sweep may delete it (its job may not be \
         requested yet)",
    ),
    setting("HEIMDEX_WORKER_CONCURRENCY", "worker-concurrency", "256").help(
        "messages per worker batch (clamped to 1..1000; up to 4 batches at once, and a worker \
         never pulls more than 4 batches' worth); a batch's texts are embedded together, one \
         forward pass at a time",
    ),
];

fn lookup(var: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.var == var)
}

/// The settings as global flags of the `heimdex` command, each also read from its variable.
pub fn args() -> Vec<clap::Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            clap::Arg::new(s.var)
                .long(s.flag)
                .env(s.var)
                .value_name(s.var)
                .global(true)
                .help_heading("Settings (flag or environment variable)")
                .hide_env_values(s.secret)
                .help(plain(s.help))
        })
        .collect()
}

/// The settings given on the command line or in the environment, by variable name, for
/// [`Settings::from_vars`].
pub fn given(matches: &clap::ArgMatches) -> HashMap<String, String> {
    SETTINGS
        .iter()
        .filter_map(|s| {
            let value = matches.get_one::<String>(s.var)?;
            Some((s.var.to_owned(), value.clone()))
        })
        .collect()
}

/// Markdown without its markup, for `--help`.
fn plain(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        let (before, after) = rest.split_at(open);
        text.push_str(before);
        match after.find("](").zip(after.find(')')) {
            Some((mid, close)) if mid < close => {
                text.push_str(&after[1..mid]);
                rest = &after[close + 1..];
            }
            Some(_) | None => {
                text.push('[');
                rest = &after[1..];
            }
        }
    }
    text.push_str(rest);
    text.replace(['`', '*'], "")
}

/// The README's configuration table: every setting, then the client commands' variables
/// (`client_args`: arguments of `heimdex ingest`/`search` that read a variable).
pub fn markdown_table(client_args: &[&clap::Arg]) -> String {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        let default = match (s.default, s.default_doc) {
            (Some(value), _) => format!("`{value}`"),
            (None, "") => "unset".to_owned(),
            (None, doc) => doc.to_owned(),
        };
        table.push_str(&format!("| `{}` | {default} | {} |\n", s.var, s.help));
    }
    for arg in client_args {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        let default = arg
            .get_default_values()
            .first()
            .and_then(|v| v.to_str())
            .map_or_else(|| "unset".to_owned(), |v| format!("`{v}`"));
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        table.push_str(&format!(
            "| `{var}` | {default} | `heimdex ingest`/`search`: {} |\n",
            help.trim_end_matches('.')
        ));
    }
    table
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Dev,
    Prod,
}

/// Every role's configuration. `heimdex serve` uses all of it; a single-role process, its part.
#[derive(Clone, Debug)]
pub struct Settings {
    pub env: Environment,
    pub data_dir: PathBuf,
    pub nats: NatsConfig,
    /// How `serve` runs its own nats-server when `NATS_URL` is unset.
    pub embedded_nats: EmbeddedNats,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub worker: WorkerSettings,
    /// The projector's sweep of uploaded files.
    pub file_sweep: heimdex_projector::files::SweepConfig,
    /// Where the real model's weights are (`None`: found by [`heimdex_embed::default_model_dir`]).
    pub model_dir: Option<PathBuf>,
    /// The embedder's thread budget (`None`: every core the process may use).
    pub embed_threads: Option<std::num::NonZeroUsize>,
    pub telemetry: TelemetryConfig,
    /// Where a listener of its own serves `/metrics` (`HEIMDEX_METRICS_ADDR`); `None`: the API's
    /// port, or [`crate::metrics::DEFAULT_METRICS_ADDR`] for a process without the API.
    pub metrics_addr: Option<SocketAddr>,
    /// True when no `JWT_SECRET` was given and the public development secret is in use.
    pub jwt_dev_secret: bool,
}

/// The nats-server `serve` starts when `NATS_URL` is unset.
#[derive(Clone, Debug)]
pub struct EmbeddedNats {
    /// The binary (`NATS_SERVER_BIN`); else PATH, else the setup script's tools dir.
    pub server_bin: Option<PathBuf>,
    pub listen: SocketAddr,
    /// How often it flushes its JetStream files to disk.
    pub sync_interval: SyncInterval,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Messages a worker batch holds at most.
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "JWT_SECRET must be set to at least {MIN_PROD_SECRET_LEN} bytes when HEIMDEX_ENV=prod \
         (generate one with `openssl rand -hex 32`)"
    )]
    WeakSecret,
    #[error("cannot read .env")]
    DotEnv(#[source] dotenvy::Error),
}

/// Loads `.env` from the working directory into the environment, when there is one; variables
/// already set win.
pub fn load_dotenv() -> Result<(), SettingsError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(err) if err.not_found() => Ok(()),
        Err(err) => Err(SettingsError::DotEnv(err)),
    }
}

impl Settings {
    /// Builds every role's configuration from settings given by variable name (what
    /// [`given`] collects from the command line and the environment; tests pass their own);
    /// absent ones take their [`SETTINGS`] default.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let env = Env(vars);
        let environment = match env.value("HEIMDEX_ENV").as_deref() {
            Some("dev") | Some("development") => Environment::Dev,
            Some("prod") | Some("production") => Environment::Prod,
            other => {
                return Err(invalid(
                    "HEIMDEX_ENV",
                    other.unwrap_or_default(),
                    "expected dev or prod",
                ));
            }
        };

        let secret = env.value("JWT_SECRET");
        let jwt_dev_secret = secret.is_none();
        if environment == Environment::Prod
            && secret
                .as_ref()
                .is_none_or(|s| s.len() < MIN_PROD_SECRET_LEN)
        {
            return Err(SettingsError::WeakSecret);
        }
        let jwt = JwtConfig {
            secret: SecretString::from(secret.unwrap_or_else(|| DEV_JWT_SECRET.to_owned())),
            public_key_pem: env.value("JWT_PUBLIC_KEY"),
            issuer: env.value("JWT_ISSUER"),
            audience: env.value("JWT_AUDIENCE"),
        };

        let data_dir: PathBuf = env.value("HEIMDEX_DATA_DIR").unwrap_or_default().into();
        let store = StoreConfig {
            backend: match env
                .value("QDRANT_URL")
                .filter(|url| !url.eq_ignore_ascii_case("embedded"))
            {
                None => Backend::Embedded {
                    path: data_dir.join("qdrant"),
                },
                Some(url) => Backend::Remote {
                    url,
                    api_key: env.value("QDRANT_API_KEY").map(SecretString::from),
                },
            },
            collection: env.value("QDRANT_COLLECTION_NAME").unwrap_or_default(),
            vector_size: env.parse("VECTOR_SIZE")?,
        };

        Self {
            env: environment,
            nats: NatsConfig {
                url: env.value("NATS_URL"),
                publish_timeout: Duration::from_millis(env.parse("NATS_PUBLISH_TIMEOUT_MS")?),
                duplicate_window: Duration::from_secs(env.parse("NATS_DUPLICATE_WINDOW_SEC")?),
                replicas: env.parse("NATS_REPLICAS")?,
                worker_ack_wait: Duration::from_millis(env.parse("NATS_WORKER_ACK_WAIT_MS")?),
            },
            embedded_nats: EmbeddedNats {
                server_bin: env.value("NATS_SERVER_BIN").map(PathBuf::from),
                listen: env.parse("HEIMDEX_NATS_LISTEN")?,
                sync_interval: env.parse("NATS_SYNC_INTERVAL")?,
            },
            store,
            api: ApiConfig {
                addr: env.parse("HEIMDEX_API_ADDR")?,
                jwt,
                probes: ProbeConfig {
                    timeout: Duration::from_millis(env.parse("PROBE_TIMEOUT_MS")?),
                    retries: env.parse("PROBE_RETRIES")?,
                    cache: Duration::from_secs(env.parse("PROBE_CACHE_SEC")?),
                },
                probe_store: env.parse_bool("ENABLE_QDRANT")?,
                overload: OverloadConfig {
                    rate_per_sec: env.parse("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC")?,
                    burst: env.parse("HEIMDEX_RATE_LIMIT_BURST")?,
                    max_backlog: env.parse("HEIMDEX_MAX_BACKLOG")?,
                },
                header_timeout: Duration::from_millis(env.parse("HEIMDEX_HTTP_HEADER_TIMEOUT_MS")?),
                read_timeout: Duration::from_millis(env.parse("HEIMDEX_HTTP_READ_TIMEOUT_MS")?),
                max_connections: env.parse_opt("HEIMDEX_MAX_CONNECTIONS")?,
                admin_token: env.value("HEIMDEX_ADMIN_TOKEN").map(SecretString::from),
            },
            worker: WorkerSettings {
                concurrency: env.parse("HEIMDEX_WORKER_CONCURRENCY")?,
            },
            file_sweep: heimdex_projector::files::SweepConfig {
                interval: Duration::from_secs(env.parse::<u64>("HEIMDEX_FILE_SWEEP_SEC")?.max(1)),
                grace: Duration::from_secs(env.parse("HEIMDEX_FILE_GRACE_SEC")?),
            },
            model_dir: env.value("HEIMDEX_MODEL_DIR").map(PathBuf::from),
            embed_threads: match env.value("HEIMDEX_EMBED_THREADS") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    invalid(
                        "HEIMDEX_EMBED_THREADS",
                        &v,
                        "expected a whole number of threads, at least 1",
                    )
                })?),
            },
            telemetry: TelemetryConfig {
                service_name: env
                    .value("OTEL_SERVICE_NAME")
                    .unwrap_or_else(|| "heimdex".into()),
                otlp_endpoint: env.value("OTEL_EXPORTER_OTLP_ENDPOINT"),
                otlp_protocol: env.parse("OTEL_EXPORTER_OTLP_PROTOCOL")?,
                sampler: TraceSampler::parse(
                    env.value("OTEL_TRACES_SAMPLER").as_deref(),
                    env.value("OTEL_TRACES_SAMPLER_ARG").as_deref(),
                )
                .map_err(|err| match &err {
                    SamplerError::BadRatio(value) => {
                        invalid("OTEL_TRACES_SAMPLER_ARG", value, &err.to_string())
                    }
                    SamplerError::Unknown(value) => {
                        invalid("OTEL_TRACES_SAMPLER", value, &err.to_string())
                    }
                })?,
                log_format: match env.value("LOG_FORMAT").as_deref() {
                    Some("pretty") | Some("text") => LogFormat::Pretty,
                    Some("json") => LogFormat::Json,
                    other => {
                        return Err(invalid(
                            "LOG_FORMAT",
                            other.unwrap_or_default(),
                            "expected json or pretty",
                        ));
                    }
                },
                filter: env.value("RUST_LOG").unwrap_or_default(),
                trace_filter: env.value("HEIMDEX_TRACE_FILTER").unwrap_or_default(),
            },
            metrics_addr: env.parse_opt("HEIMDEX_METRICS_ADDR")?,
            data_dir,
            jwt_dev_secret,
        }
        .validated()
    }

    fn validated(self) -> Result<Self, SettingsError> {
        if self.store.vector_size == 0 || self.store.vector_size > 65_536 {
            return Err(invalid(
                "VECTOR_SIZE",
                &self.store.vector_size.to_string(),
                "must be 1..=65536",
            ));
        }
        if self.nats.replicas == 0 || self.nats.replicas > 5 {
            return Err(invalid(
                "NATS_REPLICAS",
                &self.nats.replicas.to_string(),
                "must be 1..=5",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid(
                "HEIMDEX_WORKER_CONCURRENCY",
                "0",
                "must be at least 1",
            ));
        }
        let overload = &self.api.overload;
        if overload.rate_per_sec > 0 && overload.burst == 0 {
            return Err(invalid(
                "HEIMDEX_RATE_LIMIT_BURST",
                "0",
                "must be at least 1 while HEIMDEX_RATE_LIMIT_JOBS_PER_SEC is set",
            ));
        }
        if self.api.header_timeout.is_zero() {
            return Err(invalid(
                "HEIMDEX_HTTP_HEADER_TIMEOUT_MS",
                "0",
                "must be positive",
            ));
        }
        if self.api.read_timeout < self.api.header_timeout {
            return Err(invalid(
                "HEIMDEX_HTTP_READ_TIMEOUT_MS",
                &self.api.read_timeout.as_millis().to_string(),
                "must be at least HEIMDEX_HTTP_HEADER_TIMEOUT_MS",
            ));
        }
        if self.api.max_connections == Some(0) {
            return Err(invalid(
                "HEIMDEX_MAX_CONNECTIONS",
                "0",
                "must be at least 1",
            ));
        }
        if self.nats.publish_timeout.is_zero() {
            return Err(invalid("NATS_PUBLISH_TIMEOUT_MS", "0", "must be positive"));
        }
        // The worker sends a progress ack every third of it; shorter waits are all overhead.
        if self.nats.worker_ack_wait < Duration::from_millis(300) {
            return Err(invalid(
                "NATS_WORKER_ACK_WAIT_MS",
                &self.nats.worker_ack_wait.as_millis().to_string(),
                "must be at least 300",
            ));
        }
        Ok(self)
    }

    /// Where the embedded nats-server keeps its JetStream store.
    pub fn nats_store_dir(&self) -> PathBuf {
        self.data_dir.join("nats")
    }

    /// The vector store's URL, `None` for the embedded store.
    pub fn store_url(&self) -> Option<&str> {
        match &self.store.backend {
            Backend::Embedded { .. } => None,
            Backend::Remote { url, .. } => Some(url),
        }
    }

    /// A short, secret-free description for the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "env={:?} api={} nats={} vector_store={} collection={} vector_size={} data_dir={} jwt={}",
            self.env,
            self.api.addr,
            self.nats.url.as_deref().unwrap_or("embedded"),
            self.store_url().unwrap_or("embedded"),
            self.store.collection,
            self.store.vector_size,
            self.data_dir.display(),
            if self.api.jwt.public_key_pem.is_some() {
                "public-key"
            } else if self.jwt_dev_secret {
                "dev-secret"
            } else {
                "secret"
            }
        )
    }

    /// The JWT secret, for minting development tokens only.
    pub fn jwt_secret(&self) -> &str {
        self.api.jwt.secret.expose_secret()
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> SettingsError {
    SettingsError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Settings by variable name, falling back to [`SETTINGS`] defaults.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    /// The setting's value, or its default; an empty value counts as unset.
    ///
    /// # Panics
    /// On a name that is not in [`SETTINGS`]: a setting must be declared to be read.
    fn value(&self, name: &'static str) -> Option<String> {
        let setting = lookup(name).unwrap_or_else(|| panic!("{name} is not in SETTINGS"));
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .or_else(|| setting.default.map(str::to_owned))
    }

    fn parse<T>(&self, name: &'static str) -> Result<T, SettingsError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let value = self.value(name).unwrap_or_default();
        value
            .parse()
            .map_err(|err: T::Err| invalid(name, &value, &err.to_string()))
    }

    /// Like [`Env::parse`], for a setting without a default: `None` when it is not given.
    fn parse_opt<T>(&self, name: &'static str) -> Result<Option<T>, SettingsError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.value(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|err: T::Err| invalid(name, &value, &err.to_string()))
            })
            .transpose()
    }

    fn parse_bool(&self, name: &'static str) -> Result<bool, SettingsError> {
        match self.value(name).map(|v| v.to_ascii_lowercase()).as_deref() {
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            other => Err(invalid(
                name,
                other.unwrap_or_default(),
                "expected true or false",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heimdex_telemetry::{OtlpProtocol, RootSampler};

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_dev_setup() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.env, Environment::Dev);
        assert_eq!(s.api.addr.to_string(), "127.0.0.1:8000");
        assert!(s.nats.url.is_none());
        assert!(s.store_url().is_none());
        assert_eq!(s.store.collection, "embeddings");
        assert_eq!(s.store.vector_size, 384);
        assert!(s.jwt_dev_secret);
        assert_eq!(s.api.probes.timeout, Duration::from_millis(500));
        assert_eq!(s.api.probes.retries, 3);
        assert_eq!(s.api.probes.cache, Duration::from_secs(10));
        assert_eq!(s.nats.duplicate_window, Duration::from_secs(120));
    }

    #[test]
    fn prod_requires_a_long_secret() {
        let err = Settings::from_vars(&vars(&[("HEIMDEX_ENV", "prod")])).unwrap_err();
        assert!(matches!(err, SettingsError::WeakSecret));
        assert!(err.to_string().contains("JWT_SECRET"));
        let short = vars(&[("HEIMDEX_ENV", "prod"), ("JWT_SECRET", "short")]);
        assert!(matches!(
            Settings::from_vars(&short),
            Err(SettingsError::WeakSecret)
        ));
        let ok = vars(&[("HEIMDEX_ENV", "prod"), ("JWT_SECRET", &"s".repeat(32))]);
        assert!(!Settings::from_vars(&ok).unwrap().jwt_dev_secret);
    }

    #[test]
    fn secrets_never_appear_in_debug_or_summary() {
        let s = Settings::from_vars(&vars(&[
            ("JWT_SECRET", "super-secret-jwt-value-0123456789abcdef"),
            ("QDRANT_URL", "http://qdrant:6334"),
            ("QDRANT_API_KEY", "super-secret-api-key"),
        ]))
        .unwrap();
        let shown = format!("{s:?} {}", s.summary());
        assert!(!shown.contains("super-secret"), "{shown}");
    }

    #[test]
    fn qdrant_url_embedded_means_edge() {
        let s = Settings::from_vars(&vars(&[("QDRANT_URL", "embedded")])).unwrap();
        assert!(s.store_url().is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("HEIMDEX_API_ADDR", "nope"),
            ("HEIMDEX_METRICS_ADDR", "9464"),
            ("VECTOR_SIZE", "0"),
            ("PROBE_RETRIES", "-1"),
            ("LOG_FORMAT", "xml"),
            ("ENABLE_QDRANT", "maybe"),
            ("HEIMDEX_ENV", "staging"),
            ("NATS_SYNC_INTERVAL", "sometimes"),
            ("NATS_SYNC_INTERVAL", "0s"),
            ("NATS_SYNC_INTERVAL", "10h"),
            ("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "-5"),
            ("HEIMDEX_RATE_LIMIT_BURST", "0"),
            ("HEIMDEX_MAX_BACKLOG", "lots"),
            ("HEIMDEX_HTTP_HEADER_TIMEOUT_MS", "0"),
            ("HEIMDEX_HTTP_READ_TIMEOUT_MS", "500"),
            ("HEIMDEX_MAX_CONNECTIONS", "0"),
            ("HEIMDEX_MAX_CONNECTIONS", "many"),
            ("NATS_WORKER_ACK_WAIT_MS", "100"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ] {
            let err = Settings::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn overload_defaults_allow_the_benchmarks() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        // Above the ~5,300 jobs/s one node accepts (docs/BENCHMARKS.md), and a burst that holds
        // the largest batch (1,000 segments) many times over.
        assert_eq!(s.api.overload.rate_per_sec, 10_000);
        assert_eq!(s.api.overload.burst, 20_000);
        assert_eq!(s.api.overload.max_backlog, 100_000);
        assert_eq!(s.api.header_timeout, Duration::from_secs(10));
        assert_eq!(s.api.read_timeout, Duration::from_secs(30));
        assert_eq!(s.api.max_connections, None);
        let s = Settings::from_vars(&vars(&[("HEIMDEX_MAX_CONNECTIONS", "5000")])).unwrap();
        assert_eq!(s.api.max_connections, Some(5000));
    }

    #[test]
    fn trace_export_follows_the_opentelemetry_variables() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.telemetry.sampler, TraceSampler::default());
        assert_eq!(s.telemetry.trace_filter, "info");
        let s = Settings::from_vars(&vars(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("HEIMDEX_TRACE_FILTER", "heimdex_worker=debug"),
            ("RUST_LOG", "warn"),
        ]))
        .unwrap();
        assert_eq!(s.telemetry.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(s.telemetry.sampler.root, RootSampler::TraceIdRatio(0.1));
        assert_eq!(s.telemetry.trace_filter, "heimdex_worker=debug");
        assert_eq!(s.telemetry.filter, "warn");
        let err = Settings::from_vars(&vars(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
    }

    #[test]
    fn overload_settings_parse_and_zero_turns_limits_off() {
        let s = Settings::from_vars(&vars(&[
            ("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "0"),
            ("HEIMDEX_RATE_LIMIT_BURST", "0"),
            ("HEIMDEX_MAX_BACKLOG", "0"),
            ("HEIMDEX_HTTP_HEADER_TIMEOUT_MS", "250"),
            ("HEIMDEX_HTTP_READ_TIMEOUT_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(s.api.overload.rate_per_sec, 0);
        assert_eq!(s.api.overload.max_backlog, 0);
        assert_eq!(s.api.header_timeout, Duration::from_millis(250));
        assert_eq!(s.api.read_timeout, Duration::from_millis(250));
        let s = Settings::from_vars(&vars(&[
            ("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "5"),
            ("HEIMDEX_RATE_LIMIT_BURST", "7"),
            ("HEIMDEX_MAX_BACKLOG", "42"),
        ]))
        .unwrap();
        assert_eq!((s.api.overload.rate_per_sec, s.api.overload.burst), (5, 7));
        assert_eq!(s.api.overload.max_backlog, 42);
    }

    #[test]
    fn sync_interval_is_always_or_a_duration() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(
            s.embedded_nats.sync_interval,
            SyncInterval::Every(std::time::Duration::from_secs(1))
        );
        for (value, want) in [
            ("always", SyncInterval::Always),
            ("ALWAYS", SyncInterval::Always),
            ("500ms", SyncInterval::Every(Duration::from_millis(500))),
            ("10s", SyncInterval::Every(Duration::from_secs(10))),
            ("2m", SyncInterval::Every(Duration::from_secs(120))),
        ] {
            let s = Settings::from_vars(&vars(&[("NATS_SYNC_INTERVAL", value)])).unwrap();
            assert_eq!(s.embedded_nats.sync_interval, want, "{value}");
        }
        assert_eq!(SyncInterval::Always.to_nats_conf(), "always");
        assert_eq!(
            SyncInterval::Every(Duration::from_secs(2)).to_nats_conf(),
            "\"2000ms\""
        );
    }

    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_meaning() {
        let mut flags: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
        let mut vars: Vec<&str> = SETTINGS.iter().map(|s| s.var).collect();
        flags.sort_unstable();
        flags.dedup();
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(flags.len(), SETTINGS.len(), "flags are unique");
        assert_eq!(vars.len(), SETTINGS.len(), "variables are unique");
        for s in SETTINGS {
            assert!(!s.help.is_empty(), "{} has a meaning", s.var);
            if let Some(default) = s.default {
                let given = vars_with(s.var, default);
                assert!(
                    Settings::from_vars(&given).is_ok(),
                    "{}'s default {default:?} is valid",
                    s.var
                );
            }
        }
    }

    fn vars_with(name: &str, value: &str) -> HashMap<String, String> {
        vars(&[(name, value)])
    }

    #[test]
    fn help_text_loses_its_markup() {
        assert_eq!(
            plain("see [Durability](#durability), `0` = **off**"),
            "see Durability, 0 = off"
        );
        assert_eq!(plain("a [b] c"), "a [b] c");
    }
}

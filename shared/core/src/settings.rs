//! One typed settings struct for every process, read from the environment (and from `.env` when
//! present). Validated once at start-up; secrets stay wrapped so they never reach logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use heimdex_telemetry::{OtlpProtocol, TraceSampler};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::JwtConfig;

/// The shortest `JWT_SECRET` accepted in production: 32 bytes, the HS256 key size.
pub const MIN_PROD_SECRET_LEN: usize = 32;

/// The signing secret used in `dev` when none is configured. Public by construction, which is why
/// `prod` refuses to start without a real one.
const DEV_JWT_SECRET: &str = "heimdex-dev-secret-do-not-use-in-production";

/// `NATS_SYNC_INTERVAL` when unset; the README's "Durability" section says why.
pub const DEFAULT_SYNC_INTERVAL: &str = "1s";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Dev,
    Prod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub env: Environment,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub nats: NatsSettings,
    pub qdrant: QdrantSettings,
    pub model_dir: Option<PathBuf>,
    pub jwt: JwtConfig,
    /// True when no `JWT_SECRET` was given and the public development secret is in use.
    pub jwt_dev_secret: bool,
    pub telemetry: TelemetrySettings,
    pub probes: ProbeSettings,
    pub worker: WorkerSettings,
    pub overload: OverloadSettings,
}

#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `None`: `heimdex serve` starts and supervises its own nats-server.
    pub url: Option<String>,
    /// The nats-server binary for the embedded mode (`NATS_SERVER_BIN`, else PATH, else the
    /// setup script's tools dir).
    pub server_bin: Option<PathBuf>,
    /// Where the embedded nats-server listens (`HEIMDEX_NATS_LISTEN`).
    pub embedded_listen: SocketAddr,
    /// How long a publish may wait for its ack before the API answers 503.
    pub publish_timeout: Duration,
    /// JetStream de-duplication window of the job stream.
    pub duplicate_window: Duration,
    /// Replicas of the stream and the KV bucket (1 for one server, 3 for a cluster).
    pub replicas: usize,
    /// How often the embedded nats-server flushes its JetStream files to disk
    /// (`NATS_SYNC_INTERVAL`). Ignored when `NATS_URL` names a server heimdex does not start.
    pub sync_interval: SyncInterval,
    /// How long the worker consumer waits for an ack (or a progress ack) before redelivering
    /// (`NATS_WORKER_ACK_WAIT_MS`). Applied when the consumer is created, checked at every start.
    pub worker_ack_wait: Duration,
}

/// nats-server's `jetstream { sync_interval }`: when stored messages are fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncInterval {
    /// fsync after every write: an acknowledged publish survives a power loss or kernel crash.
    Always,
    /// fsync on a timer: an acknowledged publish survives a crash of nats-server or heimdex (it
    /// is in the OS page cache), but the last interval's writes can be lost with the machine.
    Every(Duration),
}

impl SyncInterval {
    /// The value as nats-server's configuration file spells it.
    pub fn to_nats_conf(self) -> String {
        match self {
            SyncInterval::Always => "always".to_owned(),
            SyncInterval::Every(interval) => format!("\"{}ms\"", interval.as_millis()),
        }
    }
}

impl std::str::FromStr for SyncInterval {
    type Err = String;

    /// `always`, or a duration: `500ms`, `10s`, `2m`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim().to_ascii_lowercase();
        if value == "always" {
            return Ok(SyncInterval::Always);
        }
        let split = value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len());
        let (number, unit) = value.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| "expected `always` or a duration such as 500ms, 10s or 2m".to_owned())?;
        let interval = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number * 60),
            _ => return Err("expected a unit of ms, s or m (e.g. 10s)".to_owned()),
        };
        if interval.is_zero() {
            return Err("must be positive (use `always` to sync every write)".to_owned());
        }
        Ok(SyncInterval::Every(interval))
    }
}

#[derive(Clone)]
pub struct QdrantSettings {
    /// `None` (unset or `embedded`): Qdrant Edge under the data dir.
    pub url: Option<String>,
    pub api_key: Option<SecretString>,
    pub collection: String,
    pub vector_size: usize,
    /// Whether `/readyz` probes the vector store.
    pub enabled: bool,
}

impl std::fmt::Debug for QdrantSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantSettings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("collection", &self.collection)
            .field("vector_size", &self.vector_size)
            .field("enabled", &self.enabled)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; unset, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the OpenTelemetry default) or `grpc`.
    pub otlp_protocol: OtlpProtocol,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: TraceSampler,
    pub log_format: LogFormat,
    /// `RUST_LOG`: the log lines only.
    pub filter: String,
    /// `HEIMDEX_TRACE_FILTER`: which spans are exported, whatever `RUST_LOG` says.
    pub trace_filter: String,
}

#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub timeout: Duration,
    pub retries: u32,
    /// How long a successful probe is cached; failures are cached three times as long.
    pub cache: Duration,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Messages a worker processes at once.
    pub concurrency: usize,
}

/// What the API does when more work arrives than it should take on.
#[derive(Clone, Debug)]
pub struct OverloadSettings {
    /// Per-org token bucket refill rate, in jobs per second (`HEIMDEX_RATE_LIMIT_JOBS_PER_SEC`);
    /// a request costs one token per job it creates. 0 turns the limit off.
    pub rate_per_sec: u32,
    /// Per-org bucket size in jobs (`HEIMDEX_RATE_LIMIT_BURST`): the most jobs an idle org may
    /// submit at once, and so the largest batch it can send in one request.
    pub burst: u32,
    /// Most jobs waiting for or held by workers (the worker consumer's pending + ack-pending)
    /// before new jobs are refused with 503 (`HEIMDEX_MAX_BACKLOG`). 0 turns the bound off.
    pub max_backlog: u64,
    /// How long a client may take to send a request's headers (`HEIMDEX_HTTP_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole request, headers and body, before the server
    /// answers (`HEIMDEX_HTTP_READ_TIMEOUT_MS`).
    pub read_timeout: Duration,
    /// Most open HTTP connections (`HEIMDEX_MAX_CONNECTIONS`); more are refused at once. `None`:
    /// 10,000, or fewer if the process's file-descriptor limit does not allow that many.
    pub max_connections: Option<usize>,
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
    #[error("cannot read .env: {0}")]
    DotEnv(String),
}

impl Settings {
    /// Reads `.env` (when present; real environment variables win) and then the environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(err) if err.not_found() => {}
            Err(err) => return Err(SettingsError::DotEnv(err.to_string())),
        }
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Builds settings from a map of variables; `from_env` and tests share this.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let env = Env(vars);
        let environment = match env.get("HEIMDEX_ENV").as_deref() {
            None | Some("dev") | Some("development") => Environment::Dev,
            Some("prod") | Some("production") => Environment::Prod,
            Some(other) => return Err(invalid("HEIMDEX_ENV", other, "expected dev or prod")),
        };

        let secret = env.get("JWT_SECRET");
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
            public_key_pem: env.get("JWT_PUBLIC_KEY"),
            issuer: env.get("JWT_ISSUER"),
            audience: env.get("JWT_AUDIENCE"),
        };

        let qdrant_url = env
            .get("QDRANT_URL")
            .filter(|url| !url.eq_ignore_ascii_case("embedded"));

        Self {
            env: environment,
            data_dir: env
                .get("HEIMDEX_DATA_DIR")
                .unwrap_or_else(|| "./data".into())
                .into(),
            api_addr: env.parse("HEIMDEX_API_ADDR", "127.0.0.1:8000")?,
            nats: NatsSettings {
                url: env.get("NATS_URL"),
                server_bin: env.get("NATS_SERVER_BIN").map(PathBuf::from),
                embedded_listen: env.parse("HEIMDEX_NATS_LISTEN", "127.0.0.1:4222")?,
                publish_timeout: Duration::from_millis(
                    env.parse("NATS_PUBLISH_TIMEOUT_MS", "2000")?,
                ),
                duplicate_window: Duration::from_secs(
                    env.parse("NATS_DUPLICATE_WINDOW_SEC", "120")?,
                ),
                replicas: env.parse("NATS_REPLICAS", "1")?,
                sync_interval: env.parse("NATS_SYNC_INTERVAL", DEFAULT_SYNC_INTERVAL)?,
                worker_ack_wait: Duration::from_millis(
                    env.parse("NATS_WORKER_ACK_WAIT_MS", "30000")?,
                ),
            },
            qdrant: QdrantSettings {
                url: qdrant_url,
                api_key: env.get("QDRANT_API_KEY").map(SecretString::from),
                collection: env
                    .get("QDRANT_COLLECTION_NAME")
                    .unwrap_or_else(|| "embeddings".into()),
                vector_size: env.parse("VECTOR_SIZE", "384")?,
                enabled: env.parse_bool("ENABLE_QDRANT", true)?,
            },
            model_dir: env.get("HEIMDEX_MODEL_DIR").map(PathBuf::from),
            jwt,
            jwt_dev_secret,
            telemetry: TelemetrySettings {
                service_name: env
                    .get("OTEL_SERVICE_NAME")
                    .unwrap_or_else(|| "heimdex".into()),
                otlp_endpoint: env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
                otlp_protocol: env.parse("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")?,
                sampler: TraceSampler::parse(
                    env.get("OTEL_TRACES_SAMPLER").as_deref(),
                    env.get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
                )
                .map_err(|err| {
                    invalid(
                        "OTEL_TRACES_SAMPLER",
                        &format!(
                            "{} (OTEL_TRACES_SAMPLER_ARG={})",
                            env.get("OTEL_TRACES_SAMPLER").unwrap_or_default(),
                            env.get("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default()
                        ),
                        &err.to_string(),
                    )
                })?,
                log_format: match env.get("LOG_FORMAT").as_deref() {
                    None | Some("pretty") | Some("text") => LogFormat::Pretty,
                    Some("json") => LogFormat::Json,
                    Some(other) => {
                        return Err(invalid("LOG_FORMAT", other, "expected json or pretty"));
                    }
                },
                filter: env.get("RUST_LOG").unwrap_or_else(|| "info".into()),
                trace_filter: env
                    .get("HEIMDEX_TRACE_FILTER")
                    .unwrap_or_else(|| heimdex_telemetry::DEFAULT_TRACE_FILTER.into()),
            },
            probes: ProbeSettings {
                timeout: Duration::from_millis(env.parse("PROBE_TIMEOUT_MS", "500")?),
                retries: env.parse("PROBE_RETRIES", "3")?,
                cache: Duration::from_secs(env.parse("PROBE_CACHE_SEC", "10")?),
            },
            worker: WorkerSettings {
                concurrency: env.parse("HEIMDEX_WORKER_CONCURRENCY", "256")?,
            },
            overload: OverloadSettings {
                rate_per_sec: env.parse("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "10000")?,
                burst: env.parse("HEIMDEX_RATE_LIMIT_BURST", "20000")?,
                max_backlog: env.parse("HEIMDEX_MAX_BACKLOG", "100000")?,
                header_timeout: Duration::from_millis(
                    env.parse("HEIMDEX_HTTP_HEADER_TIMEOUT_MS", "10000")?,
                ),
                read_timeout: Duration::from_millis(
                    env.parse("HEIMDEX_HTTP_READ_TIMEOUT_MS", "30000")?,
                ),
                max_connections: env
                    .get("HEIMDEX_MAX_CONNECTIONS")
                    .map(|_| env.parse("HEIMDEX_MAX_CONNECTIONS", ""))
                    .transpose()?,
            },
        }
        .validated()
    }

    fn validated(self) -> Result<Self, SettingsError> {
        if self.qdrant.vector_size == 0 || self.qdrant.vector_size > 65_536 {
            return Err(invalid(
                "VECTOR_SIZE",
                &self.qdrant.vector_size.to_string(),
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
        if self.overload.rate_per_sec > 0 && self.overload.burst == 0 {
            return Err(invalid(
                "HEIMDEX_RATE_LIMIT_BURST",
                "0",
                "must be at least 1 while HEIMDEX_RATE_LIMIT_JOBS_PER_SEC is set",
            ));
        }
        if self.overload.header_timeout.is_zero() {
            return Err(invalid(
                "HEIMDEX_HTTP_HEADER_TIMEOUT_MS",
                "0",
                "must be positive",
            ));
        }
        if self.overload.read_timeout < self.overload.header_timeout {
            return Err(invalid(
                "HEIMDEX_HTTP_READ_TIMEOUT_MS",
                &self.overload.read_timeout.as_millis().to_string(),
                "must be at least HEIMDEX_HTTP_HEADER_TIMEOUT_MS",
            ));
        }
        if self.overload.max_connections == Some(0) {
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

    /// Where Qdrant Edge keeps its collections (one directory each).
    pub fn edge_dir(&self) -> PathBuf {
        self.data_dir.join("qdrant")
    }

    /// Where the embedded nats-server keeps its JetStream store.
    pub fn nats_store_dir(&self) -> PathBuf {
        self.data_dir.join("nats")
    }

    /// A short, secret-free description for the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "env={:?} api={} nats={} vector_store={} collection={} vector_size={} data_dir={} jwt={}",
            self.env,
            self.api_addr,
            self.nats.url.as_deref().unwrap_or("embedded"),
            self.qdrant.url.as_deref().unwrap_or("embedded"),
            self.qdrant.collection,
            self.qdrant.vector_size,
            self.data_dir.display(),
            if self.jwt.public_key_pem.is_some() {
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
        self.jwt.secret.expose_secret()
    }
}

fn invalid(name: &'static str, value: &str, reason: &str) -> SettingsError {
    SettingsError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    /// A variable's value; empty counts as unset, as in most shells' `.env` conventions.
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T>(&self, name: &'static str, default: &str) -> Result<T, SettingsError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let value = self.get(name).unwrap_or_else(|| default.to_owned());
        value
            .parse()
            .map_err(|err: T::Err| invalid(name, &value, &err.to_string()))
    }

    fn parse_bool(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(invalid(name, other, "expected true or false")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:8000");
        assert!(s.nats.url.is_none());
        assert!(s.qdrant.url.is_none());
        assert_eq!(s.qdrant.collection, "embeddings");
        assert_eq!(s.qdrant.vector_size, 384);
        assert!(s.jwt_dev_secret);
        assert_eq!(s.probes.timeout, Duration::from_millis(500));
        assert_eq!(s.probes.retries, 3);
        assert_eq!(s.probes.cache, Duration::from_secs(10));
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
        assert!(s.qdrant.url.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("HEIMDEX_API_ADDR", "nope"),
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
        assert_eq!(
            s.telemetry.sampler.root,
            heimdex_telemetry::RootSampler::TraceIdRatio(0.1)
        );
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
    fn overload_defaults_allow_the_benchmarks() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        // Above the ~5,300 jobs/s one node accepts (docs/BENCHMARKS.md), and a burst that holds
        // the largest batch (1,000 segments) many times over.
        assert_eq!(s.overload.rate_per_sec, 10_000);
        assert_eq!(s.overload.burst, 20_000);
        assert_eq!(s.overload.max_backlog, 100_000);
        assert_eq!(s.overload.header_timeout, Duration::from_secs(10));
        assert_eq!(s.overload.read_timeout, Duration::from_secs(30));
        assert_eq!(s.overload.max_connections, None);
        let s = Settings::from_vars(&vars(&[("HEIMDEX_MAX_CONNECTIONS", "5000")])).unwrap();
        assert_eq!(s.overload.max_connections, Some(5000));
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
        assert_eq!(s.overload.rate_per_sec, 0);
        assert_eq!(s.overload.max_backlog, 0);
        assert_eq!(s.overload.header_timeout, Duration::from_millis(250));
        assert_eq!(s.overload.read_timeout, Duration::from_millis(250));
        let s = Settings::from_vars(&vars(&[
            ("HEIMDEX_RATE_LIMIT_JOBS_PER_SEC", "5"),
            ("HEIMDEX_RATE_LIMIT_BURST", "7"),
            ("HEIMDEX_MAX_BACKLOG", "42"),
        ]))
        .unwrap();
        assert_eq!((s.overload.rate_per_sec, s.overload.burst), (5, 7));
        assert_eq!(s.overload.max_backlog, 42);
    }

    #[test]
    fn sync_interval_is_always_or_a_duration() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(
            s.nats.sync_interval,
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
            assert_eq!(s.nats.sync_interval, want, "{value}");
        }
        assert_eq!(SyncInterval::Always.to_nats_conf(), "always");
        assert_eq!(
            SyncInterval::Every(Duration::from_secs(2)).to_nats_conf(),
            "\"2000ms\""
        );
    }
}

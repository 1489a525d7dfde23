//! One typed settings struct for every process, read from the environment (and from `.env` when
//! present). Validated once at start-up; secrets stay wrapped so they never reach logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::JwtConfig;

/// The shortest `JWT_SECRET` accepted in production: 32 bytes, the HS256 key size.
pub const MIN_PROD_SECRET_LEN: usize = 32;

/// The signing secret used in `dev` when none is configured. Public by construction, which is why
/// `prod` refuses to start without a real one.
const DEV_JWT_SECRET: &str = "heimdex-dev-secret-do-not-use-in-production";

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
    pub otlp_endpoint: Option<String>,
    pub log_format: LogFormat,
    pub filter: String,
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
                log_format: match env.get("LOG_FORMAT").as_deref() {
                    None | Some("pretty") | Some("text") => LogFormat::Pretty,
                    Some("json") => LogFormat::Json,
                    Some(other) => {
                        return Err(invalid("LOG_FORMAT", other, "expected json or pretty"));
                    }
                },
                filter: env.get("RUST_LOG").unwrap_or_else(|| "info".into()),
            },
            probes: ProbeSettings {
                timeout: Duration::from_millis(env.parse("PROBE_TIMEOUT_MS", "500")?),
                retries: env.parse("PROBE_RETRIES", "3")?,
                cache: Duration::from_secs(env.parse("PROBE_CACHE_SEC", "10")?),
            },
            worker: WorkerSettings {
                concurrency: env.parse("HEIMDEX_WORKER_CONCURRENCY", "256")?,
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
        if self.nats.publish_timeout.is_zero() {
            return Err(invalid("NATS_PUBLISH_TIMEOUT_MS", "0", "must be positive"));
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
        ] {
            let err = Settings::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

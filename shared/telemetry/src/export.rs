//! Where spans go: the OTLP protocol (`OTEL_EXPORTER_OTLP_PROTOCOL`) and the sampler
//! (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), spelled as the OpenTelemetry
//! specification spells them, parsed and checked at start-up instead of being read (and, when
//! wrong, silently replaced by a default) inside the SDK.

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::TelemetryError;

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// `grpc`: OTLP over gRPC, usually port 4317.
    Grpc,
    /// `http/protobuf`: OTLP over HTTP with binary protobuf bodies, usually port 4318. The
    /// specification's default.
    #[default]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// The port collectors conventionally listen on for this protocol.
    pub fn conventional_port(self) -> u16 {
        match self {
            OtlpProtocol::Grpc => 4317,
            OtlpProtocol::HttpProtobuf => 4318,
        }
    }
}

impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OtlpProtocol {
    type Err = TelemetryError;

    /// `grpc` or `http/protobuf`. `http/json` is a valid OTLP protocol that Heimdex does not
    /// speak: refused with a message saying so rather than exported some other way.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            _other => Err(TelemetryError::InvalidProtocol(s.to_owned())),
        }
    }
}

/// Why `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "unknown sampler {0:?} (expected always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
    )]
    Unknown(String),
    #[error("the ratio {0:?} is not a number from 0 to 1")]
    BadRatio(String),
}

/// Which traces are recorded: the specification's `OTEL_TRACES_SAMPLER` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampler {
    /// `parentbased_*`: a span with a parent follows its parent's decision (so a trace that
    /// started sampled in a client, or in the API, stays whole across the worker); the root
    /// decision applies to spans without one.
    pub parent_based: bool,
    pub root: RootSampler,
}

/// The decision for spans without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps this fraction of traces (0.0 to 1.0), chosen by trace id.
    TraceIdRatio(f64),
}

impl Default for TraceSampler {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Self {
            parent_based: true,
            root: RootSampler::AlwaysOn,
        }
    }
}

impl TraceSampler {
    /// Reads `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`; unset:
    /// `parentbased_always_on`) and, for the ratio samplers, `OTEL_TRACES_SAMPLER_ARG` (a
    /// number from 0 to 1; unset: 1).
    pub fn parse(sampler: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerError> {
        let name = sampler.map(|s| s.trim().to_ascii_lowercase());
        let ratio = || -> Result<f64, SamplerError> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(SamplerError::BadRatio(arg.to_owned())),
            }
        };
        let (parent_based, root) = match name.as_deref() {
            None | Some("parentbased_always_on") => (true, RootSampler::AlwaysOn),
            Some("parentbased_always_off") => (true, RootSampler::AlwaysOff),
            Some("parentbased_traceidratio") => (true, RootSampler::TraceIdRatio(ratio()?)),
            Some("always_on") => (false, RootSampler::AlwaysOn),
            Some("always_off") => (false, RootSampler::AlwaysOff),
            Some("traceidratio") => (false, RootSampler::TraceIdRatio(ratio()?)),
            Some(_other) => {
                return Err(SamplerError::Unknown(
                    sampler.unwrap_or_default().to_owned(),
                ));
            }
        };
        Ok(Self { parent_based, root })
    }

    fn to_sdk(self) -> Sampler {
        let root = match self.root {
            RootSampler::AlwaysOn => Sampler::AlwaysOn,
            RootSampler::AlwaysOff => Sampler::AlwaysOff,
            RootSampler::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

impl std::fmt::Display for TraceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = if self.parent_based {
            "parentbased_"
        } else {
            ""
        };
        match self.root {
            RootSampler::AlwaysOn => write!(f, "{prefix}always_on"),
            RootSampler::AlwaysOff => write!(f, "{prefix}always_off"),
            RootSampler::TraceIdRatio(ratio) => write!(f, "{prefix}traceidratio({ratio})"),
        }
    }
}

/// The URL spans are sent to. `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL: gRPC uses it as
/// it is, OTLP/HTTP appends the signal's path, `/v1/traces` (unless it is already there).
pub fn traces_url(endpoint: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => endpoint.to_owned(),
        OtlpProtocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            }
        }
    }
}

/// Warns about the most common mistake: the gRPC port with the HTTP protocol, or the reverse.
/// Export would then fail on every batch, quietly from the service's point of view.
pub(crate) fn warn_on_port_mismatch(endpoint: &str, protocol: OtlpProtocol) {
    let other = match protocol {
        OtlpProtocol::Grpc => OtlpProtocol::HttpProtobuf,
        OtlpProtocol::HttpProtobuf => OtlpProtocol::Grpc,
    };
    let port = other.conventional_port();
    let base = endpoint.trim_end_matches('/');
    let base = base.strip_suffix("/v1/traces").unwrap_or(base);
    if base.ends_with(&format!(":{port}")) {
        tracing::warn!(
            endpoint,
            %protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT uses port {port}, the {other} port, but \
             OTEL_EXPORTER_OTLP_PROTOCOL is {protocol}: set OTEL_EXPORTER_OTLP_PROTOCOL={other} \
             if the collector there speaks {other}"
        );
    }
}

/// A tracer provider exporting over OTLP with a batch span processor (its own thread).
pub(crate) fn otlp_provider(
    service_name: &str,
    endpoint: &str,
    protocol: OtlpProtocol,
    sampler: TraceSampler,
) -> Result<SdkTracerProvider, TelemetryError> {
    let url = traces_url(endpoint, protocol);
    let exporter = match protocol {
        OtlpProtocol::Grpc => {
            // The tonic channel is bound to the Tokio runtime it is built in.
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(TelemetryError::NoTokioRuntime);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(url)
                .build()?
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()?,
    };
    Ok(SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .with_sampler(sampler.to_sdk())
        .with_batch_exporter(exporter)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_as_the_specification_spells_them() {
        assert_eq!(
            "grpc".parse::<OtlpProtocol>().ok(),
            Some(OtlpProtocol::Grpc)
        );
        assert_eq!(
            "http/protobuf".parse::<OtlpProtocol>().ok(),
            Some(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(OtlpProtocol::default(), OtlpProtocol::HttpProtobuf);
        for bad in ["http/json", "http", "udp", ""] {
            let err = bad.parse::<OtlpProtocol>().unwrap_err();
            assert!(matches!(err, TelemetryError::InvalidProtocol(_)), "{bad}");
        }
    }

    #[test]
    fn http_appends_the_traces_path_and_grpc_does_not() {
        let http = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            traces_url("http://collector:4318", http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/", http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces", http),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4317", OtlpProtocol::Grpc),
            "http://collector:4317"
        );
    }

    #[test]
    fn samplers_parse_with_their_argument() {
        assert_eq!(
            TraceSampler::parse(None, None).unwrap(),
            TraceSampler::default()
        );
        assert_eq!(
            TraceSampler::parse(Some("always_off"), None).unwrap(),
            TraceSampler {
                parent_based: false,
                root: RootSampler::AlwaysOff
            }
        );
        assert_eq!(
            TraceSampler::parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap(),
            TraceSampler {
                parent_based: true,
                root: RootSampler::TraceIdRatio(0.25)
            }
        );
        assert_eq!(
            TraceSampler::parse(Some("TraceIdRatio"), None)
                .unwrap()
                .root,
            RootSampler::TraceIdRatio(1.0)
        );
        assert!(matches!(
            TraceSampler::parse(Some("sometimes"), None),
            Err(SamplerError::Unknown(_))
        ));
        for bad in ["1.5", "-0.1", "half", "NaN"] {
            assert!(
                matches!(
                    TraceSampler::parse(Some("traceidratio"), Some(bad)),
                    Err(SamplerError::BadRatio(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            TraceSampler::parse(Some("parentbased_traceidratio"), Some("0.5"))
                .unwrap()
                .to_string(),
            "parentbased_traceidratio(0.5)"
        );
    }
}

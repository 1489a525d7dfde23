//! An OTLP trace receiver the test runs itself, over either protocol a collector speaks: gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, the server generated from
//! the OTLP protos that `opentelemetry-proto` ships) and HTTP/protobuf (`POST /v1/traces` with
//! an `application/x-protobuf` body, decoded with the same message types). It keeps what it
//! receives in memory. Nothing is downloaded: the receiver is this file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener};
use poem::{EndpointExt, IntoResponse};
use prost::Message as _;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// One received span, flattened for assertions.
#[derive(Clone, Debug)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind` number: 2 server, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    requests: usize,
}

pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    pub async fn start(protocol: Protocol) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = match protocol {
            Protocol::Grpc => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind gRPC receiver");
                let addr = listener.local_addr().expect("address");
                let service = TraceServiceServer::new(GrpcReceiver(received.clone()));
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        }),
                );
                addr
            }
            Protocol::HttpProtobuf => {
                let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
                    .into_acceptor()
                    .await
                    .expect("bind HTTP receiver");
                let addr = *acceptor.local_addr()[0]
                    .as_socket_addr()
                    .expect("socket address");
                let app = poem::Route::new()
                    .at("/v1/traces", poem::post(export_http))
                    .data(received.clone());
                tokio::spawn(
                    poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
                        app,
                        async {
                            let _ = stopped.await;
                        },
                        None,
                    ),
                );
                addr
            }
        };
        Self {
            addr,
            received,
            stop: Some(stop),
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().expect("lock").spans.clone()
    }

    /// Export requests received (each a batch of spans).
    pub fn requests(&self) -> usize {
        self.received.lock().expect("lock").requests
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct GrpcReceiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// OTLP/HTTP: a protobuf `ExportTraceServiceRequest` in, a protobuf response out.
#[poem::handler]
async fn export_http(
    req: &poem::Request,
    body: poem::Body,
    received: poem::web::Data<&Arc<Mutex<Received>>>,
) -> poem::Response {
    let content_type = req.content_type().unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(bytes) = body.into_bytes().await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(request) = ExportTraceServiceRequest::decode(bytes) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    record(received.0, request);
    poem::Response::builder()
        .content_type("application/x-protobuf")
        .body(
            ExportTraceServiceResponse {
                partial_success: None,
            }
            .encode_to_vec(),
        )
}

fn record(received: &Mutex<Received>, request: ExportTraceServiceRequest) {
    let mut received = received.lock().expect("lock");
    received.requests += 1;
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| {
                attributes(&resource.attributes)
                    .get("service.name")
                    .cloned()
            })
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                });
            }
        }
    }
}

fn attributes(values: &[KeyValue]) -> HashMap<String, String> {
    values
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! With an OTLP endpoint, `init` exports through the batch processor: spans get trace ids, and
//! dropping the guard flushes them to the collector over gRPC (HTTP/2) and returns promptly
//! even though this fake collector hangs up without answering.

use std::time::{Duration, Instant};

use heimdex_telemetry::{LogFormat, OtlpProtocol, TelemetryConfig, current_trace_id, init};
use tokio::io::AsyncReadExt;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn otlp_pipeline_flushes_to_collector_on_guard_drop() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake collector");
        let addr = listener.local_addr().expect("local addr");
        let collector = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("exporter connects");
            let mut preface = vec![0_u8; HTTP2_PREFACE.len()];
            socket.read_exact(&mut preface).await.expect("read preface");
            preface
        });

        let cfg = TelemetryConfig {
            service_name: "otlp-test".to_owned(),
            log_format: LogFormat::Json,
            otlp_endpoint: Some(format!("http://{addr}")),
            otlp_protocol: OtlpProtocol::Grpc,
            ..TelemetryConfig::default()
        };
        let guard = init(&cfg).expect("init with OTLP inside a runtime");
        assert!(guard.exporting());
        {
            let span = tracing::info_span!("exported");
            let _entered = span.enter();
            let id = current_trace_id().expect("trace id with OTLP layer");
            assert_eq!(id.len(), 32);
        }

        let started = Instant::now();
        let dropped = tokio::task::spawn_blocking(move || drop(guard));
        let preface = tokio::time::timeout(Duration::from_secs(15), collector)
            .await
            .expect("exporter reached the collector in time")
            .expect("collector task");
        assert_eq!(preface, HTTP2_PREFACE, "OTLP export speaks gRPC/HTTP2");
        dropped.await.expect("guard drop does not panic");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "shutdown took {:?}",
            started.elapsed()
        );
    });
}

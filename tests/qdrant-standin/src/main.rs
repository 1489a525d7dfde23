//! `qdrant-standin --data <dir> [--listen 127.0.0.1:6334]`: the test stand-in for a Qdrant
//! server as a separate process, so tests can `kill -9` it and restart it on the same data.
//!
//! Prints its URL (`http://127.0.0.1:<port>`) on stdout, alone on one line, once it accepts
//! connections; logs go to stderr. Stops on Ctrl-C or SIGTERM. See the library docs for what
//! it is and is not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use heimdex_qdrant_standin::Standin;
use tokio::io::AsyncWriteExt;

/// Test-only stand-in for a Qdrant server (Qdrant's gRPC API over qdrant-edge).
#[derive(Debug, Parser)]
#[command(name = "qdrant-standin", version)]
struct Args {
    /// Data directory (created if missing); collections persist here across restarts.
    #[arg(long, env = "QDRANT_STANDIN_DATA")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port (read it from stdout).
    #[arg(long, env = "QDRANT_STANDIN_LISTEN", default_value = "127.0.0.1:6334")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let standin = match Standin::start(&args.data, args.listen).await {
        Ok(standin) => standin,
        Err(e) => {
            eprintln!("qdrant-standin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = tokio::io::stdout();
    let announced = async {
        stdout
            .write_all(format!("{}\n", standin.url()).as_bytes())
            .await?;
        stdout.flush().await
    };
    if let Err(e) = announced.await {
        eprintln!("qdrant-standin: cannot write the URL to stdout: {e}");
        return ExitCode::FAILURE;
    }
    shutdown_signal().await;
    standin.stop().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

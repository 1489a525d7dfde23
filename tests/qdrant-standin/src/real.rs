//! A real Qdrant server for tests, when one is at hand: `QDRANT_URL`, or the binary at
//! `../shared/tools/qdrant` beside the repository (see that directory's README), started on
//! free ports with its storage in a temporary directory and killed when dropped.
//!
//! The stand-in runs the same engine as the embedded store, so only a real server shows that
//! the remote adapter ranks as the embedded one does. A clone without `../shared` has neither,
//! and [`RealQdrant::start`] answers `None`: tests that need a real server then say they were
//! skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server gets to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A Qdrant server: one the environment names, or one this value started (and kills on drop).
pub struct RealQdrant {
    url: String,
    child: Option<Child>,
    _storage: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for RealQdrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealQdrant")
            .field("url", &self.url)
            .field("started_here", &self.child.is_some())
            .finish()
    }
}

impl RealQdrant {
    /// `QDRANT_URL` if set; otherwise the binary `../shared/tools/qdrant` (relative to the
    /// workspace root) started here; otherwise `None`. Panics if the binary exists but does
    /// not come up.
    pub async fn start() -> Option<Self> {
        if let Some(url) = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) {
            return Some(Self {
                url,
                child: None,
                _storage: None,
            });
        }
        let binary = shared_binary()?;
        let mut last_error = String::new();
        // A port picked free may be taken before the server binds it: try a few times.
        for _ in 0..3 {
            match spawn(&binary).await {
                Ok(server) => return Some(server),
                Err(err) => last_error = err,
            }
        }
        panic!("{} did not start: {last_error}", binary.display());
    }

    /// The gRPC URL, for `QDRANT_URL` / the remote adapter.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for RealQdrant {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `<workspace>/../shared/tools/qdrant`, if it is there.
fn shared_binary() -> Option<PathBuf> {
    // This crate is `<workspace>/tests/qdrant-standin`.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.parent()?;
    let binary = workspace.parent()?.join("shared/tools/qdrant");
    binary.is_file().then_some(binary)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

async fn spawn(binary: &Path) -> Result<RealQdrant, String> {
    let storage = tempfile::TempDir::new().map_err(|e| format!("temp dir: {e}"))?;
    let (http, grpc) = (free_port()?, free_port()?);
    let log = std::fs::File::create(storage.path().join("qdrant.log"))
        .map_err(|e| format!("log file: {e}"))?;
    let log_err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    let mut child = Command::new(binary)
        .current_dir(storage.path())
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
        .env(
            "QDRANT__STORAGE__STORAGE_PATH",
            storage.path().join("storage"),
        )
        .env(
            "QDRANT__STORAGE__SNAPSHOTS_PATH",
            storage.path().join("snapshots"),
        )
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let url = format!("http://127.0.0.1:{grpc}");
    let client = qdrant_client::Qdrant::from_url(&url)
        .skip_compatibility_check()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log =
                std::fs::read_to_string(storage.path().join("qdrant.log")).unwrap_or_default();
            return Err(format!("exited with {status}: {log}"));
        }
        if client.health_check().await.is_ok() {
            return Ok(RealQdrant {
                url,
                child: Some(child),
                _storage: Some(storage),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer on {url} within {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

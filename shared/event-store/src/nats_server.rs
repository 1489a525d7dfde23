//! A `nats-server` child process: what `heimdex serve` runs when `NATS_URL` is unset, and what the
//! integration tests start for themselves (random port, temp store, killed on drop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Environment variable naming the binary explicitly.
pub const BIN_ENV: &str = "NATS_SERVER_BIN";
/// Where `deploy/setup.sh` installs the binary, relative to the repository root.
pub const TOOLS_BIN: &str = ".tools/bin/nats-server";

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "nats-server not found: set NATS_SERVER_BIN, put nats-server on PATH, or run \
         `deploy/setup.sh` (it installs one into .tools/bin)"
    )]
    NotFound,
    #[error("cannot start nats-server {bin}: {reason}")]
    Spawn { bin: String, reason: String },
    #[error("nats-server exited during start-up ({status}); see {log}")]
    Exited { status: String, log: String },
    #[error("nats-server did not report its ports within {0:?}; see {1}")]
    Timeout(Duration, String),
    #[error("I/O error on {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Finds the binary: `NATS_SERVER_BIN`, then PATH, then `.tools/bin` of the current directory or
/// of any parent (so tests run from a crate directory find the repo's tools).
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, NatsServerError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(NatsServerError::NotFound)
        };
    }
    if let Some(path) = std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Ok(path);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(found);
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(TOOLS_BIN);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_owned);
    }
    Err(NatsServerError::NotFound)
}

#[derive(Clone, Debug)]
pub struct NatsServerConfig {
    pub bin: PathBuf,
    /// JetStream store directory; the ports file, pid file and log go next to it.
    pub store_dir: PathBuf,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Extra command-line arguments (e.g. cluster routes).
    pub extra_args: Vec<String>,
    /// When JetStream fsyncs its files (`jetstream { sync_interval }`, which has no command-line
    /// flag, so it goes into a config file next to the store). `None`: nats-server's own default
    /// (every 2 minutes).
    pub sync_interval: Option<SyncInterval>,
    /// More lines for the `jetstream { }` block of that file (a test's `max_file_store: 8MB`).
    pub jetstream: Vec<String>,
}

impl NatsServerConfig {
    /// A server on `listen` with its store in `store_dir`, nats-server's defaults otherwise.
    pub fn new(bin: PathBuf, store_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            bin,
            store_dir,
            listen,
            extra_args: Vec::new(),
            sync_interval: None,
            jetstream: Vec::new(),
        }
    }
}

/// A nats-server process that can be stopped, killed and started again on the same port and
/// store, as `heimdex serve`'s supervisor and the fault tests need. Dropping it kills the
/// process.
#[derive(Debug)]
pub struct NatsServer {
    config: NatsServerConfig,
    /// `None` while stopped.
    child: Option<Child>,
    url: String,
}

impl NatsServer {
    /// Starts the server. With port 0 it picks a free port, which every later
    /// [`NatsServer::start_again`] reuses, so clients reconnect to the same URL.
    pub async fn start(config: NatsServerConfig) -> Result<Self, NatsServerError> {
        let mut server = Self {
            config,
            child: None,
            url: String::new(),
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), NatsServerError> {
        let config = &self.config;
        let run_dir = config.store_dir.join("run");
        create_dir(&run_dir)?;
        kill_stale(&run_dir.join("nats-server.pid")).await;
        clear_ports_files(&run_dir)?;

        let log = run_dir.join("nats-server.log");
        // nats-server takes -1 for "pick a free port"; 0 would mean its default 4222.
        let port_arg = match config.listen.port() {
            0 => "-1".to_owned(),
            port => port.to_string(),
        };
        let mut command = Command::new(&config.bin);
        command
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&config.store_dir)
            .arg("--addr")
            .arg(config.listen.ip().to_string())
            .arg("--port")
            .arg(port_arg)
            .arg("--ports_file_dir")
            .arg(&run_dir)
            .arg("--pid")
            .arg(run_dir.join("nats-server.pid"))
            .arg("--log")
            .arg(&log);
        let mut jetstream: Vec<String> = config
            .sync_interval
            .map(|sync| format!("sync_interval: {}", sync.to_nats_conf()))
            .into_iter()
            .collect();
        jetstream.extend(config.jetstream.iter().cloned());
        if !jetstream.is_empty() {
            let conf = run_dir.join("nats-server.conf");
            write_file(
                &conf,
                &format!(
                    "# Written by heimdex on every start; edit NATS_SYNC_INTERVAL instead.\n\
                     jetstream {{\n  {}\n}}\n",
                    jetstream.join("\n  ")
                ),
            )?;
            command.arg("--config").arg(&conf);
        }
        command
            .args(&config.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|err| NatsServerError::Spawn {
            bin: config.bin.display().to_string(),
            reason: err.to_string(),
        })?;

        let timeout = Duration::from_secs(15);
        let deadline = Instant::now() + timeout;
        let url = loop {
            if let Some(url) = read_ports_file(&run_dir, child.id())? {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(NatsServerError::Exited {
                    status: status.to_string(),
                    log: log.display().to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(NatsServerError::Timeout(timeout, log.display().to_string()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok()) {
            self.config.listen.set_port(port);
        }
        self.url = url;
        self.child = Some(child);
        Ok(())
    }

    /// `nats://host:port` clients connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.config.listen.port()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn config(&self) -> &NatsServerConfig {
        &self.config
    }

    /// The configuration the next [`NatsServer::start_again`] uses (say, other `jetstream`
    /// lines); its port stays the one clients know.
    pub fn config_mut(&mut self) -> &mut NatsServerConfig {
        &mut self.config
    }

    /// Waits for the process to exit on its own (it should not); at once if it is stopped.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = match self.child.as_mut() {
            Some(child) => child.wait().await,
            None => return Ok(std::process::ExitStatus::default()),
        };
        self.child = None;
        status
    }

    /// Asks the server to shut down cleanly (SIGTERM), then kills it if it lingers. Its store
    /// stays, for [`NatsServer::start_again`].
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = child.kill().await;
    }

    /// Kills the process at once (SIGKILL), as a crash or the OOM killer would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and store, after a stop, a kill or a crash.
    /// The port can linger for a moment after a kill, so it keeps trying for up to 30 s.
    pub async fn start_again(&mut self) -> Result<(), NatsServerError> {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!(%err, "nats-server does not start yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), NatsServerError> {
    std::fs::create_dir_all(dir).map_err(|err| NatsServerError::Io {
        path: dir.display().to_string(),
        reason: err.to_string(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), NatsServerError> {
    std::fs::write(path, text).map_err(|err| NatsServerError::Io {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}

fn clear_ports_files(dir: &Path) -> Result<(), NatsServerError> {
    let entries = std::fs::read_dir(dir).map_err(|err| NatsServerError::Io {
        path: dir.display().to_string(),
        reason: err.to_string(),
    })?;
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "ports") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The client URL from `<dir>/nats-server_<pid>.ports`, once the server has written it.
fn read_ports_file(dir: &Path, pid: Option<u32>) -> Result<Option<String>, NatsServerError> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    let path = dir.join(format!("nats-server_{pid}.ports"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    // The file may be observed half-written; treat a parse failure as "not yet".
    Ok(serde_json::from_str::<Ports>(&text)
        .ok()
        .and_then(|ports| ports.nats.into_iter().next()))
}

/// A `heimdex serve` that died by `kill -9` leaves its nats-server child behind, holding the
/// store's lock. Its pid file names it; if that process is still a nats-server, end it.
async fn kill_stale(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let is_nats = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains("nats-server"))
        .unwrap_or(false);
    if !is_nats {
        return;
    }
    tracing::warn!(pid, "stopping a nats-server left behind by an earlier run");
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
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

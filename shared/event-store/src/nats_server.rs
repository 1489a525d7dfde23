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
}

/// A running nats-server. Dropping it kills the process.
#[derive(Debug)]
pub struct NatsServer {
    config: NatsServerConfig,
    child: Child,
    url: String,
    port: u16,
}

impl NatsServer {
    pub async fn start(config: NatsServerConfig) -> Result<Self, NatsServerError> {
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
        if let Some(sync) = config.sync_interval {
            let conf = run_dir.join("nats-server.conf");
            write_file(
                &conf,
                &format!(
                    "# Written by heimdex on every start; edit NATS_SYNC_INTERVAL instead.\n\
                     jetstream {{\n  sync_interval: {}\n}}\n",
                    sync.to_nats_conf()
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
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(config.listen.port());
        Ok(Self {
            config,
            child,
            url,
            port,
        })
    }

    /// `nats://host:port` clients connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn config(&self) -> &NatsServerConfig {
        &self.config
    }

    /// Waits for the process to exit on its own (it should not).
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Asks the server to shut down cleanly (SIGTERM), then kills it if it lingers.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts a new server with the same store and the same port.
    pub async fn restart(self) -> Result<Self, NatsServerError> {
        let mut config = self.config.clone();
        config.listen.set_port(self.port);
        self.stop().await;
        Self::start(config).await
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

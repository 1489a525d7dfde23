//! A TCP proxy of the tests' own, for fault injection between a client and a real dependency
//! (e.g. the remote-Qdrant adapter and its server): the network failures a deployment meets —
//! the peer resets, the peer goes silent, the link is slow — made on demand, at run time.
//!
//! [`TcpProxy`] listens on `127.0.0.1:0` and forwards every connection to one target. Its
//! [`Mode`] applies to new *and* existing connections (gRPC clients keep one connection open,
//! so a fault that spared open connections would test nothing):
//!
//! * [`Mode::Forward`]: bytes flow both ways, after [`TcpProxy::set_latency`] if set.
//! * [`Mode::Refuse`]: every connection, open or new, is reset at once (`SO_LINGER` 0: the
//!   client sees "connection reset", the target sees the proxy's side go away).
//! * [`Mode::Blackhole`]: connections are accepted but nothing is forwarded or answered, so
//!   clients run into their own timeouts. Bytes already sent stay queued, like on a
//!   partitioned link: back in `Forward`, open connections resume where they stopped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Refuse,
    Blackhole,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    mode: Mode,
    /// Added before each chunk is passed on, in either direction.
    latency: Duration,
}

/// A running proxy; dropping it stops it and resets every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    config: watch::Sender<Config>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`, starting in [`Mode::Forward`].
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (config, _) = watch::channel(Config {
            mode: Mode::Forward,
            latency: Duration::ZERO,
        });
        let accept = tokio::spawn(accept_loop(listener, target, config.subscribe()));
        Ok(Self {
            addr,
            target,
            config,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for clients configured by URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn mode(&self) -> Mode {
        self.config.borrow().mode
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.config.send_modify(|c| c.mode = mode);
    }

    /// Delays every chunk passed on (each direction) by `latency`; `Duration::ZERO` to stop.
    pub fn set_latency(&self, latency: Duration) {
        self.config.send_modify(|c| c.latency = latency);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping `config` closes the channel, which resets the open connections.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, config: watch::Receiver<Config>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // E.g. out of file descriptors: don't spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, target, config.clone()));
    }
}

/// One client connection, for its whole life. The target is dialled when the connection is
/// first in `Forward` mode (a connection accepted during a blackhole waits for it).
async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut config: watch::Receiver<Config>,
) {
    let mut upstream: Option<TcpStream> = None;
    loop {
        let Config { mode, latency } = *config.borrow_and_update();
        match mode {
            Mode::Refuse => break,
            Mode::Blackhole => {
                if config.changed().await.is_err() {
                    break;
                }
            }
            Mode::Forward => {
                let up = match &mut upstream {
                    Some(up) => up,
                    None => match TcpStream::connect(target).await {
                        Ok(up) => {
                            let _ = up.set_nodelay(true);
                            upstream.insert(up)
                        }
                        // Target down: the client sees a reset, as it would without a proxy.
                        Err(_) => break,
                    },
                };
                match pump(&mut client, up, latency, &mut config).await {
                    Pumped::ConfigChanged => {}
                    Pumped::Closed | Pumped::ProxyStopped => break,
                }
            }
        }
    }
    reset(&client);
    if let Some(up) = &upstream {
        reset(up);
    }
}

enum Pumped {
    ConfigChanged,
    Closed,
    ProxyStopped,
}

/// Copies bytes both ways until a side closes or the config changes. Reads are cancel-safe,
/// so stopping on a config change loses nothing.
async fn pump(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    latency: Duration,
    config: &mut watch::Receiver<Config>,
) -> Pumped {
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    loop {
        let (n, to_upstream) = tokio::select! {
            // A mode switch wins over data that arrived with it: set_mode happens-before the
            // client's next write, so no byte written after a switch is passed on.
            biased;
            changed = config.changed() => {
                return if changed.is_ok() { Pumped::ConfigChanged } else { Pumped::ProxyStopped };
            }
            read = client.read(&mut from_client) => match read {
                Ok(n) if n > 0 => (n, true),
                Ok(_) | Err(_) => return Pumped::Closed,
            },
            read = upstream.read(&mut from_upstream) => match read {
                Ok(n) if n > 0 => (n, false),
                Ok(_) | Err(_) => return Pumped::Closed,
            },
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let written = if to_upstream {
            upstream.write_all(&from_client[..n]).await
        } else {
            client.write_all(&from_upstream[..n]).await
        };
        if written.is_err() {
            return Pumped::Closed;
        }
    }
}

/// Closes with RST rather than FIN, so the peer sees "connection reset" at once.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes every byte back; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `msg` and reads the echo, within `timeout`.
    async fn roundtrip(
        stream: &mut TcpStream,
        msg: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(timeout, async {
            stream.write_all(msg).await?;
            stream.read_exact(&mut buf).await?;
            Ok(buf)
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
    }

    const PATIENCE: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn forward_refuse_blackhole_forward() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");

        // Forward: bytes go through both ways.
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut open, b"hello", PATIENCE)
                .await
                .expect("echo"),
            b"hello"
        );

        // Refuse: the open connection breaks at once, and new ones are reset.
        proxy.set_mode(Mode::Refuse);
        assert!(roundtrip(&mut open, b"x", PATIENCE).await.is_err());
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("tcp accept");
        let err = roundtrip(&mut fresh, b"x", PATIENCE)
            .await
            .expect_err("refused");
        assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

        // Blackhole: accepted, never answered; the client's own timeout fires.
        proxy.set_mode(Mode::Blackhole);
        let mut held = TcpStream::connect(proxy.addr()).await.expect("connect");
        let err = roundtrip(&mut held, b"ping", SHORT)
            .await
            .expect_err("blackholed");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

        // Forward again: new connections work, and the held one resumes with its bytes.
        proxy.set_mode(Mode::Forward);
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut again, b"back", PATIENCE)
                .await
                .expect("echo"),
            b"back"
        );
        let mut buf = [0u8; 4];
        tokio::time::timeout(PATIENCE, held.read_exact(&mut buf))
            .await
            .expect("held connection resumes")
            .expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn blackhole_holds_open_connections_too() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            roundtrip(&mut open, b"1", PATIENCE).await.expect("echo"),
            b"1"
        );
        proxy.set_mode(Mode::Blackhole);
        let err = roundtrip(&mut open, b"2", SHORT)
            .await
            .expect_err("blackholed");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }

    #[tokio::test]
    async fn latency_delays_each_way() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
        proxy.set_latency(Duration::from_millis(150));
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        let started = std::time::Instant::now();
        roundtrip(&mut stream, b"slow", PATIENCE)
            .await
            .expect("echo");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        proxy.set_latency(Duration::ZERO);
        let started = std::time::Instant::now();
        roundtrip(&mut stream, b"fast", PATIENCE)
            .await
            .expect("echo");
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn target_down_resets_the_client() {
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = unused.local_addr().expect("addr");
        drop(unused);
        let proxy = TcpProxy::start(target).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        let err = roundtrip(&mut stream, b"x", PATIENCE)
            .await
            .expect_err("no target");
        assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    }
}

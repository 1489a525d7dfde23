//! Readiness probes with the Python service's semantics: each dependency check has a timeout and
//! a number of tries, and its answer is cached (`PROBE_CACHE_SEC` after a success, three times
//! that after a failure) so a burst of `/readyz` calls does not hammer the dependencies.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Mutex;

/// How the readiness probes behave (`PROBE_TIMEOUT_MS`, `PROBE_RETRIES`, `PROBE_CACHE_SEC`).
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Timeout of one try.
    pub timeout: Duration,
    /// Tries per probe.
    pub retries: u32,
    /// How long a successful probe is cached; failures are cached three times as long.
    pub cache: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub latency_ms: f64,
    /// Short, secret-free reason for a failure.
    pub error: Option<String>,
}

/// One dependency's probe and its cached outcome.
pub struct CachedProbe {
    settings: ProbeConfig,
    cached: Mutex<Option<(Instant, ProbeOutcome)>>,
}

impl CachedProbe {
    pub fn new(settings: ProbeConfig) -> Self {
        Self {
            settings,
            cached: Mutex::new(None),
        }
    }

    /// Returns the cached outcome while it is fresh, else runs `check` (each try bounded by the
    /// probe timeout, up to `retries` tries) and caches the result.
    pub async fn check<F, Fut, E>(&self, check: F) -> ProbeOutcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut cached = self.cached.lock().await;
        if let Some((at, outcome)) = cached.as_ref() {
            let ttl = if outcome.ok {
                self.settings.cache
            } else {
                self.settings.cache * 3
            };
            if at.elapsed() < ttl {
                return outcome.clone();
            }
        }
        let outcome = self.run(check).await;
        *cached = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Forgets the cached outcome (used when a dependency is known to have changed).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn run<F, Fut, E>(&self, check: F) -> ProbeOutcome
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let tries = self.settings.retries.max(1);
        let mut error = None;
        for attempt in 1..=tries {
            let started = Instant::now();
            match tokio::time::timeout(self.settings.timeout, check()).await {
                Ok(Ok(())) => {
                    return ProbeOutcome {
                        ok: true,
                        latency_ms: round_ms(started.elapsed()),
                        error: None,
                    };
                }
                Ok(Err(err)) => error = Some(err.to_string()),
                Err(_) => error = Some(format!("timed out after {:?}", self.settings.timeout)),
            }
            if attempt < tries {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
        }
        ProbeOutcome {
            ok: false,
            latency_ms: 0.0,
            error,
        }
    }
}

fn round_ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn settings() -> ProbeConfig {
        ProbeConfig {
            timeout: Duration::from_millis(50),
            retries: 3,
            cache: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn success_is_cached_for_the_cache_period() {
        let probe = CachedProbe::new(settings());
        let calls = AtomicU32::new(0);
        let check = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        };
        assert!(probe.check(check).await.ok);
        assert!(probe.check(check).await.ok);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(probe.check(check).await.ok);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_retries_then_is_cached_three_times_longer() {
        let probe = CachedProbe::new(settings());
        let calls = AtomicU32::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("connection refused")
        };
        let outcome = probe.check(failing).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.error.as_deref(), Some("connection refused"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!probe.check(failing).await.ok);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "still cached at 20 s");
        tokio::time::advance(Duration::from_secs(11)).await;
        probe.check(failing).await;
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_times_out() {
        let probe = CachedProbe::new(settings());
        let outcome = probe
            .check(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            })
            .await;
        assert!(!outcome.ok);
        assert!(outcome.error.unwrap().contains("timed out"));
    }
}

//! Admission control for new jobs: a per-org token bucket (one token per job) and a bound on the
//! work the workers have not finished yet. Both run before anything is published, so a refused
//! request stored nothing. Reads never pass through here.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use heimdex_event_store::jetstream::WORKER_CONSUMER;
use tokio_util::sync::CancellationToken;

use crate::problem::ApiError;

/// What the API does when more work arrives than it should take on.
#[derive(Clone, Debug)]
pub struct OverloadConfig {
    /// Per-org token bucket refill rate, in jobs per second (`HEIMDEX_RATE_LIMIT_JOBS_PER_SEC`);
    /// a request costs one token per job it creates. 0 turns the limit off.
    pub rate_per_sec: u32,
    /// Per-org bucket size in jobs (`HEIMDEX_RATE_LIMIT_BURST`): the most jobs an idle org may
    /// submit at once, and so the largest batch it can send in one request.
    pub burst: u32,
    /// Most jobs waiting for or held by workers (the worker consumer's pending + ack-pending)
    /// before new jobs are refused with 503 (`HEIMDEX_MAX_BACKLOG`). 0 turns the bound off.
    pub max_backlog: u64,
}

/// How often the worker consumer's backlog is read from JetStream. Requests read the cached
/// figure, so the bound costs an atomic load per request; it can be exceeded by what is accepted
/// within one interval.
pub const BACKLOG_REFRESH: Duration = Duration::from_millis(500);
/// What a client refused for backlog is told to wait: a few refresh intervals, enough for a
/// worker to drain a batch.
pub const BACKLOG_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often rate-limiter state of orgs that have been idle long enough to be full again is
/// dropped, so the table does not grow with every org ever seen.
const LIMITER_HOUSEKEEPING: Duration = Duration::from_secs(60);

pub struct Admission {
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
    burst: u32,
    max_backlog: u64,
    /// The last backlog read from JetStream (0 until the first read).
    backlog: AtomicU64,
}

impl Admission {
    pub fn new(settings: &OverloadConfig) -> Self {
        let limiter = match (
            NonZeroU32::new(settings.rate_per_sec),
            NonZeroU32::new(settings.burst),
        ) {
            (Some(rate), Some(burst)) => Some(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
            (None, _) | (_, None) => None,
        };
        Self {
            limiter,
            burst: settings.burst,
            max_backlog: settings.max_backlog,
            backlog: AtomicU64::new(0),
        }
    }

    /// Whether `org` may create `jobs` more jobs now. Takes the tokens when it may.
    pub fn admit(&self, org: Uuid, jobs: usize) -> Result<(), ApiError> {
        let backlog = self.backlog.load(Ordering::Relaxed);
        if self.max_backlog > 0 && backlog >= self.max_backlog {
            tracing::debug!(
                backlog,
                max = self.max_backlog,
                "refusing jobs: backlog full"
            );
            metrics::counter!("heimdex_requests_refused_total", "reason" => "backlog_full")
                .increment(1);
            return Err(ApiError::Overloaded {
                retry_after: BACKLOG_RETRY_AFTER,
            });
        }
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(n) = u32::try_from(jobs).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_key_n(&org, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                metrics::counter!("heimdex_requests_refused_total", "reason" => "rate_limited")
                    .increment(1);
                Err(ApiError::RateLimited {
                    retry_after: not_until.wait_time_from(limiter.clock().now()),
                })
            }
            Err(_insufficient) => Err(ApiError::TooLarge(format!(
                "this request creates {jobs} jobs, more than the per-organization burst of {} \
                 (HEIMDEX_RATE_LIMIT_BURST); send it in smaller requests",
                self.burst
            ))),
        }
    }

    /// The backlog figure requests are checked against.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Keeps the backlog figure fresh and the limiter table small until `shutdown`.
    pub async fn maintain(
        self: Arc<Self>,
        jobs_stream: stream::Stream,
        shutdown: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(BACKLOG_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(LIMITER_HOUSEKEEPING);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = housekeeping.tick() => {
                    if let Some(limiter) = &self.limiter {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
                _ = refresh.tick(), if self.max_backlog > 0 => {
                    match jobs_stream.consumer_info(WORKER_CONSUMER).await {
                        Ok(info) => {
                            let backlog = info.num_pending + info.num_ack_pending as u64;
                            self.backlog.store(backlog, Ordering::Relaxed);
                            failing = false;
                        }
                        // Keep the last figure: while NATS is away, publishing fails by itself.
                        Err(err) => {
                            if !failing {
                                tracing::warn!(%err, "cannot read the worker backlog; keeping the last figure");
                            }
                            failing = true;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32, burst: u32, max_backlog: u64) -> OverloadConfig {
        OverloadConfig {
            rate_per_sec: rate,
            burst,
            max_backlog,
        }
    }

    #[test]
    fn a_token_is_a_job_and_each_org_has_its_own_bucket() {
        let admission = Admission::new(&settings(1, 10, 0));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        admission.admit(a, 10).unwrap();
        let Err(ApiError::RateLimited { retry_after }) = admission.admit(a, 1) else {
            panic!("the eleventh job within a second is refused");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        admission.admit(b, 3).unwrap();
        assert!(matches!(
            admission.admit(b, 11),
            Err(ApiError::TooLarge(detail)) if detail.contains("HEIMDEX_RATE_LIMIT_BURST")
        ));
    }

    #[test]
    fn zero_turns_the_limits_off() {
        let admission = Admission::new(&settings(0, 0, 0));
        admission.admit(Uuid::new_v4(), 1_000_000).unwrap();
        admission.backlog.store(u64::MAX, Ordering::Relaxed);
        admission.admit(Uuid::new_v4(), 1).unwrap();
    }

    #[test]
    fn a_full_backlog_refuses_every_org() {
        let admission = Admission::new(&settings(0, 0, 100));
        admission.backlog.store(99, Ordering::Relaxed);
        admission.admit(Uuid::new_v4(), 50).unwrap();
        admission.backlog.store(100, Ordering::Relaxed);
        assert!(matches!(
            admission.admit(Uuid::new_v4(), 1),
            Err(ApiError::Overloaded { .. })
        ));
    }
}

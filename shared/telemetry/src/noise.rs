//! The one place where log lines are dropped for what they say: warnings a dependency logs on
//! every start that mean nothing in Heimdex and would teach operators to ignore WARN.
//!
//! The embedded Qdrant engine (`qdrant-edge`) is Qdrant's server code without its `main`, and
//! two process-wide settings that the server's `main` initialises are private to the crate
//! (`qdrant_edge::common` is not public), so no caller can initialise them:
//!
//! * `common::flags`: "Feature flags not initialized!", logged each time a segment reads its
//!   feature flags. The engine then uses `FeatureFlags::default()`, which is what a Qdrant server
//!   runs with when none are configured; Heimdex configures none.
//! * `common::mmap::ops`: "MULTI_MMAP_SUPPORT_CHECK_RESULT should be initialized…". The server
//!   probes at start-up whether the file system tolerates two memory maps of one file (Docker on
//!   Windows with a Windows mount does not); without the probe the engine assumes it does, as the
//!   server does on Linux. Where it does not, `QDRANT_NO_MULTI_MMAP=1` turns the maps off, and
//!   the engine's own warning about that is kept.
//!
//! Only these exact messages from these targets are dropped; every other line of those modules,
//! at every level, passes. The list is checked against the engine's sources when qdrant-edge
//! is upgraded (it is pinned in the workspace for that reason).

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// (log target, message) of every dropped line.
pub const KNOWN_NOISE: [(&str, &str); 2] = [
    (
        "qdrant_edge::common::flags",
        "Feature flags not initialized!",
    ),
    (
        "qdrant_edge::common::mmap::ops",
        "MULTI_MMAP_SUPPORT_CHECK_RESULT should be initialized before accessing \
         MULTI_MMAP_IS_SUPPORTED",
    ),
];

/// A per-layer filter that lets everything through except [`KNOWN_NOISE`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KnownNoise;

impl<S> Filter<S> for KnownNoise {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        !is_known_noise(event)
    }

    /// Lets every level through, so that combined with a level filter (`and`) it keeps that
    /// filter's hint, and with it tracing's fast path for disabled levels.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}

fn is_known_noise(event: &Event<'_>) -> bool {
    if *event.metadata().level() != Level::WARN {
        return false;
    }
    let mut seen = Seen::default();
    event.record(&mut seen);
    // Lines from the `log` crate carry their target as a field; native events in their metadata.
    let target = seen
        .log_target
        .as_deref()
        .unwrap_or_else(|| event.metadata().target());
    KNOWN_NOISE
        .iter()
        .any(|(noisy_target, message)| target == *noisy_target && seen.message == *message)
}

#[derive(Default)]
struct Seen {
    message: String,
    log_target: Option<String>,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "log.target" => self.log_target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects the messages of the events that reach it.
    #[derive(Clone, Default)]
    struct Messages(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Messages {
        fn on_event(&self, event: &Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
            let mut seen = Seen::default();
            event.record(&mut seen);
            self.0.lock().expect("lock").push(seen.message);
        }
    }

    #[test]
    fn only_the_known_lines_are_dropped() {
        let messages = Messages::default();
        let subscriber =
            tracing_subscriber::registry().with(messages.clone().with_filter(KnownNoise));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "qdrant_edge::common::flags", "Feature flags not initialized!");
            tracing::warn!(
                target: "qdrant_edge::common::mmap::ops",
                "MULTI_MMAP_SUPPORT_CHECK_RESULT should be initialized before accessing \
                 MULTI_MMAP_IS_SUPPORTED"
            );
            // Same module, other lines: kept.
            tracing::warn!(
                target: "qdrant_edge::common::mmap::ops",
                "Not using multi-mmap because QDRANT_NO_MULTI_MMAP is set"
            );
            tracing::warn!(target: "qdrant_edge::common::flags", "Feature flags already initialized!");
            // Same words elsewhere, or at another level: kept.
            tracing::warn!(target: "heimdex", "Feature flags not initialized!");
            tracing::error!(target: "qdrant_edge::common::flags", "Feature flags not initialized!");
        });
        let messages = messages.0.lock().expect("lock").clone();
        assert_eq!(
            messages,
            [
                "Not using multi-mmap because QDRANT_NO_MULTI_MMAP is set",
                "Feature flags already initialized!",
                "Feature flags not initialized!",
                "Feature flags not initialized!",
            ]
        );
    }
}

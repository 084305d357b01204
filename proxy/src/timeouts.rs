//! A request's clocks, as Envoy users know them: the route timeout runs from the end of
//! the request body to the end of the response (`0s` turns it off), and the idle timeout
//! cuts an exchange in which nothing moved for that long, blaming the side weir was
//! waiting on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::body::{Progress, Stage};
use crate::error::ErrorKind;

/// Envoy's default route timeout.
pub(crate) const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default stream idle timeout.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A route's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// From the end of the request body to the end of the response; None: no limit.
    pub route: Option<Duration>,
    /// Longest time with nothing moving.
    pub idle: Duration,
}

impl Timeouts {
    /// The next clock to run out, and what it means, given where the request body is and
    /// (after the headers) when the upstream last sent something.
    fn next(&self, body: Stage, upstream_last: Option<Instant>) -> (Option<Instant>, ErrorKind) {
        match body {
            Stage::Failed(kind) => (Some(Instant::now()), kind),
            Stage::Streaming { waiting_on_client } => (
                None,
                if waiting_on_client {
                    ErrorKind::ClientTimeout
                } else {
                    ErrorKind::UpstreamIdle
                },
            ),
            Stage::Ended(at) => {
                let quiet_since = upstream_last.map_or(at, |u| u.max(at));
                let idle = quiet_since + self.idle;
                match self.route.map(|r| at + r) {
                    Some(route) if route <= idle => (Some(route), ErrorKind::UpstreamTimeout),
                    _ => (Some(idle), ErrorKind::UpstreamIdle),
                }
            }
        }
    }

    /// Before the response headers: resolves with what ran out (or how the client broke
    /// its body). `progress` is None for a request that had no body to send.
    pub(crate) async fn before_headers(
        &self,
        progress: Option<&Progress>,
        start: Instant,
    ) -> ErrorKind {
        loop {
            let changed = progress.map(Progress::on_change);
            let stage = progress.map_or(Stage::Ended(start), Progress::stage);
            let (at, kind) = self.next(stage, None);
            // Streaming: the idle clock runs from the body's last move.
            let at = at.unwrap_or_else(|| progress.map_or(start, Progress::last) + self.idle);
            if Instant::now() >= at {
                return kind;
            }
            match changed {
                Some(changed) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => tokio::time::sleep_until(at).await,
            }
        }
    }
}

/// The clocks of a response body as it streams: polled only while the body waits on the
/// upstream, so a response that arrives whole never starts a timer.
pub(crate) struct BodyClock {
    timeouts: Timeouts,
    progress: Option<std::sync::Arc<Progress>>,
    start: Instant,
    last_frame: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl BodyClock {
    pub(crate) fn new(
        timeouts: Timeouts,
        progress: Option<std::sync::Arc<Progress>>,
        start: Instant,
    ) -> BodyClock {
        BodyClock {
            timeouts,
            progress,
            start,
            last_frame: Instant::now(),
            sleep: None,
        }
    }

    /// A frame arrived from the upstream.
    pub(crate) fn moved(&mut self) {
        self.last_frame = Instant::now();
    }

    /// While the body waits on the upstream: Ready with what ran out.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<ErrorKind> {
        let stage = self
            .progress
            .as_deref()
            .map_or(Stage::Ended(self.start), Progress::stage);
        let (at, kind) = match self.timeouts.next(stage, Some(self.last_frame)) {
            // A request body still streaming beside the response (bidirectional): only the
            // idle clock runs, from the upstream's last frame.
            (None, _) => (
                self.last_frame + self.timeouts.idle,
                ErrorKind::UpstreamIdle,
            ),
            (Some(at), kind) => (at, kind),
        };
        let sleep = match self.sleep.as_mut() {
            Some(s) => {
                if s.deadline() != at {
                    s.as_mut().reset(at);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(kind),
            Poll::Pending => Poll::Pending,
        }
    }
}

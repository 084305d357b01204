//! A request's clocks, as Envoy users know them: the route timeout runs from the end of
//! the request body to the end of the response (`0s` turns it off), and the idle timeout
//! cuts an exchange in which nothing moved for that long, blaming the side weir was
//! waiting on. Until the response begins, the listener's upload limits hold a client to
//! finishing its request in time (`requestTimeout`) and at a least rate (`uploadMinRate`).

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

/// The listener's limits on how a client sends its request body; they stop counting
/// once the response begins (a streaming exchange, gRPC's say, is then under the idle
/// timeout alone), as Envoy's `request_timeout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UploadLimits {
    /// The whole request within this from its headers; None: no limit.
    pub request: Option<Duration>,
    /// After `grace`, at least this many bytes a second on average; 0: no floor.
    pub min_rate: u64,
    pub grace: Duration,
}

impl UploadLimits {
    pub(crate) fn new(l: &crate::config::Limits) -> UploadLimits {
        UploadLimits {
            request: (!l.request_timeout.0.is_zero()).then_some(l.request_timeout.0),
            min_rate: l.upload_min_rate,
            grace: l.upload_grace_period.0,
        }
    }

    /// When a body that has come this far is too late: the sooner of the request timeout
    /// and the moment its average rate falls under the floor (Apache's rule: the grace
    /// period plus one second for every `min_rate` bytes received).
    fn deadline(&self, p: &Progress) -> Option<Instant> {
        let request = self.request.map(|r| p.start() + r);
        let rate = (self.min_rate > 0).then(|| {
            let earned = Duration::from_secs_f64(p.received() as f64 / self.min_rate as f64);
            p.start() + self.grace + earned
        });
        match (request, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// How often an overdue upload is looked at again while weir waits on the upstream to
/// take its bytes (the client is not to blame for that wait).
const OVERDUE_RECHECK: Duration = Duration::from_secs(1);

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
        upload: &UploadLimits,
    ) -> ErrorKind {
        loop {
            let changed = progress.map(Progress::on_change);
            let stage = progress.map_or(Stage::Ended(start), Progress::stage);
            let (at, kind) = self.next(stage, None);
            // Streaming: the idle clock runs from the body's last move, and the upload
            // limits hold the client (only while weir waits on it: an upstream that does
            // not take the bytes is not the client's doing, so an overdue upload is looked
            // at again later).
            let (at, kind) = match (at, progress) {
                (Some(at), _) => (at, Some(kind)),
                (None, p) => {
                    let idle = p.map_or(start, Progress::last) + self.idle;
                    match p.and_then(|p| upload.deadline(p)) {
                        Some(late) if late < idle => match stage {
                            Stage::Streaming {
                                waiting_on_client: true,
                            } => (late, Some(ErrorKind::ClientTimeout)),
                            _ => {
                                let again = late.max(Instant::now() + OVERDUE_RECHECK);
                                (again.min(idle), (again >= idle).then_some(kind))
                            }
                        },
                        _ => (idle, Some(kind)),
                    }
                }
            };
            if let (true, Some(kind)) = (Instant::now() >= at, kind) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Limits};

    #[test]
    fn an_upload_is_late_by_apaches_rule_and_zero_turns_each_limit_off() {
        let start = Instant::now();
        let p = Progress::new(start);
        let defaults = UploadLimits::new(&Limits::default());
        // No request timeout; 20 s of grace, then one second per 500 bytes received.
        assert_eq!(defaults.deadline(&p), Some(start + Duration::from_secs(20)));
        p.moved(5_000);
        assert_eq!(defaults.deadline(&p), Some(start + Duration::from_secs(30)));
        let limits = Limits {
            request_timeout: Dur::secs(25),
            ..Limits::default()
        };
        assert_eq!(
            UploadLimits::new(&limits).deadline(&p),
            Some(start + Duration::from_secs(25))
        );
        let off = Limits {
            upload_min_rate: 0,
            ..Limits::default()
        };
        assert_eq!(UploadLimits::new(&off).deadline(&p), None);
    }
}

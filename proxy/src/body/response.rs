//! The body weir sends the client: an upstream's, streamed with its clocks running and
//! its exchange finished when it ends (complete, broken off, timed out, or abandoned by
//! the client), or a short one weir made itself. Either keeps its connection marked busy
//! until done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::activity::ActivityGuard;
use crate::error::{ErrorKind, ProxyError};
use crate::exchange::Exchange;
use crate::timeouts::BodyClock;
use crate::upstream::Lease;

/// The body weir sends to the client.
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<ActivityGuard>,
}

// The upstream variant is the common one; boxing it to shrink the rare synthetic one
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// An upstream's body: `lease` is the pooled connection it arrives on (driven from
    /// here, pooled again at the end), `exchange` records the request when it ends.
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
        exchange: Exchange,
        clock: BodyClock,
        done: bool,
    },
    /// Bytes weir made.
    Synthetic(Option<Bytes>),
}

type Polled = Poll<Option<Result<Frame<Bytes>, ProxyError>>>;

impl ResponseBody {
    /// A body from bytes weir made.
    pub(crate) fn synthetic(b: impl Into<Bytes>) -> ResponseBody {
        let b = b.into();
        ResponseBody {
            kind: Kind::Synthetic((!b.is_empty()).then_some(b)),
            guard: None,
        }
    }

    /// An upstream's body; an empty one ends the exchange at once.
    pub(crate) fn upstream(
        inner: Incoming,
        lease: Option<Lease>,
        exchange: Exchange,
        clock: BodyClock,
    ) -> Self {
        let mut body = ResponseBody {
            kind: Kind::Upstream {
                inner,
                lease,
                exchange,
                clock,
                done: false,
            },
            guard: None,
        };
        if body.is_end_stream() {
            body.end(None);
        }
        body
    }

    /// Keeps the connection marked busy until this body is done.
    pub(crate) fn with_guard(mut self, guard: ActivityGuard) -> ResponseBody {
        self.guard = Some(guard);
        self
    }

    /// The body ended: a complete one returns its connection to the pool, a failed one
    /// closes it; either way the exchange is finished.
    fn end(&mut self, error: Option<ErrorKind>) {
        if let Kind::Upstream {
            lease,
            exchange,
            done,
            ..
        } = &mut self.kind
        {
            *done = true;
            match (lease.take(), error) {
                (Some(l), None) => l.release(),
                (l, _) => drop(l),
            }
            exchange.finish(error);
        }
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Polled {
        let Kind::Upstream {
            inner,
            lease,
            exchange,
            clock,
            done,
        } = &mut self.kind
        else {
            return Poll::Ready(None);
        };
        if *done {
            return Poll::Ready(None);
        }
        if let Some(lease) = lease.as_mut() {
            lease.drive(cx);
        }
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                clock.moved();
                if let Some(d) = frame.data_ref() {
                    exchange.observe(d);
                }
                if inner.is_end_stream() {
                    self.end(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.end(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.end(Some(ErrorKind::UpstreamTruncated));
                Poll::Ready(Some(Err(ProxyError::new(ErrorKind::UpstreamTruncated, e))))
            }
            Poll::Pending => match clock.poll_expired(cx) {
                Poll::Ready(kind) => {
                    self.end(Some(kind));
                    Poll::Ready(Some(Err(ProxyError::bare(kind))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Synthetic(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { .. } => this.poll_upstream(cx),
        };
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { inner, done, .. } => *done || inner.is_end_stream(),
            Kind::Synthetic(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { inner, .. } => inner.size_hint(),
            Kind::Synthetic(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Synthetic(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    /// A body dropped before its end was abandoned by the client: it went away, or
    /// stopped reading and weir closed its connection.
    fn drop(&mut self) {
        if let Kind::Upstream { done: false, .. } = self.kind {
            let stalled = self.guard.as_ref().is_some_and(ActivityGuard::stalled);
            self.end(Some(if stalled {
                ErrorKind::ClientStalled
            } else {
                ErrorKind::ClientGone
            }));
        }
    }
}

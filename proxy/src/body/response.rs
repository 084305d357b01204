//! The body weir sends the client: an upstream's, streamed and measured when it ends, or
//! a short one weir made itself. Either keeps its connection marked busy until done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::Polled;
use hyper::body::Incoming;

use crate::activity::ActivityGuard;
use crate::error::ErrorKind;
use crate::exchange::Exchange;
use crate::upstream::Lease;

/// The body weir sends to the client.
pub(crate) struct ResponseBody {
    kind: Kind,
    guard: Option<ActivityGuard>,
}

enum Kind {
    /// An upstream's body: `lease` is the pooled connection it arrives on (driven from
    /// here, pooled again at the end), `exchange` records the request when it ends.
    Upstream {
        inner: Incoming,
        lease: Option<Lease>,
        exchange: Exchange,
    },
    /// Bytes weir made.
    Synthetic(Option<Bytes>),
}

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
    pub(crate) fn upstream(inner: Incoming, lease: Option<Lease>, exchange: Exchange) -> Self {
        let mut body = ResponseBody {
            kind: Kind::Upstream {
                inner,
                lease,
                exchange,
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
            lease, exchange, ..
        } = &mut self.kind
        {
            match (lease.take(), error) {
                (Some(l), None) => l.release(),
                (l, _) => drop(l),
            }
            exchange.finish(error);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Synthetic(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream {
                inner,
                lease,
                exchange,
            } => {
                if let Some(lease) = lease.as_mut() {
                    lease.drive(cx);
                }
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(d) = frame.data_ref() {
                        exchange.observe(d);
                    }
                }
                let ended = inner.is_end_stream();
                match &polled {
                    Poll::Ready(None) => this.end(None),
                    Poll::Ready(Some(Err(_))) => this.end(Some(ErrorKind::UpstreamReset)),
                    Poll::Ready(Some(Ok(_))) if ended => this.end(None),
                    _ => {}
                }
                polled
            }
        };
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
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

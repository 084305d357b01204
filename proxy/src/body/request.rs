//! The body weir sends upstream: the client's, streamed frame by frame (optionally keeping
//! a bounded copy for a mirror), or chunks weir already holds (a mirror's copy).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::sync::oneshot;

use super::progress::Progress;
use super::Polled;

/// The body weir sends upstream.
pub(crate) enum RequestBody {
    /// The client's body, streamed; `copy` keeps a bounded copy for a mirror; `progress`
    /// tells the request's clocks how far it has come.
    Stream {
        inner: Incoming,
        copy: Option<Box<Copy>>,
        progress: Option<Arc<Progress>>,
    },
    /// Chunks weir already holds (a mirror copy), sent as they are.
    Chunks(VecDeque<Bytes>),
}

impl RequestBody {
    /// The client's body, streamed as it is, reporting to `progress`.
    pub(crate) fn stream(inner: Incoming, progress: Option<Arc<Progress>>) -> RequestBody {
        RequestBody::Stream {
            inner,
            copy: None,
            progress,
        }
    }
}

/// A bounded copy of a request body, sent (as its chunks) to whoever waits for it once the
/// body is complete; `None` is sent when it ran past the limit. A dropped sender means
/// the body never completed.
pub(crate) struct Copy {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    tx: Option<oneshot::Sender<Option<Vec<Bytes>>>>,
    too_large: IntCounter,
}

impl Copy {
    /// A copy of at most `limit` bytes; `too_large` counts bodies past it.
    pub(crate) fn new(
        limit: usize,
        tx: oneshot::Sender<Option<Vec<Bytes>>>,
        too_large: IntCounter,
    ) -> Copy {
        Copy {
            chunks: Vec::new(),
            size: 0,
            limit,
            tx: Some(tx),
            too_large,
        }
    }

    fn keep(&mut self, data: &Bytes) {
        if self.tx.is_none() {
            return;
        }
        self.size += data.len();
        if self.size > self.limit {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(None);
            }
            self.chunks = Vec::new();
            self.too_large.inc();
        } else {
            self.chunks.push(data.clone());
        }
    }

    fn complete(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(std::mem::take(&mut self.chunks)));
        }
    }

    fn abandon(&mut self) {
        self.tx = None;
        self.chunks = Vec::new();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let (inner, copy, progress) = match self.get_mut() {
            RequestBody::Chunks(chunks) => {
                return Poll::Ready(chunks.pop_front().map(|d| Ok(Frame::data(d))))
            }
            RequestBody::Stream {
                inner,
                copy,
                progress,
            } => (inner, copy, progress),
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if let Some(p) = progress {
            match &polled {
                Poll::Pending => p.waiting_on_client(),
                Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => p.ended(),
                Poll::Ready(Some(Ok(frame))) => {
                    p.moved(frame.data_ref().map_or(0, |d| d.len()));
                }
                Poll::Ready(None) => p.ended(),
                Poll::Ready(Some(Err(e))) => p.failed(e),
            }
        }
        if let Some(copy) = copy {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        copy.keep(d);
                    }
                    if inner.is_end_stream() {
                        copy.complete();
                    }
                }
                Poll::Ready(None) => copy.complete(),
                Poll::Ready(Some(Err(_))) => copy.abandon(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
            RequestBody::Chunks(chunks) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream { inner, .. } => inner.size_hint(),
            RequestBody::Chunks(chunks) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

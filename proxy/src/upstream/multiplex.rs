//! HTTP/2 upstream connections, multiplexed: each worker keeps its own connections to an
//! endpoint (registered with its runtime, so no stream hops cores) and opens another only
//! when every one it has carries `STREAMS_PER_CONNECTION` streams. One dial at a time per
//! worker and endpoint: requests that arrive meanwhile wait for it instead of dialling
//! too, and share its failure if it fails.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::connect::EndpointConnector;
use crate::body::RequestBody;
use crate::error::{ErrorKind, ProxyError};
use crate::workers;

/// Streams one connection carries before a busy worker opens another: nginx's default
/// limit of concurrent streams (beyond a server's own limit, streams would queue in weir).
const STREAMS_PER_CONNECTION: usize = 128;

/// One HTTP/2 connection: its sender, and how many streams are open on it.
struct Multiplexed {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
    last_used: Instant,
}

/// One worker's connections to the endpoint.
#[derive(Default)]
struct Slot {
    conns: Vec<Multiplexed>,
    /// A dial is under way.
    dialing: bool,
    /// Counts finished dials; with `failed`, tells a waiter how the one it waited for went.
    dials: u64,
    /// How the last dial failed (None: it worked, or its request went away first).
    failed: Option<ErrorKind>,
}

/// The HTTP/2 connections of one endpoint, per worker.
pub(crate) struct Multiplex {
    connector: EndpointConnector,
    idle_timeout: Duration,
    slots: Box<[(Mutex<Slot>, Notify)]>,
    sweeper: AtomicBool,
}

/// An open stream: holds its place on the connection until the response body is done.
pub(crate) struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dial under way: however it ends (done, failed, or its request gone), the slot is
/// told and the waiters are woken.
struct Dialing<'a> {
    slot: &'a Mutex<Slot>,
    notify: &'a Notify,
    /// The slot has been told.
    ended: bool,
}

impl Dialing<'_> {
    /// Ends the dial: hands the slot the new connection (with one stream, the dialler's)
    /// or records how it failed, wakes the waiters, and returns the stream's counter.
    fn end(
        &mut self,
        sender: Option<http2::SendRequest<RequestBody>>,
        failure: Option<ErrorKind>,
    ) -> Arc<AtomicUsize> {
        let streams = Arc::new(AtomicUsize::new(1));
        let mut s = Multiplex::lock(self.slot);
        s.dialing = false;
        s.dials += 1;
        s.failed = failure;
        if let Some(sender) = sender {
            s.conns.push(Multiplexed {
                sender,
                streams: streams.clone(),
                last_used: Instant::now(),
            });
        }
        drop(s);
        self.notify.notify_waiters();
        self.ended = true;
        streams
    }
}

impl Drop for Dialing<'_> {
    /// A request dropped mid-dial: no connection and no failure, so a waiter dials anew.
    fn drop(&mut self) {
        if !self.ended {
            self.end(None, None);
        }
    }
}

impl Slot {
    /// How the dial a waiter waited for (the one after `dials`) failed, when it did and
    /// left no connection to use.
    fn failed_since(&self, dials: u64) -> Option<ErrorKind> {
        self.failed
            .filter(|_| self.dials > dials && self.conns.is_empty())
    }
}

/// What checking out found: a connection with room, or the duty (or the wait) to dial.
enum Found {
    Conn(http2::SendRequest<RequestBody>, StreamGuard),
    Dial,
    Wait(u64),
}

impl Multiplex {
    pub(crate) fn new(connector: EndpointConnector, idle_timeout: Duration) -> Arc<Multiplex> {
        Arc::new(Multiplex {
            connector,
            idle_timeout,
            slots: (0..workers::slots())
                .map(|_| (Mutex::new(Slot::default()), Notify::new()))
                .collect(),
            sweeper: AtomicBool::new(false),
        })
    }

    fn slot(&self) -> &(Mutex<Slot>, Notify) {
        &self.slots[workers::slot(self.slots.len())]
    }

    fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
        slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first open connection with room (filling one connection before the next keeps
    /// the frames of many streams in each write), else whether to dial or wait; a waiter's
    /// `notified` is registered before the lock is let go, so the dial's wake-up cannot
    /// slip between the check and the wait. While a dial is under way, a full connection
    /// takes the stream rather than make it wait.
    fn find(&self, slot: &Mutex<Slot>, notified: Pin<&mut Notified<'_>>) -> Found {
        let mut slot = Self::lock(slot);
        slot.conns.retain(|c| !c.sender.is_closed());
        let roomy = slot.conns.iter().position(|c| {
            c.sender.is_ready() && c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION
        });
        let chosen = match roomy {
            Some(i) => Some(i),
            None if slot.dialing => slot.conns.iter().position(|c| c.sender.is_ready()),
            None => None,
        };
        if let Some(i) = chosen {
            let c = &mut slot.conns[i];
            c.streams.fetch_add(1, Ordering::Relaxed);
            c.last_used = Instant::now();
            return Found::Conn(c.sender.clone(), StreamGuard(c.streams.clone()));
        }
        if slot.dialing {
            notified.enable();
            return Found::Wait(slot.dials);
        }
        slot.dialing = true;
        Found::Dial
    }

    /// A connection for one more stream: an open one with room, or a new one.
    async fn checkout(
        self: &Arc<Self>,
    ) -> Result<(http2::SendRequest<RequestBody>, StreamGuard), ProxyError> {
        let (slot, notify) = self.slot();
        loop {
            let mut notified = pin!(notify.notified());
            let dials = match self.find(slot, notified.as_mut()) {
                Found::Conn(sender, guard) => return Ok((sender, guard)),
                Found::Dial => return self.dial_into(slot, notify).await,
                Found::Wait(dials) => dials,
            };
            notified.await;
            if let Some(kind) = Self::lock(slot).failed_since(dials) {
                // The dial this request waited for failed: so does the request.
                return Err(ProxyError::new(
                    kind,
                    "the connection being opened to the endpoint failed",
                ));
            }
        }
    }

    /// Dials (this caller holds the slot's dial), adds the connection, wakes the waiters.
    async fn dial_into(
        self: &Arc<Self>,
        slot: &Mutex<Slot>,
        notify: &Notify,
    ) -> Result<(http2::SendRequest<RequestBody>, StreamGuard), ProxyError> {
        let mut dialing = Dialing {
            slot,
            notify,
            ended: false,
        };
        let dialled = self.dial().await;
        let streams = match &dialled {
            Ok(sender) => dialing.end(Some(sender.clone()), None),
            Err(e) => dialing.end(None, Some(e.kind)),
        };
        let result = dialled.map(|sender| (sender, StreamGuard(streams)));
        if result.is_ok() {
            super::sweeper::start(&self.sweeper, self, self.idle_timeout, Multiplex::sweep);
        }
        result
    }

    async fn dial(&self) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
        let io = self.connector.dial().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| ProxyError::upstream(Box::new(e), false))?;
        // The connection runs on this worker's runtime, beside the requests using it.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a request on a stream of this worker's connections and waits for the
    /// response head; the guard holds the stream's place until the body is done. A
    /// request a connection refused before sending it (it was closing) is sent once more.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, StreamGuard), ProxyError> {
        let mut retried = false;
        loop {
            let (mut sender, guard) = self.checkout().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, guard)),
                Err(mut e) => match e.take_message() {
                    Some(r) if !retried => {
                        req = r;
                        retried = true;
                    }
                    _ => return Err(ProxyError::upstream(Box::new(e.into_error()), false)),
                },
            }
        }
    }

    /// Closes connections without streams idle past the timeout.
    fn sweep(&self) {
        for (slot, _) in self.slots.iter() {
            Self::lock(slot).conns.retain(|c| {
                c.streams.load(Ordering::Relaxed) > 0 || c.last_used.elapsed() < self.idle_timeout
            });
        }
    }
}

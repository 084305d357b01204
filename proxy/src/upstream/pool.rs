//! HTTP/1.1 upstream connections driven by the request that holds them.
//!
//! A pooled connection has no task of its own: the request that checks it out polls its
//! I/O while waiting for the response head, and the response body polls it while the
//! client reads. Request, upstream I/O and response body all run in the client
//! connection's task, so a proxied request costs no cross-task wake-ups, channel hops
//! or pool-wide locking beyond one short push and pop.
//!
//! An idle connection is checked before reuse (a closed or half-closed one is dropped),
//! one idle past the pool's idle timeout is closed, and a request that a reused
//! connection refused before writing a byte is retried once on a new connection.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connect::{EndpointConnector, Stream};
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::workers;

type Io = TokioIo<Stream>;

/// One HTTP/1.1 connection to an endpoint.
struct Conn {
    sender: http1::SendRequest<RequestBody>,
    /// Boxed: it is large, and moves between the pool and the requests holding it.
    conn: Box<http1::Connection<Io, RequestBody>>,
    /// The connection future has finished (closed or failed); it is never polled again.
    done: bool,
    idle_since: Instant,
}

impl Conn {
    /// Makes progress on the connection's reads and writes.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.done && Pin::new(&mut *self.conn).poll(cx).is_ready() {
            self.done = true;
        }
    }

    /// Open, idle and ready for another request.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx);
        !self.done && matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// The idle connections of one endpoint, one stack per worker thread (plus one for
/// every other thread): a connection is registered with the runtime of the worker that
/// opened it, and goes back to that worker, so its I/O never wakes another thread.
pub(crate) struct Pool {
    /// Dials the endpoint (connect timeout, nodelay and TCP keepalive as for hyper's client).
    connector: EndpointConnector,
    idle_timeout: Duration,
    /// The most idle connections kept per stack.
    max_idle: usize,
    idle: Box<[Mutex<Vec<Conn>>]>,
    sweeper: AtomicBool,
}

impl Pool {
    pub(crate) fn new(
        connector: EndpointConnector,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            idle_timeout,
            max_idle,
            idle: (0..workers::slots())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            sweeper: AtomicBool::new(false),
        })
    }

    /// This thread's stack: its worker's, or the one shared by every other thread.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle[workers::slot(self.idle.len())]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that can take a request.
    fn checkout(&self) -> Option<Conn> {
        loop {
            let mut conn = self.lock().pop()?;
            if conn.idle_since.elapsed() < self.idle_timeout && conn.reusable() {
                return Some(conn);
            }
        }
    }

    fn checkin(self: &Arc<Self>, mut conn: Conn) {
        if !conn.reusable() {
            // Closing, or still writing a request body the upstream answered early: the
            // upstream no longer wants it, so the connection is closed rather than left
            // pushing the rest of an upload nobody reads.
            return;
        }
        conn.idle_since = Instant::now();
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(conn);
        }
        super::sweeper::start(&self.sweeper, self, self.idle_timeout, Pool::sweep);
    }

    /// Closes connections idle past the timeout, so a quiet endpoint holds no sockets.
    fn sweep(&self) {
        for stack in self.idle.iter() {
            let stale: Vec<Conn> = {
                let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
                // Oldest first: connections are pushed as they come back.
                let keep = idle
                    .iter()
                    .position(|c| c.idle_since.elapsed() < self.idle_timeout)
                    .unwrap_or(idle.len());
                idle.drain(..keep).collect()
            };
            drop(stale);
        }
    }

    async fn dial(&self) -> Result<Conn, ProxyError> {
        let io = self.connector.dial().await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| ProxyError::upstream(Box::new(e), false))?;
        Ok(Conn {
            sender,
            conn: Box::new(conn),
            done: false,
            idle_since: Instant::now(),
        })
    }

    /// Sends a request on an idle or new connection and waits for the response head,
    /// driving the connection meanwhile. The connection stays held until the
    /// response body is done.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Held), ProxyError> {
        let mut retried = false;
        loop {
            // A retry always dials: the pooled connections are as old as the one that failed.
            let pooled = if retried { None } else { self.checkout() };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.dial().await?,
            };
            let sent = conn.sender.try_send_request(req);
            let mut held = Held {
                conn: Some(conn),
                pool: self.clone(),
            };
            let mut sent = pin!(sent);
            let result = poll_fn(|cx| {
                held.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => return Ok((resp, held)),
                Err(mut e) => match e.take_message() {
                    // A reused connection closed before it took the request: once more
                    // on a new one.
                    Some(r) if reused => {
                        req = r;
                        retried = true;
                    }
                    _ => return Err(ProxyError::upstream(Box::new(e.into_error()), false)),
                },
            }
        }
    }
}

/// A connection held by one request until its response body is done.
pub(crate) struct Held {
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl Held {
    /// Makes progress on the connection (the response body calls this before each read).
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = self.conn.as_mut() {
            c.drive(cx);
        }
    }

    /// The response is complete: the connection goes back to the pool when it can take
    /// another request. Dropping it instead closes the connection.
    pub(crate) fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

//! The rollout dashboard on the admin listener: `/ui` (the page, embedded in the binary),
//! `/ui/snapshot` (every service, the recent history and events, the data planes: the
//! first paint, and for scripts) and `/ui/events` (server-sent events: a frame each
//! second with what changed, and each event as it happens). Read-only: it changes
//! nothing, and its data goes through the same redaction as `/config`.

mod sample;
mod view;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use weir_proxy::{AdminBody, AdminPages, Proxy};

use crate::controller::Controller;
use crate::notify::Notice;
use crate::status::Event;
use sample::History;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// How many events a page is given when it opens.
const EVENTS_KEPT: usize = 200;
/// How often a frame goes out.
const FRAME_EVERY: Duration = Duration::from_secs(1);
/// How long sampling goes on after the last page closed or snapshot was read.
const LINGER: Duration = Duration::from_secs(15);

/// The dashboard of one controller.
pub struct Dashboard {
    ctl: Controller,
    proxy: Proxy,
    events: Mutex<VecDeque<Event>>,
    history: Mutex<History>,
    /// Frames and events as SSE messages, to every open page.
    out: broadcast::Sender<Bytes>,
    /// Open event streams.
    pages: AtomicUsize,
    /// Sampling goes on until then (a page was open, or a snapshot read).
    wanted_until: Mutex<Instant>,
}

impl Dashboard {
    /// The dashboard of `ctl`, collecting its events from now on and sampling its
    /// services' traffic while anyone looks.
    pub fn start(ctl: Controller, proxy: Proxy) -> Arc<Dashboard> {
        let (out, _) = broadcast::channel(64);
        let d = Arc::new(Dashboard {
            ctl,
            proxy,
            events: Mutex::new(VecDeque::new()),
            history: Mutex::new(History::default()),
            out,
            pages: AtomicUsize::new(0),
            wanted_until: Mutex::new(Instant::now()),
        });
        let notices = d.ctl.subscribe();
        tokio::spawn(collect_events(Arc::downgrade(&d), notices));
        tokio::spawn(frames(Arc::downgrade(&d)));
        d
    }

    fn want(&self) {
        let mut until = self.wanted_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = Instant::now() + LINGER;
    }

    fn wanted(&self) -> bool {
        self.pages.load(Ordering::Relaxed) > 0
            || Instant::now() < *self.wanted_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every service, the history kept, the recent events, the data planes.
    fn snapshot(&self) -> serde_json::Value {
        self.want();
        let services = self.ctl.list();
        let history = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .json();
        let events: Vec<serde_json::Value> = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(view::event)
            .collect();
        view::snapshot(&services, history, events, &self.ctl.fleet().list())
    }

    fn stream(self: &Arc<Self>) -> Response<AdminBody> {
        self.want();
        let first = sse("snapshot", &self.snapshot());
        let guard = PageGuard(self.clone());
        guard.0.pages.fetch_add(1, Ordering::Relaxed);
        let later = BroadcastStream::new(self.out.subscribe()).map(move |m| {
            // A page that fell behind missed frames: it gets everything again.
            let b = m.unwrap_or_else(|_| sse("snapshot", &guard.0.snapshot()));
            Ok::<_, std::io::Error>(Frame::data(b))
        });
        let all = tokio_stream::once(Ok(Frame::data(first))).chain(later);
        let mut resp = Response::new(StreamBody::new(all).boxed());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Counts a page's event stream while it is open.
struct PageGuard(Arc<Dashboard>);

impl Drop for PageGuard {
    fn drop(&mut self) {
        self.0.pages.fetch_sub(1, Ordering::Relaxed);
        self.0.want();
    }
}

/// One server-sent event.
fn sse(kind: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn whole(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page runs only its own script and style, and is framed by nobody.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The pages, served by [`Dashboard`] on the admin listener.
pub struct Pages(pub Arc<Dashboard>);

impl AdminPages for Pages {
    fn page(&self, path: &str) -> Option<Response<AdminBody>> {
        let d = &self.0;
        Some(match path {
            "/" => {
                let mut r = whole(StatusCode::SEE_OTHER, "text/plain", "see /ui/\n");
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
                r
            }
            "/ui" | "/ui/" => whole(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/ui/app.js" => whole(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
            "/ui/style.css" => whole(StatusCode::OK, "text/css; charset=utf-8", STYLE),
            "/ui/snapshot" => whole(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&d.snapshot()).unwrap_or_default(),
            ),
            "/ui/events" => d.stream(),
            _ => return None,
        })
    }
}

/// Keeps the last events and sends each to the open pages.
async fn collect_events(d: std::sync::Weak<Dashboard>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        let notice = match notices.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(d) = d.upgrade() else { return };
        if let Notice::Event(e) = notice {
            let msg = sse("event", &view::event(&e));
            let mut kept = d.events.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == EVENTS_KEPT {
                kept.pop_front();
            }
            kept.push_back(e);
            drop(kept);
            let _ = d.out.send(msg);
        }
    }
}

/// Each second while anyone looks: the traffic of every version since the last look, and
/// the services whose status changed, as one frame.
async fn frames(d: std::sync::Weak<Dashboard>) {
    let mut tick = tokio::time::interval(FRAME_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = sample::Last::default();
    loop {
        tick.tick().await;
        let Some(d) = d.upgrade() else { return };
        if !d.wanted() {
            last = sample::Last::default();
            continue;
        }
        let services = d.ctl.list();
        let live = last.sample(&d.proxy, &services);
        let changed = last.changed(&services);
        d.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&live);
        if d.pages.load(Ordering::Relaxed) > 0 {
            let frame = view::frame(&changed, &live, &d.ctl.fleet().list());
            let _ = d.out.send(sse("frame", &frame));
        }
    }
}

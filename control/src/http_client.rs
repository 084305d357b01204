//! Posting JSON to webhooks and alert providers, over http or https (rustls with the
//! webpki roots), each call with its own timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_proxy::redact;

/// Why a POST got no answer. URLs in it are redacted (credentials in user-info, query
/// or path never reach a log or an event).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("{url}: not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("{url}: timed out after {after:?}")]
    TimedOut { url: String, after: Duration },
}

/// The most of an answer's body kept.
const MAX_BODY: usize = 1 << 20;

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The body (its first MiB), trimmed.
    pub body: String,
}

/// Posts JSON, with a small connection pool of its own.
#[derive(Clone)]
pub struct HttpPoster {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpPoster {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpPoster {
    /// A client with its own small connection pool.
    pub fn new() -> HttpPoster {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        HttpPoster {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// POSTs `body` as JSON, within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PostError::BadUrl {
            url: redact::url(url),
            reason: e.to_string(),
        })?;
        self.send(http::Method::POST, url, Some(bytes), timeout)
            .await
    }

    /// GETs `url`, within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, PostError> {
        self.send(http::Method::GET, url, None, timeout).await
    }

    async fn send(
        &self,
        method: http::Method,
        url: &str,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        let bad = |reason: String| PostError::BadUrl {
            url: redact::url(url),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let mut req = http::Request::builder().method(method).uri(uri).header(
            http::header::USER_AGENT,
            concat!("weir/", env!("CARGO_PKG_VERSION")),
        );
        if json.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| bad(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| PostError::Unreachable(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)])
                .trim()
                .to_string();
            Ok(Answer { status, body: text })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(PostError::TimedOut {
                url: redact::url(url),
                after: timeout,
            }),
        }
    }
}

/// An error and its causes as one line; a cause that only repeats what is said already
/// (`tcp connect error: tcp connect error`) is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    use std::fmt::Write;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            let _ = write!(msg, ": {text}");
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_urls_speak_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let first = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.expect("read");
            b
        });
        let r = HttpPoster::new()
            .post(
                &format!("https://{addr}/"),
                &serde_json::json!({}),
                Duration::from_secs(1),
            )
            .await;
        assert!(r.is_err(), "nothing answers the handshake");
        let hello = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .unwrap_or_else(|_| panic!("no TLS connection was made: {r:?}"))
            .expect("server task");
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[1], 0x03);
    }
}

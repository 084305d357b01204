//! Dialling one endpoint: a connector that ignores the request URI, so a request can
//! carry the user's Host (HTTP/1 `Host`, HTTP/2 `:authority`) unchanged.

use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Dials one fixed endpoint whatever the request URI says.
#[derive(Clone)]
pub(crate) struct EndpointConnector {
    inner: HttpConnector,
    target: Uri,
}

impl EndpointConnector {
    /// A connector for `address` (`host:port`) with the version's connect timeout, nodelay
    /// and TCP keepalive.
    pub(crate) fn new(address: &str, connect_timeout: Duration) -> Result<Self, String> {
        let target: Uri = format!("http://{address}")
            .parse()
            .map_err(|e| format!("endpoint {address:?}: {e}"))?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(30)));
        Ok(EndpointConnector {
            inner: http,
            target,
        })
    }
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        self.inner.call(self.target.clone())
    }
}

//! Dialling one endpoint: a connector that ignores the request URI, so a request can
//! carry the user's Host (HTTP/1 `Host`, HTTP/2 `:authority`) unchanged, and speaks TLS
//! when the version has `tls`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::dns::OnConnect;
use crate::error::{ProxyError, TlsFailure};
use crate::tls::UpstreamTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to an endpoint: plain TCP or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Dials one fixed endpoint whatever the request URI says.
#[derive(Clone)]
pub(crate) struct EndpointConnector {
    inner: HttpConnector<OnConnect>,
    target: Uri,
    tls: Option<(Arc<UpstreamTls>, ServerName<'static>)>,
}

impl EndpointConnector {
    /// A connector for `address` (`host:port`; TLS names the server by it), dialling
    /// `dialled` when weir resolved the name itself (else resolving it with `dns` on each
    /// connect), with the version's connect timeout, nodelay and TCP keepalive, and its
    /// TLS if any.
    pub(crate) fn new(
        address: &str,
        dialled: Option<std::net::SocketAddr>,
        connect_timeout: Duration,
        tls: Option<&Arc<UpstreamTls>>,
        dns: OnConnect,
    ) -> Result<Self, String> {
        let at = dialled.map_or_else(|| address.to_string(), |a| a.to_string());
        let target: Uri = format!("http://{at}")
            .parse()
            .map_err(|e| format!("endpoint {address:?}: {e}"))?;
        let tls = match tls {
            Some(t) => Some((t.clone(), t.name_for(address)?)),
            None => None,
        };
        let mut http = HttpConnector::new_with_resolver(dns);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(30)));
        Ok(EndpointConnector {
            inner: http,
            target,
            tls,
        })
    }
}

impl EndpointConnector {
    /// A connection to the endpoint (TCP, then TLS when configured) for weir's own
    /// pools; a failure is a connect error.
    pub(crate) async fn dial(&self) -> Result<TokioIo<Stream>, ProxyError> {
        self.clone()
            .call(Uri::default())
            .await
            .map_err(|e| ProxyError::upstream(e, true))
    }
}

impl Service<Uri> for EndpointConnector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let dial = self.inner.call(self.target.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = dial.await?.into_inner();
            let stream = match tls {
                None => Stream::Plain(tcp),
                Some((tls, name)) => match tls.connect(name, tcp).await {
                    Ok(s) => Stream::Tls(Box::new(s)),
                    Err(e) => return Err(Box::new(TlsFailure(e)) as BoxError),
                },
            };
            Ok(TokioIo::new(stream))
        })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => {
                let connected = s.get_ref().0.connected();
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

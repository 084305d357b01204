//! The gRPC control API (tonic), with the standard health service and server reflection
//! so grpcurl and grpc_health_probe work (both open to everyone: they change nothing),
//! over plaintext or TLS (h2 by ALPN; client certificates checked per RPC).

pub mod convert;
mod service;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use weir_protos::control::control_server::ControlServer;
use weir_protos::fleet::fleet_server::FleetServer;
use weir_proxy::tls::ServerTls;

use crate::auth::Authorizer;
use crate::controller::Controller;
use crate::fleet::FleetService;
use crate::xds::{AdsService, StatsService};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsServiceServer;
use service::Api;

/// HTTP/2 pings on idle connections, and how long an answer may take.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Time a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls and streams may go on after the shutdown began.
const GRACE: Duration = Duration::from_secs(2);

/// Why the control API stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("control API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the control API, health and reflection on `listener` until `shutdown`: over
/// TLS when `tls` is set, each call checked by `auth`.
pub async fn serve(
    controller: Controller,
    auth: Arc<Authorizer>,
    tls: Option<Arc<ServerTls>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<ControlServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weir_protos::CONTROL_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weir_protos::CONTROL_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Streams (replicas' fleet streams, Envoys' xDS, `weir ctl watch`) never end by
    // themselves: after the shutdown, calls get GRACE to finish, then the rest are cut.
    let (began, begun) = tokio::sync::oneshot::channel::<()>();
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        shutdown.await;
        let _ = began.send(());
    });
    let cut = async move {
        if begun.await.is_ok() {
            tokio::time::sleep(GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let router = tonic::transport::Server::builder()
        // Pings find a replica or client whose connection died without a FIN.
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(FleetServer::new(FleetService {
            fleet: controller.fleet().clone(),
            auth: auth.clone(),
        }))
        .add_service(
            AggregatedDiscoveryServiceServer::new(AdsService {
                routes: controller.routes().clone(),
                fleet: controller.fleet().clone(),
                auth: auth.clone(),
                settings: controller.envoy_settings(),
            })
            .max_decoding_message_size(16 << 20),
        )
        .add_service(MetricsServiceServer::new(StatsService::new(
            controller.routes().clone(),
            controller.fleet().clone(),
            auth.clone(),
        )))
        .add_service(ControlServer::new(Api { controller, auth }));
    let served = async move {
        match tls {
            None => {
                // Without Nagle: a push or an ACK small enough to wait on the peer's delayed
                // TCP ACK (40 ms and more) would stall a step on every data plane it reaches.
                let accepted = TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(accepted, shutdown)
                    .await
            }
            Some(tls) => {
                router
                    .serve_with_incoming_shutdown(handshakes(listener, tls), shutdown)
                    .await
            }
        }
    };
    tokio::select! {
        result = served => result?,
        _ = cut => tracing::info!("control API: streams still open after the grace period are closed"),
    }
    Ok(())
}

/// Accepted connections after their TLS handshake; handshakes run side by side, so a
/// slow client holds up no one.
fn handshakes(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "control API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                // The server stopped reading: it has shut down.
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "control API: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "control API: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

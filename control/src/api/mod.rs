//! The gRPC control API (tonic), with the standard health service and server reflection
//! so grpcurl and grpc_health_probe work.

pub mod convert;
mod service;

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use weir_protos::control::control_server::ControlServer;

use crate::controller::Controller;
use service::Api;

/// Why the control API stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("control API: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the control API, health and reflection on `listener` until `shutdown`.
pub async fn serve(
    controller: Controller,
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
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ControlServer::new(Api { controller }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

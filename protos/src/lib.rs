//! weir's protobuf messages and gRPC services.
#![forbid(unsafe_code)]

/// The echo service used to check gRPC transparency end to end.
pub mod echo {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weir.echo.v1");
}

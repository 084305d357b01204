//! weir's protobuf messages and gRPC services.
#![forbid(unsafe_code)]

/// The echo service used to check gRPC transparency end to end.
pub mod echo {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weir.echo.v1");
}

/// The control API: rollouts, gates and status.
pub mod control {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weir.control.v1");
}

/// The stream between a controller and its proxy replicas: typed routing deltas out,
/// measurements back.
pub mod fleet {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weir.fleet.v2");
}

/// The control API (and the fleet stream) as an encoded `FileDescriptorSet`, for server reflection.
pub const CONTROL_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weir_control_descriptor.bin"));

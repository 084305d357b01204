//! Compiles protos/proto with protox (pure Rust), so no system protoc is needed.
//! The control API's encoded descriptor set is also written out for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "weir/echo/v1/echo.proto",
        "weir/control/v1/control.proto",
        "weir/fleet/v2/fleet.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection describes only what the control listener serves.
    let control = protox::compile(
        ["weir/control/v1/control.proto", "weir/fleet/v2/fleet.proto"],
        ["proto"],
    )?;
    std::fs::write(
        out.join("weir_control_descriptor.bin"),
        control.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

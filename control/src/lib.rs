//! weir's controller and command line: `weir run`, `weir check`, `weir demo`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod run;

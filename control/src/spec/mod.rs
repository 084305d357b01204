//! The analysis spec: Flagger's `analysis:` block as written (`wire`), validated into the
//! model the controller reads (`model`), by `validate`.

mod errors;
mod metrics;
mod model;
mod validate;
mod wire;

pub use metrics::{render, Catalog, RenderError, Vars};
pub use model::*;
pub use validate::{parse, validate};
pub use wire::*;

//! The porting program (`porting/program.rs`), built against this crate's `quinn` dependency.
#![allow(missing_docs)]

#[path = "../../program.rs"]
mod program;
pub use program::*;

//! Connections at run time: status derivation and the startup queue (pure), sync-set
//! iterations and their drivers.

pub mod driver;
pub mod runtime;
pub mod startup_queue;
pub mod status;
pub mod watermark;

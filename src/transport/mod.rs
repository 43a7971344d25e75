//! Transports at run time: the state machine (pure), the durable store, the host client and
//! the runtime that drives them.

pub mod host;
pub mod machine;
pub mod queue;
pub mod runtime;

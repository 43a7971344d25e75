//! The one reconcile every kind runs (`skeleton`: dereference → build → apply → observe →
//! status, through the `WorkerResource` trait), the `restart` annotation's rules, and the `guard` that keeps an object the
//! operator cannot read from stopping the others. Knows no kind and no pool.

pub mod guard;
pub mod restart;
pub mod skeleton;

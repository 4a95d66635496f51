//! polygraph's probe agent.
//!
//! `serve` listens on the pod's ports and answers with the pod's identity; `probe` reads a batch of
//! targets as JSON on stdin and prints one JSON result per target; `hold` keeps connections open
//! and re-tests them on request; `dns` is the local cluster's DNS server (never used in a pod of a
//! real cluster, which has its own). One `probe` process per source
//! pod per matrix round, never one process per probe.

pub mod cli;
pub mod dns;
pub mod hold;
pub mod probe;
pub mod resolve;
pub mod serve;
mod sockets;
pub mod wire;

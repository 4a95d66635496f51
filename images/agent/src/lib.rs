//! polygraph's probe agent.
//!
//! `serve` listens on the pod's ports and answers with the pod's identity; `session` serves a whole
//! run's requests for its pod on one stream (probe batches, and held connections opened, re-tested
//! and released); `probe` runs one batch read as JSON on stdin and prints one JSON result per
//! target; `dns` is the local cluster's DNS server (never used in a pod of a real cluster, which
//! has its own). One `session` per source pod per run, never one process per probe.

pub mod cli;
pub mod dns;
pub mod hold;
mod icmp;
pub mod probe;
pub mod resolve;
pub mod serve;
pub mod session;
mod sockets;
pub mod wire;

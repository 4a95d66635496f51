//! polygraph tells the truth about Kubernetes NetworkPolicy enforcement.
//!
//! The pure core (`model`, `policy`, `matrix`) knows the spec and answers offline; `report` turns
//! answers into tables and JSON. ARCHITECTURE.md maps the layers and the data flow.

pub mod analyze;
pub mod backend;
pub mod bench;
pub mod certify;
pub mod faults;
pub mod generate;
pub mod input;
pub mod matrix;
pub mod model;
pub mod policy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod world;

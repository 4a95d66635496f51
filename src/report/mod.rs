//! What people and tools read: terminal matrices, explanations and JSON.

pub mod analyze_json;
pub mod junit;
pub mod matrix_table;
pub mod probe;
pub mod run_json;
pub mod run_terminal;

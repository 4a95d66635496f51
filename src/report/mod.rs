//! What people and tools read: terminal matrices, explanations and JSON.

pub mod analyze_json;
pub mod diff;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod matrix_table;
pub mod probe;
pub mod run_json;
pub mod run_terminal;

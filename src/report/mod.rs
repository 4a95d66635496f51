//! What people and tools read: terminal matrices, explanations and JSON.

pub mod analyze_json;
pub mod matrix_table;
pub mod probe;

//! Model files and results.

//! Integration tests: training.

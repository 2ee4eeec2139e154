//! Integration tests: model_files.

//! Integration tests: data_readers.

//! Integration tests: autodiff_checks.

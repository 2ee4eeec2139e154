//! Reverse-mode autodiff tape (see tape.rs).

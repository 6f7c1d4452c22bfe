//! End-to-end tests: each one starts the real binaries on ephemeral loopback ports.

mod util;

mod logging;
mod pen_basic;
mod penctl;

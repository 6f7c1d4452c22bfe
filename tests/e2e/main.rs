//! End-to-end tests: each one starts the real binaries on ephemeral loopback ports.

mod util;

mod interop;
mod logging;
mod pen_defects;
mod pen_fixes;
mod pen_process;
mod pen_relay;
mod pen_select;
mod pen_tuning;
mod penctl;

//! Diagnostics: the debug level and where messages go (stderr with a timestamp in the
//! foreground, syslog once daemonised).
//!
//! This is the one module with process-wide state, kept as atomics: every binary has a
//! single diagnostics channel, exactly as the original's `debug()`/`error()` did.

use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static LEVEL: AtomicU32 = AtomicU32::new(0);
static SYSLOG: AtomicBool = AtomicBool::new(false);

/// Sets the debug level (`-d` count, `debug N`).
pub fn set_level(level: u32) {
    LEVEL.store(level, Ordering::Relaxed);
}

/// The current debug level.
pub fn level() -> u32 {
    LEVEL.load(Ordering::Relaxed)
}

/// True when messages of debug level `n` are printed.
pub fn enabled(n: u32) -> bool {
    level() >= n
}

/// Sends diagnostics to syslog from now on (facility LOG_USER, as the original).
pub fn use_syslog(ident: &'static std::ffi::CStr) {
    // SAFETY: `ident` is 'static, as openlog(3) requires: it keeps the pointer.
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_CONS | libc::LOG_PID,
            libc::LOG_USER,
        )
    };
    SYSLOG.store(true, Ordering::Relaxed);
}

/// Writes one diagnostic message. `error` selects LOG_ERR instead of LOG_DEBUG.
pub fn emit(error: bool, args: fmt::Arguments) {
    if SYSLOG.load(Ordering::Relaxed) {
        let text = fmt::format(args).replace('\0', "\\0");
        if let Ok(msg) = CString::new(text) {
            let prio = if error {
                libc::LOG_ERR
            } else {
                libc::LOG_DEBUG
            };
            // SAFETY: both strings are NUL-terminated; "%s" takes exactly one argument.
            unsafe { libc::syslog(prio, c"%s".as_ptr(), msg.as_ptr()) };
        }
    } else {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let mut err = std::io::stderr().lock();
        // A failing stderr has nowhere to report to; dropping the message is all we can do.
        let _ = writeln!(err, "{now}: {args}");
    }
}

/// A message printed at every debug level (the original's unconditional `debug()` lines).
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => { $crate::diag::emit(false, format_args!($($arg)*)) };
}

/// A message printed only when the debug level is at least `$lvl`.
#[macro_export]
macro_rules! debug {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::diag::enabled($lvl) { $crate::diag::emit(false, format_args!($($arg)*)) }
    };
}

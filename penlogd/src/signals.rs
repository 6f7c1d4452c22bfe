//! Signals as flags plus a self-pipe that wakes the loop's `poll` (signal-hook). These
//! atomics are the only process-wide state of the daemon, as the house style allows.
//!
//! TERM and INT both flush and exit: the original lost its buffer on INT (spec §3.4).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

/// What the signals asked for since the last [`Signals::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub terminate: bool,
    pub reopen: bool,
    pub report: bool,
}

/// Registered handlers and the pipe they write to.
pub struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    /// Installs the handlers for TERM, INT, HUP and USR1.
    pub fn register() -> io::Result<Signals> {
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let s = Signals {
            term: Arc::default(),
            hup: Arc::default(),
            usr1: Arc::default(),
            wake,
        };
        for (sig, flag) in [
            (SIGTERM, &s.term),
            (SIGINT, &s.term),
            (SIGHUP, &s.hup),
            (SIGUSR1, &s.usr1),
        ] {
            signal_hook::flag::register(sig, flag.clone())?;
            signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
        }
        Ok(s)
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Returns (and clears) the pending requests. The flags are plain atomic loads in
    /// the common case; the pipe is drained only when a signal came.
    pub fn take(&mut self) -> Pending {
        let p = Pending {
            terminate: self.term.swap(false, Ordering::SeqCst),
            reopen: self.hup.swap(false, Ordering::SeqCst),
            report: self.usr1.swap(false, Ordering::SeqCst),
        };
        if p != Pending::default() {
            self.drain();
        }
        p
    }

    /// Empties the pipe (also when `poll` saw it readable: a handler running on another
    /// thread may write its byte after `take` looked).
    pub fn drain(&mut self) {
        let mut sink = [0u8; 64];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
    }
}

//! Signals: each handled signal sets an atomic flag and writes a byte to a socket pair
//! the loop polls, so a signal wakes `poll` at once (the self-pipe trick, done by
//! signal-hook). These flags are the only process-wide state besides diagnostics.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::UnixStream;
use signal_hook::consts::{SIGHUP, SIGINT, SIGPIPE, SIGTERM, SIGUSR1, SIGUSR2};

/// The signals pen reacts to, as flags.
pub struct Signals {
    /// Read end of the wake-up pipe, registered with the poll.
    pub wake: UnixStream,
    hup: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

/// What the signals received since the last check ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub reload: bool,
    pub exit: bool,
    pub stats: bool,
}

impl Signals {
    /// Installs the handlers: HUP reload, TERM and INT clean exit, USR1 stats; PIPE is
    /// ignored; USR2 is ignored too (the original aborted with a core dump: not copied).
    pub fn install() -> io::Result<Signals> {
        let (wake, notify) = std::os::unix::net::UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let hup = Arc::new(AtomicBool::new(false));
        let term = Arc::new(AtomicBool::new(false));
        let usr1 = Arc::new(AtomicBool::new(false));
        for (sig, flag) in [
            (SIGHUP, &hup),
            (SIGTERM, &term),
            (SIGINT, &term),
            (SIGUSR1, &usr1),
        ] {
            signal_hook::flag::register(sig, flag.clone())?;
            signal_hook::low_level::pipe::register(sig, notify.try_clone()?)?;
        }
        let ignored = Arc::new(AtomicBool::new(false));
        for sig in [SIGPIPE, SIGUSR2] {
            signal_hook::flag::register(sig, ignored.clone())?;
        }
        Ok(Signals {
            wake: UnixStream::from_std(wake),
            hup,
            term,
            usr1,
        })
    }

    /// Empties the wake-up pipe and returns what was asked for since the last call.
    pub fn take(&mut self) -> Pending {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        Pending {
            reload: self.hup.swap(false, Ordering::Relaxed),
            exit: self.term.swap(false, Ordering::Relaxed),
            stats: self.usr1.swap(false, Ordering::Relaxed),
        }
    }
}

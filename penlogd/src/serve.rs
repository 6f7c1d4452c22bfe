//! The daemon: startup in an order that lets every failure be reported (the parent of a
//! daemonised start waits for the child's verdict), then the receive loop.
//!
//! Startup order, and why: signals first (so TERM always removes the pidfile); the user
//! is looked up while /etc/passwd is visible; the socket is bound while privileged; then
//! chroot (so `-l` and `-p` are inside DIR, as the original's paths were), the log and the
//! pidfile are opened as root, and only then uid, gid and groups are dropped (the original
//! opened them after a bare `setuid`, keeping root's groups: spec §6).
//!
//! The loop: receive in batches until the queue is empty, then let the output write what
//! is due and `poll` the socket and the signal pipe. Nothing blocks but `poll`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use common::daemon::{daemonize, drop_privileges, Pidfile, Readiness, User};
use common::net::udp_socket;
use socket2::Socket;

use crate::cli::DaemonConfig;
use crate::join::Join;
use crate::output::{Output, Rotation};
use crate::recv::{kernel_drops, Batch, SLOTS};
use crate::signals::Signals;
use crate::stats::Stats;
use crate::Error;

/// How long a busy loop lets datagrams accumulate between batches: at 300,000
/// datagrams/s, 300 of them, which the receive buffer holds many times over.
const COALESCE: Duration = Duration::from_millis(1);

/// How often the kernel drop counter is read while busy.
const DROP_CHECK: Duration = Duration::from_secs(1);

/// The longest TERM waits for the socket queue to empty: a full 32 MiB buffer of small
/// datagrams takes about a tenth of that.
const DRAIN_MAX: Duration = Duration::from_secs(1);

/// Runs the daemon until TERM or INT.
pub fn run(cfg: DaemonConfig) -> Result<(), Error> {
    common::diag::set_level(u32::from(cfg.debug));
    let readiness = if cfg.foreground {
        Readiness::foreground()
    } else {
        let r = daemonize("penlogd").map_err(Error::Daemon)?;
        common::diag::use_syslog(c"penlogd");
        r
    };
    let mut daemon = match Daemon::start(&cfg) {
        Ok(d) => d,
        Err(e) if cfg.foreground => return Err(e),
        Err(e) => {
            // The waiting parent prints the error and exits 1; stderr is still the
            // terminal here, so returning would print it twice.
            readiness.fail(&e.to_string());
            std::process::exit(1);
        }
    };
    readiness.ready();
    daemon.serve();
    Ok(())
}

/// The running daemon.
struct Daemon {
    sock: Socket,
    batch: Batch,
    join: Join,
    out: Output,
    signals: Signals,
    _pidfile: Option<Pidfile>,
    /// The matcher's time origin.
    epoch: Instant,
    drops_at_start: u64,
    drops: u64,
}

impl Daemon {
    fn start(cfg: &DaemonConfig) -> Result<Daemon, Error> {
        let signals = Signals::register().map_err(Error::Signals)?;
        let user = cfg
            .user
            .as_deref()
            .map(User::lookup)
            .transpose()
            .map_err(Error::Daemon)?;
        let sock = bind(cfg)?;
        if let Some(dir) = &cfg.chroot {
            drop_privileges(None, Some(dir)).map_err(Error::Daemon)?;
        }
        let rotation = Rotation {
            max_size: cfg.rotate_size,
            daily: cfg.daily,
        };
        let out = match &cfg.log {
            Some(path) => Output::file(path, cfg.line_buffered, rotation)
                .map_err(|e| Error::Open(path.clone(), e))?,
            None => Output::stdout(cfg.line_buffered),
        };
        let pidfile = cfg
            .pidfile
            .as_deref()
            .map(Pidfile::create)
            .transpose()
            .map_err(Error::Daemon)?;
        drop_privileges(user.as_ref(), None).map_err(Error::Daemon)?;
        let window = cfg
            .window
            .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
        let hold = i64::try_from(cfg.hold_ms).unwrap_or(i64::MAX);
        let join = Join::new(
            cfg.records,
            window,
            hold,
            cfg.pen_from.clone(),
            cfg.web_from.clone(),
        );
        let drops_at_start = kernel_drops(sock.as_raw_fd()).unwrap_or(0);
        common::debug!(
            1,
            "listening on {}",
            sock.local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        Ok(Daemon {
            sock,
            batch: Batch::new(),
            join,
            out,
            signals,
            _pidfile: pidfile,
            epoch: Instant::now(),
            drops_at_start,
            drops: 0,
        })
    }

    fn serve(&mut self) {
        let fd = self.sock.as_raw_fd();
        let mut drops_checked = Instant::now();
        loop {
            let p = self.signals.take();
            if p.terminate {
                break;
            }
            if p.reopen {
                if let Err(e) = self.out.reopen() {
                    // Keep writing to the old file rather than lose lines (the original
                    // exited here).
                    common::diag!("can't reopen the log: {e}");
                }
            }
            if p.report {
                common::diag!("{}", self.stats());
            }
            let got = match self.receive(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    common::diag!("receive error: {e}");
                    0
                }
            };
            // Checked before the busy `continue` too: under overload the queue is never
            // empty, and that is exactly when drops happen and must be reported.
            let now = Instant::now();
            if now.duration_since(drops_checked) >= DROP_CHECK {
                self.check_drops();
                drops_checked = now;
            }
            if got == SLOTS {
                continue; // more may be queued
            }
            // The queue is empty.
            let released = self.join.release_held(self.ms(now), self.out.buf());
            self.out.appended(released, now);
            let timeout = min_opt(self.out.idle(now), self.next_release(now));
            if got > 0 {
                // Traffic is flowing: let a batch build up before the next system call
                // (interrupt coalescing), so that a busy daemon pays for one wakeup per
                // batch instead of one per datagram. A line waits at most COALESCE more.
                if nap(self.signals.fd(), COALESCE) {
                    self.signals.drain();
                }
            } else if wait(fd, self.signals.fd(), timeout) {
                self.signals.drain();
            }
        }
        self.drain(fd);
        let released = self.join.release_all(self.out.buf());
        self.out.appended(released, Instant::now());
        self.check_drops();
        self.out.close();
        common::diag!("exiting: {}", self.stats());
    }

    /// `now` as the matchers' milliseconds.
    fn ms(&self, now: Instant) -> i64 {
        now.duration_since(self.epoch).as_millis() as i64
    }

    /// How long until the oldest held line is due to be written, if one is held.
    fn next_release(&self, now: Instant) -> Option<Duration> {
        let due = self.join.next_release()?;
        let left = due.saturating_sub(self.ms(now)).max(0);
        // One more millisecond: the release takes lines strictly older than the hold.
        Some(Duration::from_millis(left as u64 + 1))
    }

    /// Receives one batch and handles it. Returns the number of datagrams.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.batch.recv(fd)?;
        let now = Instant::now();
        let ms = self.ms(now);
        for i in 0..n {
            let (data, from, _) = self.batch.get(i);
            let from = from.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let lines = self.join.datagram(data, from, ms, self.out.buf());
            self.out.appended(lines, now);
        }
        Ok(n)
    }

    /// At TERM: handles what the socket still holds, so that datagrams sent just before
    /// the signal are written. Bounded in time, as senders may never stop.
    fn drain(&mut self, fd: RawFd) {
        let end = Instant::now() + DRAIN_MAX;
        while Instant::now() < end {
            match self.receive(fd) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock: empty
            }
        }
        common::diag!("still receiving after {DRAIN_MAX:?}; exiting anyway");
    }

    /// Reads the kernel's drop counter and says so when it grew.
    fn check_drops(&mut self) {
        let Some(total) = kernel_drops(self.sock.as_raw_fd()) else {
            return;
        };
        let drops = total.saturating_sub(self.drops_at_start);
        if drops > self.drops {
            common::diag!(
                "kernel dropped {} datagrams (receive buffer full), {drops} in all; raise -B",
                drops - self.drops
            );
            self.drops = drops;
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            dropped: self.drops,
            write_errors: self.out.write_errors,
            ..self.join.snapshot()
        }
    }
}

/// Binds `-L ADDR` (default `[::]`, dual-stack; `0.0.0.0` where IPv6 is unavailable)
/// with the requested receive buffer, non-blocking.
fn bind(cfg: &DaemonConfig) -> Result<Socket, Error> {
    let addr = SocketAddr::new(cfg.bind_ip(), cfg.port);
    let sock = match udp_socket(addr, Some(cfg.rcvbuf)) {
        Ok(s) => s,
        Err(e) if cfg.listen.is_none() && e.step == "create" => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port);
            udp_socket(v4, Some(cfg.rcvbuf)).map_err(Error::Net)?
        }
        Err(e) => return Err(Error::Net(e)),
    };
    sock.set_nonblocking(true).map_err(|e| {
        Error::Net(common::net::NetError {
            step: "set O_NONBLOCK on",
            endpoint: addr.to_string(),
            source: e,
        })
    })?;
    // The kernel reports twice the usable size; less than asked means rmem_max capped it.
    match sock.recv_buffer_size() {
        Ok(got) if got / 2 < cfg.rcvbuf => common::diag!(
            "receive buffer is {} bytes, not {}: raise net.core.rmem_max or run as root",
            got / 2,
            cfg.rcvbuf
        ),
        _ => {}
    }
    Ok(sock)
}

/// Sleeps for `t` unless a signal arrives (the socket is not watched: see COALESCE).
/// Returns true when the signal pipe is readable.
fn nap(signals: RawFd, t: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: signals,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pollfd array and timespec; a null sigmask leaves the mask unchanged.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    n > 0 && fds[0].revents != 0
}

/// The shorter of two optional timeouts (`None`: no limit).
fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until the socket or the signal pipe is readable, or `timeout` passes. Returns
/// true when the signal pipe is readable.
fn wait(sock: RawFd, signals: RawFd, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: sock,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = match timeout {
        // Round up, so that a due flush is not missed by a zero-length sleep loop.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: fds is a valid array of two pollfd. EINTR is fine: the loop re-checks.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    n > 0 && fds[1].revents != 0
}

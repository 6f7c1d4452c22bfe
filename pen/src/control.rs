//! The control socket (control.md §1): one command line in, the reply out, then close.
//!
//! Unlike the original, which read the command with a blocking `recv` inside the event
//! loop (so one silent client froze all traffic: §13.2 #5), sessions here are
//! non-blocking: the line is bounded (4095 bytes), the whole session has a deadline, and
//! a slow reader of a large reply only delays itself. The same machinery serves the
//! optional Prometheus listener, which answers any HTTP request with the metrics. A
//! command that names a host waits for [`crate::lookup`] before it runs.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Interest, Registry, Token};

use crate::clients::Peer;
use crate::command::parse_line;
use crate::conn::stream::Stream;
use crate::listener::Listener;
use crate::lookup::Origin;
use crate::state::State;

/// Longest command line (the original's buffer was 4096 bytes with the NUL).
pub const MAX_LINE: usize = 4095;
/// A session must finish within this time.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// A line without a newline is taken as complete after this much quiet (the original ran
/// whatever one `recv` returned, so `mode` without a newline worked).
pub const QUIET: Duration = Duration::from_millis(200);

/// Tokens of control sessions start here, far above connection tokens.
pub const FIRST_SESSION_TOKEN: usize = 1 << 40;

/// What a session serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A control command.
    Control,
    /// A Prometheus scrape: any request gets the metrics.
    Metrics,
}

/// One control or metrics connection.
#[derive(Debug)]
pub struct Session {
    /// Unique for the process's lifetime (slab keys are reused).
    pub id: u64,
    pub kind: Kind,
    pub stream: Stream,
    /// The request bytes so far (at most MAX_LINE + 1).
    input: Vec<u8>,
    /// The reply and how much of it was written; `None` while reading.
    output: Option<(Vec<u8>, usize)>,
    /// When the session is cut off.
    pub deadline: Instant,
    /// When the last bytes arrived.
    pub last_input: Instant,
    /// The peer sent EOF.
    eof: bool,
    /// The command is waiting for a name lookup; the reply comes with its result.
    looking_up: bool,
}

/// What a session needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Waiting for more input or for the socket to take output.
    Wait,
    /// A complete request line (control) or request (metrics): answer it.
    Request(Result<String, String>),
    /// Done or failed: close it.
    Close,
}

impl Session {
    pub fn new(id: u64, kind: Kind, stream: Stream, now: Instant) -> Session {
        Session {
            id,
            kind,
            stream,
            input: Vec::new(),
            output: None,
            deadline: now + SESSION_TIMEOUT,
            last_input: now,
            eof: false,
            looking_up: false,
        }
    }

    /// The request is waiting for a name lookup: take no more input until the reply.
    pub fn await_lookup(&mut self) {
        self.looking_up = true;
    }

    /// Reads what is available; returns the request once it is complete.
    pub fn on_readable(&mut self, now: Instant) -> Step {
        if self.output.is_some() || self.looking_up {
            return Step::Wait;
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.last_input = now;
                    let room = (MAX_LINE + 1).saturating_sub(self.input.len());
                    self.input.extend_from_slice(&buf[..n.min(room)]);
                    if self.line_end().is_some() || self.input.len() > MAX_LINE {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        self.request(false)
    }

    /// Called when the quiet period or the deadline passes.
    pub fn on_timer(&mut self, now: Instant) -> Step {
        if now >= self.deadline {
            return Step::Close;
        }
        if self.reading() && !self.input.is_empty() && now >= self.last_input + QUIET {
            return self.request(true);
        }
        Step::Wait
    }

    /// Still reading the request (no reply yet, no lookup under way).
    fn reading(&self) -> bool {
        self.output.is_none() && !self.looking_up
    }

    /// The next time this session needs a look.
    pub fn next_timer(&self) -> Instant {
        if self.reading() && !self.input.is_empty() {
            self.deadline.min(self.last_input + QUIET)
        } else {
            self.deadline
        }
    }

    fn line_end(&self) -> Option<usize> {
        match self.kind {
            Kind::Control => self.input.iter().position(|&b| b == b'\n' || b == b'\r'),
            // An HTTP request head ends with a blank line: read all of it, so that closing
            // after the reply does not reset the connection under the scraper's feet.
            Kind::Metrics => {
                let i = &self.input;
                i.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .or_else(|| i.windows(2).position(|w| w == b"\n\n"))
            }
        }
    }

    /// Turns the input into a request when it is complete (a line end, EOF, too long, or
    /// `quiet` after some input).
    fn request(&mut self, quiet: bool) -> Step {
        if let Some(end) = self.line_end() {
            return Step::Request(self.text(end));
        }
        if self.input.len() > MAX_LINE {
            return Step::Request(Err(format!("command line too long (max {MAX_LINE} bytes)")));
        }
        if self.eof || quiet {
            if self.input.is_empty() {
                return Step::Close;
            }
            return Step::Request(self.text(self.input.len()));
        }
        Step::Wait
    }

    fn text(&self, end: usize) -> Result<String, String> {
        match std::str::from_utf8(&self.input[..end]) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(format!(
                "command is not valid UTF-8 (byte {})",
                e.valid_up_to()
            )),
        }
    }

    /// Starts sending `reply`; returns whether the session is finished.
    pub fn reply(&mut self, reply: Vec<u8>) -> Step {
        self.output = Some((reply, 0));
        self.on_writable()
    }

    /// Writes what the socket takes; closes once all is written.
    pub fn on_writable(&mut self) -> Step {
        let Some((out, pos)) = self.output.as_mut() else {
            return Step::Wait;
        };
        while *pos < out.len() {
            match self.stream.write(&out[*pos..]) {
                Ok(0) => return Step::Close,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        // Read what the peer may still have sent, so that the close is a FIN, not a reset
        // (bounded: the socket is non-blocking).
        let mut sink = [0u8; 512];
        for _ in 0..16 {
            match self.stream.read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        Step::Close
    }
}

/// Binds the control socket for `spec` (control.md §1.1). A Unix socket is created with
/// owner-only permissions (the original used the umask).
pub fn bind(spec: &str, backlog: i32) -> Result<Listener, String> {
    if !spec.contains('/') {
        return Listener::bind(spec, backlog, false);
    }
    // SAFETY: umask only changes this process's file creation mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let r = Listener::bind(spec, backlog, false);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r
}

/// The HTTP response to a Prometheus scrape (text exposition format 0.0.4).
pub fn metrics_response(state: &crate::state::State) -> Vec<u8> {
    let body = crate::stats::prometheus(state);
    let mut out = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Registers a session with its token.
pub fn register(reg: &Registry, s: &mut Session, key: usize) -> std::io::Result<()> {
    reg.register(
        &mut s.stream,
        Token(FIRST_SESSION_TOKEN + key),
        Interest::READABLE | Interest::WRITABLE,
    )
}

/// The peer of an accepted control connection, for `control_acl`.
pub fn accept(l: &Listener) -> std::io::Result<(Stream, Peer)> {
    l.accept()
}

/// Open sessions at most, per kind (so that metrics scrapers cannot crowd out penctl);
/// more are closed at once.
const MAX_SESSIONS: usize = 32;

/// The text a control client gets for a command's outcome.
pub(crate) fn reply_text(r: crate::command::exec::Reply) -> String {
    r.unwrap_or_else(|e| format!("{e}\n"))
}

/// The sessions as the event loop drives them.
impl State {
    /// Accepts control (or metrics) connections. A TCP peer that `control_acl` denies is
    /// closed at once with nothing sent (control.md §1.2); Unix peers are always allowed.
    pub(crate) fn accept_sessions(&mut self, kind: Kind) {
        loop {
            let l = match kind {
                Kind::Control => self.control.as_ref(),
                Kind::Metrics => self.metrics.as_ref(),
            };
            let Some(l) = l else { return };
            let (stream, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    common::debug!(1, "control accept: {e}");
                    return;
                }
            };
            if kind == Kind::Control && !self.acls.permits(self.settings.control_acl, &peer) {
                common::debug!(1, "do_ctrl: not from there ({peer})");
                continue;
            }
            if self.sessions.iter().filter(|(_, s)| s.kind == kind).count() >= MAX_SESSIONS {
                common::debug!(1, "too many control sessions; closing {peer}");
                continue;
            }
            self.next_session_id += 1;
            let key = self.sessions.insert(Session::new(
                self.next_session_id,
                kind,
                stream,
                self.clock.now,
            ));
            let registered = match &self.registry {
                Some(reg) => register(reg, &mut self.sessions[key], key).is_ok(),
                None => false,
            };
            if !registered {
                self.sessions.remove(key);
            }
        }
    }

    pub(crate) fn session_event(&mut self, key: usize, ev: &Event) {
        let now = self.clock.now;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let mut step = Step::Wait;
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            step = s.on_readable(now);
        }
        if step == Step::Wait && (ev.is_writable() || ev.is_write_closed()) {
            step = s.on_writable();
        }
        self.session_step(key, step);
    }

    pub(crate) fn session_timers(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next_timer() <= now)
            .map(|(k, _)| k)
            .collect();
        for key in due {
            let step = self.sessions[key].on_timer(now);
            self.session_step(key, step);
        }
    }

    /// Answers a complete request, or closes a finished session.
    fn session_step(&mut self, key: usize, step: Step) {
        match step {
            Step::Wait => {}
            Step::Close => self.session_close(key),
            Step::Request(req) => {
                let kind = self.sessions[key].kind;
                let reply = match (kind, req) {
                    (Kind::Metrics, _) => metrics_response(self),
                    (Kind::Control, Ok(line)) => match self.session_command(key, &line) {
                        Some(reply) => reply.into_bytes(),
                        None => return, // the reply comes after a name lookup
                    },
                    (Kind::Control, Err(e)) => format!("{e}\n").into_bytes(),
                };
                self.session_reply(key, reply);
            }
        }
    }

    /// Starts sending `reply` on session `key`; closes it once all is written.
    pub(crate) fn session_reply(&mut self, key: usize, reply: Vec<u8>) {
        if let Some(s) = self.sessions.get_mut(key) {
            if s.reply(reply) == Step::Close {
                self.session_close(key);
            }
        }
    }

    fn session_close(&mut self, key: usize) {
        let mut s = self.sessions.remove(key);
        if let Some(reg) = &self.registry {
            let _ = reg.deregister(&mut s.stream);
        }
    }

    /// Runs one control line from session `key`; `None` when the command first waits for
    /// a name lookup or a file read off the loop ([`crate::lookup`]).
    pub(crate) fn session_command(&mut self, key: usize, line: &str) -> Option<String> {
        let cmd = match parse_line(line) {
            Ok(cmd) => cmd,
            Err(e) => return Some(format!("{e}\n")),
        };
        if cmd.names().is_empty() && !cmd.reads_files() {
            return Some(reply_text(self.apply(cmd)));
        }
        let origin = Origin::Session {
            key,
            id: self.sessions[key].id,
        };
        match self.submit_lookup(origin, vec![(1, cmd)]) {
            Ok(()) => {
                self.sessions[key].await_lookup();
                None
            }
            // No worker: look the names up and read the files here, as the original did.
            Err(job) => Some(
                job.cmds
                    .into_iter()
                    .map(|(_, c)| reply_text(self.apply(c)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let s = Session::new(
            0,
            Kind::Control,
            Stream::Unix(mio::net::UnixStream::from_std(a)),
            Instant::now(),
        );
        (s, b)
    }

    #[test]
    fn a_line_is_a_request_and_the_rest_is_ignored() {
        let (mut s, mut peer) = pair();
        peer.write_all(b"pid\ndebug\n").unwrap();
        assert_eq!(
            s.on_readable(Instant::now()),
            Step::Request(Ok("pid".into()))
        );
        let (mut s, mut peer) = pair();
        peer.write_all(b"mode\r\n").unwrap();
        assert_eq!(
            s.on_readable(Instant::now()),
            Step::Request(Ok("mode".into()))
        );
    }

    #[test]
    fn a_session_waiting_for_a_lookup_asks_nothing_more_until_its_reply() {
        let (mut s, mut peer) = pair();
        let t0 = Instant::now();
        peer.write_all(b"server 0 address web.test").unwrap();
        assert_eq!(s.on_readable(t0), Step::Wait);
        assert!(matches!(s.on_timer(t0 + QUIET), Step::Request(Ok(_))));
        s.await_lookup();
        peer.write_all(b"\n").unwrap();
        assert_eq!(s.on_readable(t0 + QUIET), Step::Wait);
        assert_eq!(s.on_timer(t0 + QUIET * 2), Step::Wait);
        assert_eq!(s.next_timer(), s.deadline);
        assert_eq!(s.reply(b"done\n".to_vec()), Step::Close);
        drop(s);
        let mut got = String::new();
        peer.read_to_string(&mut got).unwrap();
        assert_eq!(got, "done\n");
    }

    #[test]
    fn partial_lines_wait_then_run_after_quiet_or_eof() {
        let (mut s, mut peer) = pair();
        let t0 = Instant::now();
        peer.write_all(b"mo").unwrap();
        assert_eq!(s.on_readable(t0), Step::Wait);
        assert_eq!(s.on_timer(t0 + QUIET / 2), Step::Wait);
        assert_eq!(s.on_timer(t0 + QUIET), Step::Request(Ok("mo".into())));
        let (mut s, mut peer) = pair();
        peer.write_all(b"mode").unwrap();
        drop(peer);
        assert_eq!(
            s.on_readable(Instant::now()),
            Step::Request(Ok("mode".into()))
        );
    }

    #[test]
    fn bad_input_gets_an_error_not_a_crash() {
        let (mut s, mut peer) = pair();
        peer.write_all(&vec![b'x'; 5000]).unwrap();
        let step = s.on_readable(Instant::now());
        assert!(
            matches!(step, Step::Request(Err(ref e)) if e.contains("too long")),
            "{step:?}"
        );
        let (mut s, mut peer) = pair();
        peer.write_all(b"\xff\xfe\n").unwrap();
        assert!(matches!(
            s.on_readable(Instant::now()),
            Step::Request(Err(_))
        ));
    }

    #[test]
    fn silent_clients_are_cut_off() {
        let (mut s, _peer) = pair();
        let t0 = Instant::now();
        assert_eq!(s.on_readable(t0), Step::Wait);
        assert_eq!(s.on_timer(t0 + SESSION_TIMEOUT), Step::Close);
        let (mut s, peer) = pair();
        drop(peer);
        assert_eq!(s.on_readable(t0), Step::Close);
    }

    #[test]
    fn replies_are_written_then_closed() {
        let (mut s, mut peer) = pair();
        assert_eq!(s.reply(b"42\n".to_vec()), Step::Close);
        let mut got = [0u8; 3];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"42\n");
    }
}

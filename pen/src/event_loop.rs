//! The event loop: one mio `Poll`, dispatch of readiness events, deadlines, deferred
//! accept and close. No protocol code lives here; control sessions are driven from
//! `control`, name lookups from `lookup`.

use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Interest, Poll, Token};

use crate::conn::relay::{Outcome, Relay};
use crate::conn::{untoken, Phase, Side};
use crate::control::{Kind, FIRST_SESSION_TOKEN};
use crate::signals::Signals;
use crate::spin::Spin;
use crate::state::{Clock, PeerIp, State};

/// The listening socket.
pub const LISTEN: Token = Token(0);
/// The signal wake-up pipe.
pub const SIGNAL: Token = Token(1);
/// The control socket.
pub const CONTROL: Token = Token(2);
/// The Prometheus listener.
pub const METRICS: Token = Token(3);
/// The name-lookup worker's waker.
pub const LOOKUP: Token = Token(4);

/// What the loop asks of its owner between passes (things that need process context).
pub trait Host {
    /// HUP: reopen the log, re-read the config file.
    fn reload(&mut self, state: &mut State);
    /// USR1: stats.
    fn stats(&mut self, state: &mut State);
}

/// Runs until TERM/INT or `exit`.
pub fn run(
    state: &mut State,
    poll: &mut Poll,
    signals: &mut Signals,
    host: &mut dyn Host,
) -> io::Result<()> {
    poll.registry()
        .register(&mut signals.wake, SIGNAL, Interest::READABLE)?;
    if let Some(l) = state.listener.as_mut() {
        poll.registry().register(l, LISTEN, Interest::READABLE)?;
    }
    if let Some(l) = state.control.as_mut() {
        poll.registry().register(l, CONTROL, Interest::READABLE)?;
    }
    if let Some(l) = state.metrics.as_mut() {
        poll.registry().register(l, METRICS, Interest::READABLE)?;
    }
    state.registry = Some(poll.registry().try_clone()?);
    state.accept_more = true;
    let mut events = Events::with_capacity(1024);
    let mut spin = Spin::default();
    while !state.exit {
        let timeout = state.poll_timeout();
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        state.clock = Clock::read();
        let spin_max = Duration::from_micros(state.settings.busy_poll.into());
        let busy = !events.is_empty();
        if busy && !spin_max.is_zero() {
            spin.woke(state.clock.now, spin_max);
        }
        let mut signalled = false;
        for ev in events.iter() {
            match ev.token() {
                LISTEN => state.accept_more = true,
                SIGNAL => signalled = true,
                CONTROL => state.accept_sessions(Kind::Control),
                METRICS => state.accept_sessions(Kind::Metrics),
                LOOKUP => state.lookups_done(),
                Token(t) if t >= FIRST_SESSION_TOKEN => {
                    state.session_event(t - FIRST_SESSION_TOKEN, ev)
                }
                t => state.conn_event(t, ev),
            }
        }
        // The handlers set their flag before waking the pipe, so the flags only need a
        // look (and the pipe a read) when the pipe fired.
        let sig = if signalled {
            signals.take()
        } else {
            Default::default()
        };
        if sig.exit {
            state.exit = true;
        }
        if sig.reload {
            host.reload(state);
        }
        if sig.stats {
            host.stats(state);
        }
        state.pass_end();
        if busy && !spin_max.is_zero() {
            state.spin_until = spin.pass_end(Instant::now(), spin_max);
        }
    }
    state.shutdown();
    Ok(())
}

impl State {
    /// How long `poll` may wait: until the next deadline, or not at all when work is queued
    /// or the adaptive `busy_poll` window since the last events is still open.
    fn poll_timeout(&self) -> Option<Duration> {
        let spinning = self.spin_until.is_some_and(|t| self.clock.now < t);
        if spinning || !self.again.is_empty() || (self.accept_more && self.can_accept()) {
            return Some(Duration::ZERO);
        }
        let sessions = self.sessions.iter().map(|(_, s)| s.next_timer()).min();
        let next = [self.timers.next(), self.accept_retry, sessions]
            .into_iter()
            .flatten()
            .min();
        // Housekeeping tick as the original (`timeout` seconds) at most.
        let tick = self.connect_timeout();
        Some(next.map_or(tick, |t| {
            t.saturating_duration_since(Instant::now()).min(tick)
        }))
    }

    fn can_accept(&self) -> bool {
        self.listener.is_some()
            && !self.accept_paused
            && self.accept_retry.is_none()
            && self.live_conns() < self.settings.conn_max
            && self.pending_connects < self.settings.pending_max.max(1)
    }

    /// One readiness event on a connection socket.
    fn conn_event(&mut self, t: Token, ev: &Event) {
        let Some((key, side)) = untoken(t) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closed) {
            return;
        }
        let connecting = conn.connecting();
        let Some(half) = conn.half(side) else {
            return;
        };
        // A hang-up or error is treated as readiness: the read or write that follows
        // returns the data still queued, then EOF or the error (pen.md §13.2 #1).
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            half.readable = true;
        }
        if ev.is_read_closed() || ev.is_error() {
            half.read_closed = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            half.writable = true;
        }
        match (connecting, side) {
            (true, Side::Backend) => self.connect_event(key, ev.is_writable()),
            (true, Side::Client) => {
                // The client is watched during the connect (§13.2 #33): a reset or full
                // hang-up ends the attempt; data and a half-close just wait.
                if ev.is_error() || (ev.is_read_closed() && ev.is_write_closed()) {
                    self.close(key);
                }
            }
            (false, _) => self.pump(key),
        }
    }

    /// Relays what is ready on connection `key` and books the bytes.
    pub fn pump(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(conn.phase, Phase::Relaying) {
            return;
        }
        // The server as log records name it, only when a record may be written.
        let server = match self.log.active() {
            true => conn
                .server
                .and_then(|s| self.servers.get(s))
                .and_then(|s| s.endpoint.as_ref()),
            false => None,
        };
        let peer = conn.peer;
        let client = PeerIp(&peer);
        let mut relay = Relay {
            buf: &mut self.buf,
            scratch: &mut self.scratch,
            pool: &mut self.pool,
            fastclose: self.settings.fastclose,
            log: server.map(|s| (&mut self.log, s)),
            client: &client,
            now: self.clock.wall,
            dump: common::diag::enabled(3).then_some(self.settings.ascii),
            up: 0,
            down: 0,
        };
        let outcome = relay.pump(conn);
        let (up, down) = (relay.up, relay.down);
        if up + down > 0 {
            conn.last_active = self.clock.now;
            conn.up_bytes += up;
            conn.down_bytes += down;
            if let Some(c) = self.clients.owned(conn.client_slot as usize, &conn.peer) {
                c.crx += up;
                c.csx += down;
            }
            if let Some(srv) = conn.server.and_then(|s| self.servers.get_mut(s)) {
                srv.sx += up;
                srv.rx += down;
            }
        }
        match outcome {
            Outcome::Wait => {}
            Outcome::Again => self.again.push((key, conn.id)),
            Outcome::Close => self.close(key),
        }
    }

    /// Work done once per pass: queued pumps, accepts, deadlines, freeing closed slots.
    fn pass_end(&mut self) {
        for (key, id) in std::mem::take(&mut self.again) {
            if self.conns.get(key).is_some_and(|c| c.id == id) {
                self.pump(key);
            }
        }
        let now = self.clock.now;
        while let Some((key, id, what)) = self.timers.pop_due(now) {
            self.deadline(key, id, what, now);
        }
        let conns = &self.conns;
        self.timers.compact(conns.len(), |k, id| {
            conns.get(k).is_some_and(|c| c.id == id)
        });
        self.session_timers(now);
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            self.accept_more = true;
        }
        self.resume_listener();
        if self.accept_more && self.can_accept() {
            self.accept();
        }
        for key in self.closed.drain(..) {
            self.conns.try_remove(key);
        }
        self.resume_listener();
        self.log.flush();
    }

    /// Accepts up to `multi_accept` connections (pen.md §5.1). When the table is full the
    /// listener is taken out of the poll so clients wait in the kernel backlog.
    fn accept(&mut self) {
        for _ in 0..self.settings.multi_accept.max(1) {
            if self.live_conns() >= self.settings.conn_max {
                self.pause_listener();
                return;
            }
            if self.pending_connects >= self.settings.pending_max.max(1) {
                return; // resumed when a connect completes (accept_more stays set)
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.new_conn(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.accept_more = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if out_of_resources(&e) => {
                    // Leave the client in the backlog, keep serving the others.
                    self.exhausted("can't accept", &e);
                    return;
                }
                Err(e) => {
                    // Any other error (ECONNABORTED and the like): try again shortly
                    // instead of spinning on a listener that keeps failing.
                    common::debug!(1, "accept: {e}");
                    self.accept_retry = Some(self.clock.now + Duration::from_millis(10));
                    return;
                }
            }
        }
    }

    /// Out of descriptors or memory, on accept or on a backend socket: stop accepting and
    /// retry shortly. Logged once per episode, and at most once a minute: a pen hovering at
    /// its descriptor limit starts a new episode with every connection that closes.
    pub fn exhausted(&mut self, what: &str, e: &io::Error) {
        if !self.emfile {
            self.emfile = true;
            let now = self.clock.now;
            let quiet = self
                .emfile_logged
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60));
            if !quiet {
                common::diag!(
                    "{what}: {e}; {} connections open, retrying",
                    self.live_conns()
                );
                self.emfile_logged = Some(now);
                self.emfile_said = true;
            }
        }
        self.accept_retry = Some(self.clock.now + Duration::from_millis(100));
    }

    /// A backend socket opened: an out-of-descriptors episode, if any, is over.
    pub fn resources_back(&mut self) {
        if std::mem::take(&mut self.emfile) && std::mem::take(&mut self.emfile_said) {
            common::diag!("accepting connections again");
        }
    }

    fn pause_listener(&mut self) {
        if self.accept_paused {
            return;
        }
        if let (Some(reg), Some(l)) = (&self.registry, self.listener.as_mut()) {
            let _ = reg.deregister(l);
            self.accept_paused = true;
        }
    }

    /// Watches the listener again once the table has room (with a little hysteresis so a
    /// full table does not flap), and accepts what waited.
    fn resume_listener(&mut self) {
        if !self.accept_paused {
            return;
        }
        let max = self.settings.conn_max;
        let slack = (max / 64).max(1);
        if self.live_conns() + slack > max {
            return;
        }
        if let (Some(reg), Some(l)) = (&self.registry, self.listener.as_mut()) {
            if reg.register(l, LISTEN, Interest::READABLE).is_ok() {
                self.accept_paused = false;
                self.accept_more = true;
            }
        }
    }

    /// TERM or `exit`: close every connection and flush the log.
    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        for key in self.closed.drain(..) {
            self.conns.try_remove(key);
        }
        self.log.flush();
    }
}

/// Errors that mean pen itself is short of descriptors or memory (not a server failure).
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

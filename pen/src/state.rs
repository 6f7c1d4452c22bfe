//! Pen's state: the settings the command language changes, and the tables the event loop
//! works on. Built from parts that own their methods (servers, clients, ACLs, log,
//! connections); no globals.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::Registry;
use slab::Slab;

use crate::acl::Acls;
use crate::bufpool::{BufPool, CHUNK, READ_CHUNK};
use crate::clients::{Clients, Peer};
use crate::command::Fastclose;
use crate::conn::Conn;
use crate::control::Session;
use crate::listener::Listener;
use crate::logsink::LogSink;
use crate::lookup::Lookups;
use crate::select::Policy;
use crate::servers::Servers;

/// Everything the command language can set (control.md §3), with the original's defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// Seconds a failed server is avoided (`-b`, default 30).
    pub blacklist: i64,
    /// Connect timeout in seconds (`-t`, default 3).
    pub timeout: i64,
    /// Client tracking time in seconds, 0 = never expire (`-T`).
    pub tracking: i64,
    /// Close connections idle this many seconds, 0 = never.
    pub idle_timeout: i64,
    pub pending_max: usize,
    pub multi_accept: usize,
    /// The longest adaptive window of polling without sleeping after events
    /// (`busy_poll`, µs), 0 = off.
    pub busy_poll: u32,
    pub conn_max: usize,
    pub http: bool,
    pub ascii: bool,
    pub tcp_nodelay: bool,
    pub keepalive: bool,
    pub transparent: bool,
    pub abort_on_error: bool,
    pub fastclose: Fastclose,
    pub client_acl: u8,
    pub control_acl: u8,
    pub tarpit_acl: i64,
    /// Local address for backend connects (`source`), as given and resolved.
    pub source: Option<(String, SocketAddr)>,
    /// The listen spec (`listen`, or positional 0).
    pub listen: Option<String>,
    /// The log target to open at startup (opened after chroot/setuid).
    pub log_spec: Option<String>,
    pub web_stats: Option<PathBuf>,
    /// The control spec (`-C`) as given.
    pub control: Option<String>,
    /// The Prometheus listener spec (`prometheus ADDR`), off by default.
    pub prometheus: Option<String>,
    /// `-X`: the `exit` command is allowed.
    pub exit_enabled: bool,
    /// Listen backlog (`-q`).
    pub backlog: i32,
    /// The `-F` file, re-read on HUP.
    pub config: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policy: Policy::default(),
            blacklist: 30,
            timeout: 3,
            tracking: 0,
            idle_timeout: 0,
            pending_max: 100,
            multi_accept: 100,
            busy_poll: 0,
            conn_max: 500,
            http: false,
            ascii: false,
            tcp_nodelay: false,
            keepalive: false,
            transparent: false,
            abort_on_error: false,
            fastclose: Fastclose::Off,
            client_acl: 0,
            control_acl: 0,
            tarpit_acl: -1,
            source: None,
            listen: None,
            log_spec: None,
            web_stats: None,
            control: None,
            prometheus: None,
            exit_enabled: false,
            backlog: 500,
            config: None,
        }
    }
}

/// How pen was started: what `write` puts in its restart comment (control.md §5.4) and
/// the process options that have no command.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub foreground: bool,
    pub udp: bool,
    pub pidfile: Option<PathBuf>,
    pub user: Option<String>,
    pub chroot: Option<PathBuf>,
    /// `-e` and `-B` specs as written.
    pub emergency: Option<String>,
    pub abuse: Option<String>,
    /// Wall-clock second pen started.
    pub started: i64,
}

/// The loop's notion of time, read once per pass.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    /// Wall-clock seconds since the epoch (blacklist, tracking, stats, log lines).
    pub wall: i64,
}

impl Clock {
    pub fn read() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Clock {
            now: Instant::now(),
            wall,
        }
    }
}

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    /// The connect timeout of a connect in flight.
    Connect,
    /// The idle timeout of a relaying connection (re-armed lazily from `last_active`).
    Idle,
}

/// Connection deadlines (connect timeout, idle timeout) in one heap. Entries are checked
/// against the connection when they fire, so stale ones cost a pop; the heap is compacted
/// when stale entries outnumber live connections, so closed connections cannot pile up.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64, Deadline)>>,
}

impl Timers {
    /// Wakes connection `key` (with id `id`) at `when` for `what`.
    pub fn add(&mut self, when: Instant, key: usize, id: u64, what: Deadline) {
        self.heap.push(Reverse((when, key, id, what)));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, ..))| *t)
    }

    /// Pops one entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64, Deadline)> {
        match self.heap.peek() {
            Some(Reverse((t, ..))) if *t <= now => self
                .heap
                .pop()
                .map(|Reverse((_, key, id, what))| (key, id, what)),
            _ => None,
        }
    }

    /// Drops the entries of connections that are gone once they outnumber the live ones
    /// (amortised O(1) per entry).
    pub fn compact(&mut self, live: usize, alive: impl Fn(usize, u64) -> bool) {
        if self.heap.len() <= 2 * live + 1024 {
            return;
        }
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse((_, k, id, _))| alive(*k, *id))
            .collect();
    }

    /// Number of entries (for tests and stats).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no deadline is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Counters for the stats views.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub accepted: u64,
    pub denied: u64,
    pub refused: u64,
    pub closed: u64,
}

/// Pen: settings, tables and the sockets the loop owns.
pub struct State {
    pub settings: Settings,
    pub launch: Launch,
    pub servers: Servers,
    pub clients: Clients,
    pub acls: Acls,
    pub log: LogSink,
    pub conns: Slab<Conn>,
    pub pool: BufPool,
    pub timers: Timers,
    pub clock: Clock,
    pub totals: Totals,
    pub listener: Option<Listener>,
    /// The control socket (`-C`) and the Prometheus listener, with their open sessions.
    pub control: Option<Listener>,
    pub metrics: Option<Listener>,
    pub sessions: Slab<Session>,
    /// The id of the next session.
    pub next_session_id: u64,
    /// The worker for name lookups and file reads, started when first needed.
    pub lookups: Option<Lookups>,
    /// Set once the loop runs: from then on `listen` rebinds at once.
    pub registry: Option<Registry>,
    /// Connects in flight (`pending_max`).
    pub pending_connects: usize,
    /// The listener was deregistered because the connection table is full.
    pub accept_paused: bool,
    /// More connections may be waiting in the backlog (edge-triggered: we must come back).
    pub accept_more: bool,
    /// Accepting failed for lack of descriptors; retry at this time.
    pub accept_retry: Option<Instant>,
    /// With `busy_poll`: poll without sleeping until then (set by [`crate::spin::Spin`]).
    pub spin_until: Option<Instant>,
    /// Accepting failed for lack of resources (an episode is under way).
    pub emfile: bool,
    /// When the shortage was last logged, and whether this episode's was.
    pub emfile_logged: Option<Instant>,
    pub emfile_said: bool,
    /// Connections (key, id) to pump again without waiting for an event.
    pub again: Vec<(usize, u64)>,
    /// Connections closed in this pass, freed after it.
    pub closed: Vec<usize>,
    /// `exit` or TERM: leave the loop.
    pub exit: bool,
    pub next_id: u64,
    /// The loop's read buffer and the HTTP rewrite scratch buffer.
    pub buf: Box<[u8]>,
    pub scratch: Vec<u8>,
}

impl State {
    pub fn new() -> State {
        State {
            settings: Settings::default(),
            launch: Launch::default(),
            servers: Servers::new(),
            clients: Clients::new(2048),
            acls: Acls::new(),
            log: LogSink::default(),
            conns: Slab::new(),
            pool: BufPool::default(),
            timers: Timers::default(),
            clock: Clock::read(),
            totals: Totals::default(),
            listener: None,
            control: None,
            metrics: None,
            sessions: Slab::new(),
            next_session_id: 0,
            lookups: None,
            registry: None,
            pending_connects: 0,
            accept_paused: false,
            accept_more: false,
            accept_retry: None,
            spin_until: None,
            emfile: false,
            emfile_logged: None,
            emfile_said: false,
            again: Vec::new(),
            closed: Vec::new(),
            exit: false,
            next_id: 0,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            scratch: Vec::with_capacity(CHUNK + 256),
        }
    }

    /// Live connections (closed ones wait for the end of the pass to leave the slab).
    pub fn live_conns(&self) -> usize {
        self.conns.len() - self.closed.len()
    }

    /// The connect timeout as a Duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout.max(1) as u64)
    }
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

/// A client's address as it appears in headers and log records: the IP with no port, or
/// `unix` for a Unix-socket client.
pub struct PeerIp<'a>(pub &'a Peer);

impl fmt::Display for PeerIp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Peer::Ip(a) => write!(f, "{}", a.ip()),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_in_order_and_compact_stale_entries() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.add(now + Duration::from_secs(2), 1, 10, Deadline::Idle);
        t.add(now + Duration::from_secs(1), 2, 20, Deadline::Connect);
        assert_eq!(t.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(
            t.pop_due(now + Duration::from_secs(1)),
            Some((2, 20, Deadline::Connect))
        );
        // Thousands of entries of closed connections are dropped once they dominate.
        for k in 0..5000 {
            t.add(
                now + Duration::from_secs(60),
                100 + k,
                1000 + k as u64,
                Deadline::Idle,
            );
        }
        t.compact(1, |k, id| k == 1 && id == 10);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.pop_due(now + Duration::from_secs(2)),
            Some((1, 10, Deadline::Idle))
        );
        assert!(t.is_empty());
    }
}

//! The executor: applies one [`Command`] to pen's [`State`] and returns the reply text,
//! byte-compatible with the original where the command is valid (control.md §3), and one
//! error line where it is not.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Command, Flag, IntSetting, ServerSet};
use crate::listener::Listener;
use crate::servers::{Server, ServerRef};
use crate::state::State;
use common::addr::{resolve, split_host_port, Target};
use common::net::Endpoint;

/// How deep `include` may nest (the original did not detect recursion).
pub(crate) const MAX_INCLUDE_DEPTH: usize = 16;

/// Highest server slot count `server N` may create (the original had no bound).
const SERVERS_MAX: usize = 65536;

/// A command that could not be applied; the text is the one-line reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError(pub String);

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Reply = Result<String, ExecError>;

fn err<T>(msg: impl Into<String>) -> Result<T, ExecError> {
    Err(ExecError(msg.into()))
}

impl State {
    /// Applies `cmd` and returns its reply (possibly empty).
    pub fn apply(&mut self, cmd: Command) -> Reply {
        self.apply_at(cmd, 0)
    }

    fn apply_at(&mut self, cmd: Command, depth: usize) -> Reply {
        let s = &mut self.settings;
        Ok(match cmd {
            Command::Nothing | Command::IgnoredNo => String::new(),
            Command::Int(which, v) => return self.int_setting(which, v),
            Command::Flag(f, on) => return self.flag(f, on),
            Command::TcpFastclose(fc) => {
                s.fastclose = fc;
                String::new()
            }
            Command::EventBackend(b) => {
                if b == super::EventBackend::Kqueue {
                    return err("You don't have kqueue");
                }
                String::new() // mio chooses epoll; the others are accepted for compatibility
            }
            Command::Listen(None) => line(s.listen.as_deref().unwrap_or("")),
            Command::Listen(Some(spec)) => return self.listen(spec),
            Command::Log(None) => self.log.name().map(line).unwrap_or_default(),
            Command::Log(Some(target)) => {
                if self.registry.is_some() {
                    self.log.open(&target).map_err(|e| ExecError(e.0))?;
                }
                s.log_spec = Some(target.clone());
                line(&target)
            }
            Command::NoLog => {
                s.log_spec = None;
                self.log.stop();
                String::new()
            }
            Command::WebStats(None) => s
                .web_stats
                .as_ref()
                .map(|p| line(&p.display().to_string()))
                .unwrap_or_default(),
            Command::WebStats(Some(f)) => {
                s.web_stats = Some(PathBuf::from(&f));
                line(&f)
            }
            Command::Prometheus(None) => s.prometheus.as_deref().map(line).unwrap_or_default(),
            Command::Prometheus(Some(spec)) => {
                if self.registry.is_some() {
                    // A reload repeating the startup line changes nothing.
                    if s.prometheus.as_deref() == Some(spec.as_str()) {
                        return Ok(line(&spec));
                    }
                    return err("prometheus: set the metrics listener at startup (-O or -F)");
                }
                common::addr::ListenSpec::parse(&spec, common::addr::Proto::Tcp)
                    .map_err(|e| ExecError(format!("prometheus: {e}")))?;
                s.prometheus = Some(spec.clone());
                line(&spec)
            }
            Command::NoPrometheus => {
                s.prometheus = None;
                self.metrics = None; // closing the socket also leaves the poll set
                String::new()
            }
            Command::NoWebStats => {
                s.web_stats = None;
                String::new()
            }
            Command::Source(addr) => match source_addr(&addr) {
                Some(a) => {
                    s.source = Some((addr, a));
                    String::new()
                }
                None => {
                    s.source = None;
                    return err(format!("unable to set source address to '{addr}'"));
                }
            },
            Command::NoSource => {
                s.source = None;
                String::new()
            }
            Command::Server(n, sets) => return self.server(n, sets),
            Command::Acl(n, rule) => {
                self.acls
                    .add(n, rule)
                    .map_err(|e| ExecError(e.to_string()))?;
                String::new()
            }
            Command::NoAcl(n) => {
                self.acls.clear(n);
                String::new()
            }
            Command::Servers => self.servers_reply(),
            Command::Mode => self.mode_reply(),
            Command::Recent(secs) => self.recent_reply(secs.unwrap_or(300)),
            Command::Connection(n) => return self.connection_reply(n.unwrap_or(0)),
            Command::Socket(fd) => self.socket_reply(fd.unwrap_or(0)),
            Command::Close(n) => return self.close_cmd(n.unwrap_or(0)),
            Command::Pid => line(&std::process::id().to_string()),
            Command::Control => s.control.as_deref().map(line).unwrap_or_default(),
            Command::Status => return Ok(self.status()),
            Command::Stats => crate::stats::counters(self),
            Command::Write(file) => {
                let Some(path) = file.map(PathBuf::from).or_else(|| s.config.clone()) else {
                    return err("write: no file given and no -F file to overwrite");
                };
                super::write::write_config(self, &path)
                    .map_err(|e| ExecError(format!("write {}: {e}", path.display())))?;
                String::new()
            }
            Command::Include(file) => return self.include(&file, depth),
            Command::Exit => {
                if !s.exit_enabled {
                    return Ok("Exit is not enabled; restart with -X flag\n".into());
                }
                self.exit = true;
                String::new()
            }
            Command::Unsupported(name) => {
                return err(format!("{name}: not supported by this pen"));
            }
        })
    }

    fn int_setting(&mut self, which: IntSetting, v: Option<i64>) -> Reply {
        let s = &mut self.settings;
        let reply = match which {
            IntSetting::Blacklist => {
                if let Some(v) = v {
                    s.blacklist = v;
                }
                s.blacklist
            }
            IntSetting::Timeout => {
                if let Some(v) = v {
                    if v < 1 {
                        return err(format!("timeout {v} out of range (at least 1)"));
                    }
                    s.timeout = v;
                }
                s.timeout
            }
            IntSetting::Tracking => {
                if let Some(v) = v {
                    if v < 0 {
                        return err(format!("tracking {v} out of range (0 or more)"));
                    }
                    s.tracking = v;
                }
                s.tracking
            }
            IntSetting::Debug => {
                if let Some(v) = v {
                    common::diag::set_level(v.clamp(0, u32::MAX as i64) as u32);
                }
                common::diag::level() as i64
            }
            IntSetting::ClientsMax => {
                if let Some(v) = v.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0) {
                    if self.registry.is_none() {
                        // Before the loop runs (`-c`, startup `-O`/`-F`) no client exists
                        // yet and this is the table size, smaller too: `-c 2` evicts after
                        // two clients (pen.md §2.1, §4.2).
                        self.clients = crate::clients::Clients::new(v);
                    } else {
                        self.clients.grow(v); // grows only at run time (control.md §3.1)
                    }
                }
                self.clients.capacity() as i64
            }
            IntSetting::ConnMax => {
                if let Some(v) = v.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0) {
                    if self.registry.is_none() {
                        // Before the loop runs (`-x`, startup `-O`/`-F`) this is the table
                        // size, smaller too: `-x 1` serves one connection (pen.md §5.1).
                        s.conn_max = v;
                    } else {
                        // Grow only at run time, as the original; slots are allocated on
                        // demand, so this is safe (unlike the original: §13.2 #18).
                        s.conn_max = s.conn_max.max(v);
                    }
                }
                s.conn_max as i64
            }
            IntSetting::ClientAcl => {
                if let Some(v) = v {
                    s.client_acl = acl_index(v)?;
                }
                s.client_acl as i64
            }
            IntSetting::ControlAcl => {
                if let Some(v) = v {
                    s.control_acl = acl_index(v)?;
                }
                s.control_acl as i64
            }
            IntSetting::TarpitAcl => {
                if let Some(v) = v {
                    s.tarpit_acl = v;
                }
                return Ok(format!("tarpit_acl = {}", s.tarpit_acl));
            }
            IntSetting::IdleTimeout => {
                if let Some(v) = v {
                    let was = s.idle_timeout;
                    s.idle_timeout = v.max(0);
                    // Switched on, or shortened: existing connections get the new deadline
                    // (a longer one is picked up when their current deadline fires).
                    if s.idle_timeout > 0 && (was == 0 || s.idle_timeout < was) {
                        self.arm_idle_timers();
                    }
                }
                return Ok(format!(
                    "Idle timeout: {} seconds\n",
                    self.settings.idle_timeout
                ));
            }
            IntSetting::Idlers => {
                if let Some(v) = v.filter(|&v| v != 0) {
                    return err(format!(
                        "idlers {v}: idle backend connections are not supported"
                    ));
                }
                return Ok("Idlers: 0/0\n".into());
            }
            IntSetting::PendingMax => {
                if let Some(v) = v {
                    s.pending_max = v.max(1) as usize;
                }
                return Ok(String::new());
            }
            IntSetting::MultiAccept => {
                if let Some(v) = v {
                    s.multi_accept = v.max(1) as usize;
                }
                s.multi_accept as i64
            }
            IntSetting::BusyPoll => {
                if let Some(v) = v.and_then(|v| u32::try_from(v).ok()) {
                    s.busy_poll = v;
                }
                s.busy_poll as i64
            }
        };
        Ok(format!("{reply}\n"))
    }

    fn flag(&mut self, f: Flag, on: bool) -> Reply {
        let s = &mut self.settings;
        match f {
            Flag::Hash => s.policy.hash = on,
            Flag::Roundrobin => s.policy.roundrobin = on,
            Flag::Stubborn => s.policy.stubborn = on,
            Flag::Weight => s.policy.weight = on,
            Flag::Prio => s.policy.prio = on,
            Flag::Http => s.http = on,
            Flag::Ascii => s.ascii = on,
            Flag::TcpNodelay => s.tcp_nodelay = on,
            Flag::Keepalive => s.keepalive = on,
            Flag::Transparent => s.transparent = on,
            Flag::AbortOnError => s.abort_on_error = on,
            Flag::Peek | Flag::Dummy => {
                if on {
                    let name = if f == Flag::Peek { "peek" } else { "dummy" };
                    return err(format!("{name}: not supported by this pen"));
                }
            }
        }
        Ok(String::new())
    }

    /// `listen SPEC`: before the loop runs, remember it; afterwards bind the new listener
    /// first and swap only on success, so a bad spec never leaves pen deaf (§13.2 #31).
    fn listen(&mut self, spec: String) -> Reply {
        // Re-reading a config on HUP must not rebind an unchanged listener.
        let same =
            self.settings.listen.as_deref() == Some(spec.as_str()) && self.listener.is_some();
        if let (Some(reg), false) = (&self.registry, same) {
            let mut new = Listener::bind(&spec, self.settings.backlog, self.settings.tcp_nodelay)
                .map_err(ExecError)?;
            if let Some(mut old) = self.listener.take() {
                let _ = reg.deregister(&mut old);
            }
            if !self.accept_paused {
                reg.register(&mut new, crate::event_loop::LISTEN, mio::Interest::READABLE)
                    .map_err(|e| ExecError(format!("can't watch listener: {e}")))?;
            }
            self.listener = Some(new);
            self.accept_more = true;
        }
        self.settings.listen = Some(spec.clone());
        Ok(line(&spec))
    }

    fn server(&mut self, n: usize, sets: Vec<ServerSet>) -> Reply {
        // N ≥ count grows the table to N + 1 with empty slots (control.md §3.3), which are
        // never selected (pen.md §13.2 #12). This is how `-O "server 1 acl 2"` works before
        // the positional servers exist (pen.md §2.2). The bound keeps a typo from
        // allocating gigabytes.
        if n >= SERVERS_MAX {
            return err(format!("server {n} out of range (0..{})", SERVERS_MAX - 1));
        }
        if n >= self.servers.list.len() {
            self.servers.list.resize(n + 1, Server::new(None));
        }
        let now = self.clock.wall;
        let blacklist = self.settings.blacklist;
        for set in sets {
            let srv = &mut self.servers.list[n];
            match set {
                ServerSet::Address(a) => {
                    let port = srv.endpoint.as_ref().map_or(0, |e| match e {
                        Endpoint::Inet(sa) => sa.port(),
                        Endpoint::Unix(_) => 0,
                    });
                    srv.endpoint = Some(server_address(&a, port)?);
                }
                ServerSet::Port(p) => {
                    if let Some(Endpoint::Inet(sa)) = srv.endpoint.as_mut() {
                        sa.set_port(p);
                    }
                }
                ServerSet::Max(m) => srv.max = m,
                ServerSet::Hard(h) => srv.hard = h,
                ServerSet::Weight(w) => srv.weight = w,
                ServerSet::Prio(p) => srv.prio = p,
                ServerSet::Acl(a) => srv.acl = a,
                ServerSet::Blacklist(t) => {
                    self.servers
                        .set_blacklist(ServerRef::Index(n), t, now, blacklist);
                }
            }
        }
        Ok(String::new())
    }

    fn include(&mut self, file: &str, depth: usize) -> Reply {
        if depth >= MAX_INCLUDE_DEPTH {
            return err(format!("include {file}: nested too deeply"));
        }
        let cmds = super::file::read_file(std::path::Path::new(file))
            .map_err(|e| ExecError(e.to_string()))?;
        let mut out = String::new();
        for (lineno, cmd) in cmds {
            match self.apply_at(cmd, depth + 1) {
                Ok(r) => out.push_str(&r),
                Err(e) => return err(format!("{file}:{lineno}: {e}")),
            }
        }
        // The original sent included commands' replies to stdout, not to the client.
        print!("{out}");
        Ok(String::new())
    }

    /// `status` (control.md §3.5): regenerate the web stats file and send it back. Without
    /// a web stats file the reply is the original's.
    pub fn status(&self) -> String {
        let Some(path) = self.settings.web_stats.clone() else {
            return "Unable to create webstats\n".into();
        };
        if crate::stats::write_web_stats(self, &path).is_err() {
            return "Unable to create webstats\n".into();
        }
        std::fs::read_to_string(&path).unwrap_or_else(|_| "Can't read webstats\n".into())
    }

    /// `servers` (control.md §3.3).
    fn servers_reply(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.servers.list.iter().enumerate() {
            let addr = crate::stats::server_addr(s);
            let _ = writeln!(
                out,
                "{i} addr {addr} port {} conn {} max {} hard {} weight {} prio {} sx {} rx {}",
                s.port(),
                s.conns,
                s.max,
                s.hard,
                s.weight,
                s.prio,
                s.sx,
                s.rx
            );
        }
        out
    }

    /// `mode` (control.md §3.2): five flags, always in this order.
    fn mode_reply(&self) -> String {
        let p = &self.settings.policy;
        let word = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                format!("no {name}")
            }
        };
        format!(
            "{} {} {} {} {}\n",
            word(p.hash, "hash"),
            word(p.roundrobin, "roundrobin"),
            word(p.stubborn, "stubborn"),
            word(p.weight, "weight"),
            word(p.prio, "prio")
        )
    }

    /// `recent [S]` (control.md §3.4).
    fn recent_reply(&self, secs: i64) -> String {
        let since = self.clock.wall - secs;
        let mut out = String::new();
        for (_, c) in self.clients.used().filter(|(_, c)| c.last >= since) {
            let addr = crate::state::PeerIp(&c.addr);
            let _ = writeln!(
                out,
                "{addr} connects {} sx {} rx {}",
                c.connects, c.csx, c.crx
            );
        }
        out
    }

    /// `connection N` (control.md §3.4).
    fn connection_reply(&self, n: i64) -> Reply {
        let Some(k) = usize::try_from(n)
            .ok()
            .filter(|&k| k < self.settings.conn_max)
        else {
            return Ok(format!("Connection {n} out of range\n"));
        };
        let (state, down, up, client, server, pend) = match self.conns.get(k) {
            Some(c) => {
                let r = crate::stats::ConnRow::of(c);
                let pend = (r.pend_down + r.pend_up) as i64;
                (
                    c.state_bits(),
                    r.down,
                    r.up,
                    i64::from(c.client_slot),
                    r.server,
                    pend,
                )
            }
            None => (0, -1, -1, -1, -1, 0),
        };
        Ok(format!(
            "Connection {n}:\nstate = {state}\ndownfd = {down}, upfd = {up}\n\
             client = {client}, server = {server}\npend = {pend}\n"
        ))
    }

    /// `socket FD` (control.md §3.4).
    fn socket_reply(&self, fd: i64) -> String {
        let owner = self
            .conns
            .iter()
            .find(|(_, c)| {
                i64::from(c.client.stream.raw_fd()) == fd
                    || c.backend
                        .as_ref()
                        .is_some_and(|b| i64::from(b.stream.raw_fd()) == fd)
            })
            .map_or(-1, |(k, _)| k as i64);
        format!("Socket {fd} belongs to connection {owner}\n")
    }

    /// `close N`: only a live connection is closed (the original corrupted its counters
    /// closing an unused slot).
    fn close_cmd(&mut self, n: i64) -> Reply {
        let Some(k) = usize::try_from(n)
            .ok()
            .filter(|&k| k < self.settings.conn_max)
        else {
            return Ok(format!("Connection {n} out of range\n"));
        };
        if self.conns.contains(k) {
            self.close(k);
            Ok(format!("Forcibly closing connection {n}\n"))
        } else {
            err(format!("connection {n} is not in use"))
        }
    }

    /// After `idle_timeout` is switched on at run time, give every connection a deadline.
    fn arm_idle_timers(&mut self) {
        let idle = std::time::Duration::from_secs(self.settings.idle_timeout as u64);
        for (k, c) in self.conns.iter() {
            self.timers
                .add(c.last_active + idle, k, c.id, crate::state::Deadline::Idle);
        }
    }
}

fn line(s: &str) -> String {
    format!("{s}\n")
}

fn acl_index(v: i64) -> Result<u8, ExecError> {
    u8::try_from(v)
        .ok()
        .filter(|&n| n <= 9)
        .ok_or_else(|| ExecError(format!("acl {v} out of range (0..9)")))
}

/// `server N address A`: a path, or a host resolved now, keeping the port.
fn server_address(a: &str, port: u16) -> Result<Endpoint, ExecError> {
    let target = match address_host(a) {
        None => Target::Unix(PathBuf::from(a)),
        Some(host) => Target::Inet {
            host: host.to_string(),
            port,
        },
    };
    target
        .endpoint()
        .map_err(|e| ExecError(format!("server address: {e}")))
}

/// The host of `server N address A` (`[v6]` unbracketed), or `None` for a Unix path.
pub fn address_host(a: &str) -> Option<&str> {
    if a.contains('/') {
        return None;
    }
    Some(
        a.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(a),
    )
}

/// `source ADDR`: a literal or a host name (port ignored).
fn source_addr(a: &str) -> Option<SocketAddr> {
    resolve(Some(source_host(a)), 0).ok()
}

/// The host of `source ADDR`.
pub fn source_host(a: &str) -> &str {
    match split_host_port(a) {
        Ok((Some(h), _)) if a.starts_with('[') => h,
        _ => a,
    }
}

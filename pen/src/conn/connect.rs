//! Connection setup: accepting a client, choosing its server (selection is pure code in
//! `select.rs`), opening the backend connect, and failing over when it is refused or
//! times out (pen.md §4.5–4.7). Every failure path closes only this connection.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use socket2::{Domain, SockAddr, Socket, Type};

use super::http::XffState;
use super::stream::Stream;
use super::{token, Conn, Connecting, Half, Phase, Side};
use crate::clients::Peer;
use crate::select::{self, Failover, Selection};
use crate::servers::ServerRef;
use crate::state::{Deadline, State};
use common::net::Endpoint;

/// How the original names a server in diagnostics.
fn server_name(s: ServerRef) -> String {
    match s {
        ServerRef::Index(i) => i.to_string(),
        ServerRef::Emergency => "emergency".into(),
        ServerRef::Abuse => "abuse".into(),
    }
}

impl State {
    /// Takes on a newly accepted client: look it up, select a server, start connecting.
    pub fn new_conn(&mut self, stream: Stream, peer: Peer) {
        let now = self.clock.wall;
        let s = &self.settings;
        let slot = self.clients.lookup(&peer, now, s.tracking);
        let sel = select::initial(
            &mut self.servers,
            self.clients.get(slot),
            &peer,
            &s.policy,
            &self.acls,
            s.client_acl,
            now,
            s.blacklist,
        );
        self.totals.accepted += 1;
        if sel == Selection::Denied {
            // Denied by client_acl with no abuse server: close (never the emergency
            // server, which was the original's ACL bypass: pen.md §13.2 #8).
            common::debug!(1, "client {peer} denied by acl {}", s.client_acl);
            self.totals.denied += 1;
            return;
        }
        self.next_id += 1;
        let conn = Conn {
            id: self.next_id,
            client: Half::new(stream),
            backend: None,
            phase: Phase::Relaying,
            peer,
            client_slot: slot as u32,
            server: None,
            last_active: self.clock.now,
            // HTTP is followed when headers are to be inserted (-H) or requests logged: a
            // record per request head, however the reads split it (logging.md §1.2 fix).
            xff: (self.settings.http || self.log.active())
                .then(|| Box::new(XffState::new(self.settings.http))),
            up_bytes: 0,
            down_bytes: 0,
        };
        let key = self.conns.insert(conn);
        if let Some(reg) = &self.registry {
            let rw = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = reg.register(
                &mut self.conns[key].client.stream,
                token(key, Side::Client),
                rw,
            ) {
                common::diag!("can't watch client socket: {e}");
                self.close(key);
                return;
            }
        }
        self.try_servers(key, Failover::new(sel));
    }

    /// Tries the candidates of `fo` in turn until one connect is under way; closes the
    /// connection when none is left.
    pub fn try_servers(&mut self, key: usize, mut fo: Failover) {
        let now = self.clock.wall;
        loop {
            let Some(s) = fo.next(&self.servers, self.settings.policy.stubborn) else {
                self.totals.refused += 1;
                self.close(key);
                return;
            };
            let conn = &self.conns[key];
            let client = self.clients.get(conn.client_slot as usize);
            let bl = self.settings.blacklist;
            if let Err(why) =
                select::admit(&self.servers, s, client, &conn.peer, &self.acls, now, bl)
            {
                common::debug!(2, "server {} not admitted: {why:?}", server_name(s));
                continue;
            }
            let peer = conn.peer;
            let Some(ep) = self.servers.get(s).and_then(|srv| srv.endpoint.as_ref()) else {
                continue;
            };
            match self.open_backend(ep, &peer) {
                Ok(stream) => {
                    self.resources_back();
                    self.start_connect(key, s, stream, fo);
                    return;
                }
                Err(e) if crate::event_loop::out_of_resources(&e) => {
                    // Our own shortage, not the server's fault: blacklisting it would refuse
                    // every client for the blacklist time. Refuse this one and pause
                    // accepting, as when accept() itself runs out.
                    self.exhausted("can't open a server socket", &e);
                    self.totals.refused += 1;
                    self.close(key);
                    return;
                }
                Err(e) => {
                    common::diag!(
                        "blacklisting server {} because connect error {}",
                        server_name(s),
                        e.raw_os_error().unwrap_or(0)
                    );
                    self.servers.fail(s, now);
                }
            }
        }
    }

    fn start_connect(&mut self, key: usize, s: ServerRef, stream: Stream, fo: Failover) {
        let deadline = self.clock.now + self.connect_timeout();
        let conn = &mut self.conns[key];
        let mut half = Half::new(stream);
        half.readable = false;
        half.writable = false;
        if let Some(reg) = &self.registry {
            let rw = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = reg.register(&mut half.stream, token(key, Side::Backend), rw) {
                common::diag!("can't watch server socket: {e}");
                self.close(key);
                return;
            }
        }
        conn.backend = Some(half);
        conn.server = Some(s);
        conn.phase = Phase::Connecting(Box::new(Connecting {
            deadline,
            failover: fo,
        }));
        let id = conn.id;
        // The remembered server changes now, even if this connect fails later
        // (pen.md §4.5 step 7): failover stickiness depends on it.
        if let Some(c) = self.clients.owned(conn.client_slot as usize, &conn.peer) {
            c.server = Some(s);
        }
        self.servers.current = Some(s);
        if let Some(srv) = self.servers.get_mut(s) {
            srv.conns += 1;
        }
        self.pending_connects += 1;
        self.timers.add(deadline, key, id, Deadline::Connect);
    }

    /// A connect in flight had an event: confirm it (`take_error`, then `peer_addr`), or
    /// fail over.
    ///
    /// On Linux a connecting TCP socket turns writable exactly when the handshake ends, so
    /// a writable event with no socket error is a completed connect; any other event is
    /// checked with `peer_addr` (mio's advice), which costs a syscall.
    pub fn connect_event(&mut self, key: usize, writable: bool) {
        let Some(backend) = self.conns[key].backend.as_ref() else {
            return;
        };
        let result = match backend.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) if writable => Ok(true),
            Ok(None) => backend.stream.connected(),
        };
        match result {
            Ok(false) => {} // spurious wake-up: still connecting
            Ok(true) => self.established(key),
            Err(e) => {
                common::diag!("Connect failed: {e}");
                self.connect_failed(key, "connect failure");
            }
        }
    }

    fn established(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Relaying;
        conn.last_active = self.clock.now;
        if let Some(b) = conn.backend.as_mut() {
            // Writable: that is what confirmed the connect. Readable only if an event said
            // so (it was recorded before this call): no speculative read.
            b.writable = true;
        }
        let id = conn.id;
        if let Some(s) = conn.server {
            if let Some(srv) = self.servers.get_mut(s) {
                srv.status = 0;
            }
        }
        self.pending_connects = self.pending_connects.saturating_sub(1);
        if self.settings.idle_timeout > 0 {
            let idle = std::time::Duration::from_secs(self.settings.idle_timeout as u64);
            self.timers
                .add(self.clock.now + idle, key, id, Deadline::Idle);
        }
        self.pump(key);
    }

    /// The connect of `key` failed or timed out: blacklist the server, drop the socket and
    /// try the next candidate.
    pub fn connect_failed(&mut self, key: usize, why: &str) {
        let now = self.clock.wall;
        let conn = &mut self.conns[key];
        let Phase::Connecting(c) = std::mem::replace(&mut conn.phase, Phase::Relaying) else {
            return;
        };
        if let Some(mut b) = conn.backend.take() {
            if let Some(reg) = &self.registry {
                let _ = reg.deregister(&mut b.stream);
            }
        }
        self.pending_connects = self.pending_connects.saturating_sub(1);
        if let Some(s) = conn.server.take() {
            common::diag!("blacklisting server {} because of {why}", server_name(s));
            self.servers.fail(s, now);
            if let Some(srv) = self.servers.get_mut(s) {
                srv.conns = srv.conns.saturating_sub(1);
            }
        }
        self.try_servers(key, c.failover);
    }

    /// Opens a non-blocking connect to `ep` with the configured socket options.
    fn open_backend(&self, ep: &Endpoint, peer: &Peer) -> io::Result<Stream> {
        let addr = match ep {
            Endpoint::Unix(path) => return mio::net::UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Inet(a) => *a,
        };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
        if self.settings.tcp_nodelay {
            sock.set_tcp_nodelay(true)?;
        }
        if self.settings.keepalive {
            sock.set_keepalive(true)?;
        }
        self.bind_source(&sock, addr, peer);
        match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(Stream::Tcp(mio::net::TcpStream::from_std(sock.into())))
    }

    /// `source` (port 0: the original left it uninitialised, §13.2 #20) or `transparent`
    /// (bind to the client's own address; needs privileges and policy routing; IPv6 too,
    /// where the original did IPv4 only). Errors are logged and the connect proceeds from
    /// the default address, as the original.
    fn bind_source(&self, sock: &Socket, to: SocketAddr, peer: &Peer) {
        let from = if let Some((_, src)) = self.settings.source {
            Some(SocketAddr::new(src.ip(), 0))
        } else if self.settings.transparent {
            let set = if to.is_ipv4() {
                sock.set_ip_transparent_v4(true)
            } else {
                sock.set_ip_transparent_v6(true)
            };
            if let Err(e) = set {
                common::debug!(1, "transparent: {e}");
            }
            // An IPv4 client of a dual-stack listener arrives IPv4-mapped.
            peer.ip().map(|ip| SocketAddr::new(ip.to_canonical(), 0))
        } else {
            None
        };
        if let Some(from) = from.filter(|f| f.is_ipv4() == to.is_ipv4()) {
            if let Err(e) = sock.bind(&SockAddr::from(from)) {
                common::debug!(1, "can't bind to source {from}: {e}");
            }
        }
    }

    /// Closes connection `key`: both sockets, its server count, its buffers. The slot is
    /// freed after the current batch of events, so stale events find it closed.
    pub fn close(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closed) {
            return;
        }
        if conn.connecting() {
            self.pending_connects = self.pending_connects.saturating_sub(1);
        }
        conn.phase = Phase::Closed;
        if let Some(s) = conn.server.take() {
            if let Some(srv) = self.servers.get_mut(s) {
                srv.conns = srv.conns.saturating_sub(1);
            }
        }
        // No epoll_ctl(DEL): closing a descriptor removes it from the epoll set (none is
        // ever duplicated), and that saves two syscalls per connection.
        for p in [
            conn.client.pending.take(),
            conn.backend.as_mut().and_then(|b| b.pending.take()),
        ]
        .into_iter()
        .flatten()
        {
            self.pool.give(p);
        }
        // Close the backend socket now; the client socket goes with the slot at the end of
        // the pass, so a stale event in this batch cannot reach a new connection.
        conn.backend = None;
        self.totals.closed += 1;
        self.closed.push(key);
    }

    /// A connection's deadline fired: connect timeout, or idle timeout. An entry that no
    /// longer applies (the connect completed, the connection is gone) is dropped.
    pub fn deadline(&mut self, key: usize, id: u64, what: Deadline, now: Instant) {
        let Some(conn) = self.conns.get(key).filter(|c| c.id == id) else {
            return;
        };
        match (&conn.phase, what) {
            (Phase::Closed, _) | (Phase::Connecting(_), Deadline::Idle) => {}
            (Phase::Relaying, Deadline::Connect) => {}
            (Phase::Connecting(c), Deadline::Connect) => {
                if c.deadline <= now {
                    self.connect_failed(key, "connect timeout");
                }
            }
            (Phase::Relaying, Deadline::Idle) => {
                let idle = self.settings.idle_timeout;
                if idle > 0 {
                    let due = conn.last_active + std::time::Duration::from_secs(idle as u64);
                    if due <= now {
                        common::debug!(1, "closing connection {key}: idle for {idle} s");
                        self.close(key);
                    } else {
                        self.timers.add(due, key, id, Deadline::Idle);
                    }
                }
            }
        }
    }
}

//! The backend server table (pen.md §3): regular servers by index, the optional
//! emergency (`-e`) and abuse (`-B`) servers, their limits and counters, blacklisting
//! (pen.md §4.1) and the round-robin cursor. Selection itself lives in `select.rs`.

use std::net::SocketAddr;

use common::net::Endpoint;

/// Which server a connection or client refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerRef {
    /// A regular server, by its index in [`Servers::list`].
    Index(usize),
    /// The emergency server (`-e`), tried only after failover (pen.md §4.8).
    Emergency,
    /// The abuse server (`-B`), for clients denied by the client ACL (pen.md §4.9).
    Abuse,
}

/// One backend server (pen.md §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Where to connect; `None` is an empty slot (e.g. `server 4 port 80` with no address),
    /// which is never selected (fixes pen.md §13.2 #12).
    pub endpoint: Option<Endpoint>,
    /// The ACL list that screens this server's users (`server N acl A`, default 0).
    pub acl: u8,
    /// Connections to this server that are pending or established. The engine counts a
    /// connect when it starts and uncounts it exactly once when it ends or fails (fixes
    /// pen.md §13.2 #11, where pending connects were excluded and failures uncounted).
    pub conns: u32,
    /// Soft limit (`maxc`, 0 = none): see pen.md §4.5 check 4.
    pub max: u32,
    /// Hard limit for sticky clients (pen.md §4.5 check 4).
    pub hard: u32,
    /// Weight for `-W` (0 = never chosen by the weight algorithm).
    pub weight: u32,
    /// Priority for `prio` (lowest wins).
    pub prio: i32,
    /// Wall-clock second of the last failure, 0 = healthy (shown raw in stats).
    pub status: i64,
    /// Bytes from clients forwarded to the server.
    pub sx: u64,
    /// Bytes read from the server.
    pub rx: u64,
}

impl Server {
    /// A healthy server with no limits, weight 0, prio 0 and ACL 0, as the original's
    /// defaults.
    pub fn new(endpoint: Option<Endpoint>) -> Server {
        Server {
            endpoint,
            acl: 0,
            conns: 0,
            max: 0,
            hard: 0,
            weight: 0,
            prio: 0,
            status: 0,
            sx: 0,
            rx: 0,
        }
    }

    /// The port as the original prints it: the inet port, 1 for a Unix socket, 0 for an
    /// empty slot.
    pub fn port(&self) -> u16 {
        match &self.endpoint {
            Some(Endpoint::Inet(a)) => a.port(),
            Some(Endpoint::Unix(_)) => 1,
            None => 0,
        }
    }

    /// Whether this slot holds something to connect to. An empty slot, port 0 (pen.md §4.5
    /// check 2, "No port for you!") and the IPv4 address 0.0.0.0 (the original's
    /// `unused_slot`, pen.md §4.1) are not, and this now holds for slot 0 and for gap
    /// slots too (fixes pen.md §13.2 #12).
    pub fn usable(&self) -> bool {
        match &self.endpoint {
            Some(Endpoint::Inet(SocketAddr::V4(a))) => a.port() != 0 && !a.ip().is_unspecified(),
            Some(Endpoint::Inet(a)) => a.port() != 0,
            Some(Endpoint::Unix(_)) => true,
            None => false,
        }
    }

    /// pen.md §4.1: `now − status < blacklist_time`. A status of 0 means healthy, whatever
    /// the clock says (so small test clocks behave like the real one).
    pub fn blacklisted(&self, now: i64, blacklist_time: i64) -> bool {
        self.status != 0 && now.saturating_sub(self.status) < blacklist_time
    }
}

/// All servers, plus the round-robin cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Servers {
    /// Regular servers by index; gap slots are `Server::new(None)`.
    pub list: Vec<Server>,
    /// The emergency server (`-e`), if configured.
    pub emergency: Option<Server>,
    /// The abuse server (`-B`), if configured.
    pub abuse: Option<Server>,
    /// The server assigned most recently; shown in stats, never used for selection
    /// (pen.md §3).
    pub current: Option<ServerRef>,
    /// Round-robin cursor: starts at 0, so the first client goes to server 1 (pen.md §4.4).
    cursor: usize,
}

impl Servers {
    /// No servers; the cursor at 0.
    pub fn new() -> Servers {
        Servers::default()
    }

    /// The server `r` refers to, if it exists.
    pub fn get(&self, r: ServerRef) -> Option<&Server> {
        match r {
            ServerRef::Index(i) => self.list.get(i),
            ServerRef::Emergency => self.emergency.as_ref(),
            ServerRef::Abuse => self.abuse.as_ref(),
        }
    }

    /// The server `r` refers to, mutably, if it exists.
    pub fn get_mut(&mut self, r: ServerRef) -> Option<&mut Server> {
        match r {
            ServerRef::Index(i) => self.list.get_mut(i),
            ServerRef::Emergency => self.emergency.as_mut(),
            ServerRef::Abuse => self.abuse.as_mut(),
        }
    }

    /// Whether `r` is blacklisted now (pen.md §4.1); a missing server is not.
    pub fn blacklisted(&self, r: ServerRef, now: i64, blacklist_time: i64) -> bool {
        self.get(r)
            .is_some_and(|s| s.blacklisted(now, blacklist_time))
    }

    /// Whether round robin, prio and weight may pick `r`: it is usable and not blacklisted
    /// (pen.md §4.1 `unavailable`, with the empty-slot fix of §13.2 #12).
    pub fn available(&self, r: ServerRef, now: i64, blacklist_time: i64) -> bool {
        self.get(r)
            .is_some_and(|s| s.usable() && !s.blacklisted(now, blacklist_time))
    }

    /// Blacklists `r` after a failure: `status = now` (pen.md §4.1). With
    /// `blacklist_time ≤ 0` this has no effect on selection, as in the original.
    pub fn fail(&mut self, r: ServerRef, now: i64) {
        if let Some(s) = self.get_mut(r) {
            s.status = now;
        }
    }

    /// `server N blacklist T` (pen.md §4.1): `status = now + T − blacklist_time`, so the
    /// server stays blacklisted for T seconds; T = 0 clears it.
    pub fn set_blacklist(&mut self, r: ServerRef, seconds: i64, now: i64, blacklist_time: i64) {
        if let Some(s) = self.get_mut(r) {
            s.status = if seconds == 0 {
                0
            } else {
                now.saturating_add(seconds).saturating_sub(blacklist_time)
            };
        }
    }

    /// The round-robin cursor (the index round robin picked last, 0 at start).
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Moves the round-robin cursor; only round robin itself does this (pen.md §4.4).
    pub(crate) fn set_cursor(&mut self, index: usize) {
        self.cursor = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const NOW: i64 = 1_700_000_000;

    fn inet(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }

    fn three() -> Servers {
        let mut s = Servers::new();
        for a in ["127.0.0.1:81", "127.0.0.1:82", "127.0.0.1:83"] {
            s.list.push(Server::new(inet(a)));
        }
        s
    }

    #[test]
    fn defaults() {
        let s = Server::new(inet("10.0.0.1:80"));
        assert_eq!(
            (s.acl, s.conns, s.max, s.hard, s.weight, s.prio),
            (0, 0, 0, 0, 0, 0)
        );
        assert_eq!((s.status, s.sx, s.rx), (0, 0, 0));
        assert_eq!(Servers::new().cursor(), 0);
        assert_eq!(Servers::new(), Servers::default());
    }

    #[test]
    fn ports_as_printed() {
        assert_eq!(Server::new(inet("10.0.0.1:8080")).port(), 8080);
        assert_eq!(Server::new(inet("[::1]:443")).port(), 443);
        assert_eq!(
            Server::new(Some(Endpoint::Unix(PathBuf::from("/tmp/s")))).port(),
            1
        );
        assert_eq!(Server::new(None).port(), 0);
    }

    #[test]
    fn usable_slots() {
        assert!(Server::new(inet("10.0.0.1:80")).usable());
        assert!(Server::new(inet("[::1]:80")).usable());
        assert!(Server::new(Some(Endpoint::Unix(PathBuf::from("/tmp/s")))).usable());
        assert!(!Server::new(None).usable());
        assert!(!Server::new(inet("10.0.0.1:0")).usable());
        assert!(!Server::new(inet("[::1]:0")).usable());
        // The original's unused_slot (0.0.0.0), now for every slot (§13.2 #12).
        assert!(!Server::new(inet("0.0.0.0:80")).usable());
    }

    #[test]
    fn get_by_ref() {
        let mut s = three();
        assert_eq!(s.get(ServerRef::Index(2)).map(Server::port), Some(83));
        assert!(s.get(ServerRef::Index(3)).is_none());
        assert!(s.get(ServerRef::Emergency).is_none());
        assert!(s.get(ServerRef::Abuse).is_none());
        s.emergency = Some(Server::new(inet("127.0.0.1:90")));
        s.abuse = Some(Server::new(inet("127.0.0.1:91")));
        assert_eq!(s.get(ServerRef::Emergency).map(Server::port), Some(90));
        assert_eq!(s.get(ServerRef::Abuse).map(Server::port), Some(91));
        s.get_mut(ServerRef::Abuse).unwrap().conns = 4;
        assert_eq!(s.abuse.as_ref().unwrap().conns, 4);
        assert!(s.get_mut(ServerRef::Index(7)).is_none());
    }

    #[test]
    fn failure_blacklists_for_blacklist_time() {
        // pen.md §4.1: blacklisted ⇔ now − status < blacklist_time, one-second steps.
        let mut s = three();
        let r = ServerRef::Index(1);
        assert!(!s.blacklisted(r, NOW, 30));
        s.fail(r, NOW);
        assert_eq!(s.list[1].status, NOW);
        assert!(s.blacklisted(r, NOW, 30));
        assert!(s.blacklisted(r, NOW + 29, 30));
        assert!(!s.blacklisted(r, NOW + 30, 30));
        assert!(!s.available(r, NOW + 1, 30));
        assert!(s.available(r, NOW + 30, 30));
        // Other servers untouched; unknown refs are ignored.
        assert!(!s.blacklisted(ServerRef::Index(0), NOW, 30));
        s.fail(ServerRef::Index(9), NOW);
        s.fail(ServerRef::Emergency, NOW);
        assert!(!s.blacklisted(ServerRef::Index(9), NOW, 30));
    }

    #[test]
    fn zero_blacklist_time_never_blacklists_failures() {
        let mut s = three();
        s.fail(ServerRef::Index(0), NOW);
        assert!(!s.blacklisted(ServerRef::Index(0), NOW, 0));
        assert!(!s.blacklisted(ServerRef::Index(0), NOW, -5));
    }

    #[test]
    fn healthy_status_is_never_blacklisted() {
        // status 0 is "healthy", even with a tiny clock value.
        let s = three();
        assert!(!s.blacklisted(ServerRef::Index(0), 5, 30));
        assert!(s.available(ServerRef::Index(0), 5, 30));
    }

    #[test]
    fn manual_blacklist() {
        // `server N blacklist T`: status = now + T − blacklist_time; T = 0 clears.
        let mut s = three();
        let r = ServerRef::Index(2);
        s.set_blacklist(r, 100, NOW, 30);
        assert_eq!(s.list[2].status, NOW + 70);
        assert!(s.blacklisted(r, NOW + 99, 30));
        assert!(!s.blacklisted(r, NOW + 100, 30));
        s.set_blacklist(r, 0, NOW, 30);
        assert_eq!(s.list[2].status, 0);
        assert!(!s.blacklisted(r, NOW, 30));
        // Works with blacklist_time 0 too (pen.md §4.1).
        s.set_blacklist(r, 10, NOW, 0);
        assert!(s.blacklisted(r, NOW + 9, 0));
        assert!(!s.blacklisted(r, NOW + 10, 0));
    }

    #[test]
    fn empty_slot_is_unavailable() {
        let mut s = three();
        s.list[1] = Server::new(None);
        assert!(!s.available(ServerRef::Index(1), NOW, 30));
        assert!(!s.available(ServerRef::Index(3), NOW, 30));
        assert!(!s.available(ServerRef::Emergency, NOW, 30));
    }
}

//! Server selection (pen.md §4.3–§4.9): the initial pick for a connection, the admission
//! checks for one candidate, and the failover order. Pure: no sockets, no clock reads
//! (`now` is passed in), so every rule is unit-tested here.

use std::fmt;
use std::net::SocketAddr;

use crate::acl::Acls;
use crate::clients::{Client, Peer};
use crate::servers::{ServerRef, Servers};

/// The selection flags (`-h`, `-r`, `-s`, `-W`, `prio`); independent bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `-h`: hash the client address.
    pub hash: bool,
    /// `-r`: no stickiness, and the hash takes in the client port.
    pub roundrobin: bool,
    /// `-s`: no failover.
    pub stubborn: bool,
    /// `-W`: least weighted load.
    pub weight: bool,
    /// `prio`: lowest priority value.
    pub prio: bool,
}

/// The result of initial selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Try this server first.
    Server(ServerRef),
    /// The client ACL denied the client and there is no abuse server: close at once.
    Denied,
    /// No server qualifies; failover goes straight to the emergency server.
    NoServer,
}

/// pen.md §4.3: the first server to try for a new connection from `client` (already
/// looked up, so `client.server` is the remembered server) at `peer`.
///
/// A client denied by `client_acl` goes to the abuse server if one is configured, else is
/// [`Selection::Denied`]; the original sent it to the emergency server instead, an ACL
/// bypass (fixes pen.md §13.2 #8). Otherwise, without `-r`, a client remembered on a
/// regular server sticks to it with no availability check. Then the first of prio, weight,
/// hash and round robin that is enabled decides (pen.md §4.4). Only round robin moves the
/// cursor.
#[allow(clippy::too_many_arguments)] // the engine's call site names each input
pub fn initial(
    servers: &mut Servers,
    client: &Client,
    peer: &Peer,
    policy: &Policy,
    acls: &Acls,
    client_acl: u8,
    now: i64,
    blacklist_time: i64,
) -> Selection {
    if !acls.permits(client_acl, peer) {
        return if servers.abuse.is_some() {
            Selection::Server(ServerRef::Abuse)
        } else {
            Selection::Denied
        };
    }
    let n = servers.list.len();
    if !policy.roundrobin {
        if let Some(ServerRef::Index(i)) = client.server {
            if i < n {
                return Selection::Server(ServerRef::Index(i));
            }
        }
    }
    let pick = if policy.prio {
        best_prio(servers, now, blacklist_time)
    } else if policy.weight {
        least_weighted_load(servers, now, blacklist_time)
    } else if policy.hash {
        hash(peer, policy.roundrobin, n)
    } else {
        round_robin(servers, now, blacklist_time)
    };
    pick.map_or(Selection::NoServer, |i| {
        Selection::Server(ServerRef::Index(i))
    })
}

/// Round robin (pen.md §4.4): walk from the cursor + 1 upward, wrapping, with the cursor's
/// own slot checked last; the first available server wins and becomes the cursor. The
/// cursor starts at 0, so the first client goes to server 1. `None` (cursor unmoved) when
/// nothing is available. Idlers use this too.
pub fn round_robin(servers: &mut Servers, now: i64, blacklist_time: i64) -> Option<usize> {
    let n = servers.list.len();
    let cursor = servers.cursor();
    let pick = (1..=n)
        .map(|k| (cursor + k) % n)
        .find(|&i| servers.available(ServerRef::Index(i), now, blacklist_time))?;
    servers.set_cursor(pick);
    Some(pick)
}

/// The hash pick (pen.md §4.4): IPv4 takes the four address bytes as a little-endian
/// integer (the original's host order on x86/ARM), XORed under `-r` with the port in
/// host order of its network bytes (byte-swapped), modulo `n`; IPv6 takes its last
/// address byte modulo `n` and never the port; a Unix peer gives 0. `n` counts gap slots,
/// and the result is not checked for availability. `None` only when `n` is 0.
pub fn hash(peer: &Peer, roundrobin: bool, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let h = match peer {
        Peer::Ip(SocketAddr::V4(a)) => {
            let mut h = u32::from_le_bytes(a.ip().octets());
            if roundrobin {
                h ^= u32::from(a.port().swap_bytes());
            }
            h as usize
        }
        Peer::Ip(SocketAddr::V6(a)) => usize::from(a.ip().octets()[15]),
        Peer::Unix => 0,
    };
    Some(h % n)
}

/// Prio (pen.md §4.4): the available server with the lowest `prio`, ties to the lowest
/// index; load, `max` and weight are ignored.
pub fn best_prio(servers: &Servers, now: i64, blacklist_time: i64) -> Option<usize> {
    (0..servers.list.len())
        .filter(|&i| servers.available(ServerRef::Index(i), now, blacklist_time))
        .min_by_key(|&i| (servers.list[i].prio, i))
}

/// Weight (pen.md §4.4): among available servers with weight ≠ 0, the lowest
/// `256·conns / weight` (integer division), ties to the lowest index. `None` when no server
/// has a weight, so `-W` without weights refuses every connection, as the original
/// (pen.md §13.2 #15 asks only for a startup warning, which is the engine's).
pub fn least_weighted_load(servers: &Servers, now: i64, blacklist_time: i64) -> Option<usize> {
    (0..servers.list.len())
        .filter(|&i| servers.list[i].weight != 0)
        .filter(|&i| servers.available(ServerRef::Index(i), now, blacklist_time))
        .min_by_key(|&i| {
            let s = &servers.list[i];
            (256 * u64::from(s.conns) / u64::from(s.weight), i)
        })
}

/// Why a candidate server was not admitted (pen.md §4.5 checks 1–5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such server, an empty slot, or port 0 ("No port for you!").
    Empty,
    /// Failed less than `blacklist_time` seconds ago.
    Blacklisted,
    /// At its soft limit for a non-sticky client, or at its hard limit.
    Full,
    /// The server's ACL denies the client.
    Acl,
}

/// Lower-case reasons for debug messages.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Empty => "no such server or no port",
            Refusal::Blacklisted => "blacklisted",
            Refusal::Full => "full",
            Refusal::Acl => "denied by its acl",
        })
    }
}

/// pen.md §4.5 checks 1–5, in order, for connecting `client` at `peer` to `r`:
/// the slot is empty or has no port; `r` is blacklisted; `max ≠ 0 ∧ conns ≥ max` and the
/// client is not sticky to `r` (`client.server == Some(r)`) or `conns ≥ hard`; the
/// server's ACL denies the client (the emergency and abuse servers use ACL 0, pen.md §4.8).
/// Nothing is changed: blacklisting on a failed connect is the engine's.
pub fn admit(
    servers: &Servers,
    r: ServerRef,
    client: &Client,
    peer: &Peer,
    acls: &Acls,
    now: i64,
    blacklist_time: i64,
) -> Result<(), Refusal> {
    let Some(s) = servers.get(r) else {
        return Err(Refusal::Empty);
    };
    if !s.usable() {
        return Err(Refusal::Empty);
    }
    if s.blacklisted(now, blacklist_time) {
        return Err(Refusal::Blacklisted);
    }
    let sticky = client.server == Some(r);
    if s.max != 0 && s.conns >= s.max && (!sticky || s.conns >= s.hard) {
        return Err(Refusal::Full);
    }
    let acl = match r {
        ServerRef::Index(_) => s.acl,
        ServerRef::Emergency | ServerRef::Abuse => 0,
    };
    if !acls.permits(acl, peer) {
        return Err(Refusal::Acl);
    }
    Ok(())
}

/// The candidates to try for one connection, in order (pen.md §4.7).
///
/// First the initial pick. After each failure (refused by [`admit`], or a connect that
/// failed or timed out) the next index after the one that just failed, wrapping, ending
/// with the initial server retried once; then the emergency server if configured; then
/// nothing. There is no failover under `-s`, nor away from the abuse or emergency server,
/// nor a scan with a single regular server. A [`Selection::NoServer`] goes straight to
/// the emergency server (unless stubborn: the original closed then too, so stubborn mode
/// never reaches it, pen.md §4.8).
///
/// At most n + 2 candidates are ever yielded, n being the number of regular servers, so
/// a connection makes one pass and gives up; the original cycled forever with `-b 0`
/// and every server down (fixes pen.md §13.2 #9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    stage: Stage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing yielded yet.
    Start(Selection),
    /// The initial pick was yielded; the next call means it failed.
    Tried(ServerRef),
    /// Scanning regular servers: `last` was yielded and failed; `steps` so far.
    Scan {
        initial: usize,
        last: usize,
        steps: usize,
    },
    /// The emergency server is next.
    Emergency,
    Done,
}

impl Failover {
    /// The candidates following an initial selection.
    pub fn new(first: Selection) -> Failover {
        Failover {
            stage: Stage::Start(first),
        }
    }

    /// The next candidate, or `None` when the connection should be closed. Every call
    /// after the first means the previous candidate failed.
    pub fn next(&mut self, servers: &Servers, stubborn: bool) -> Option<ServerRef> {
        let n = servers.list.len();
        loop {
            match self.stage {
                Stage::Start(Selection::Server(r)) => {
                    self.stage = Stage::Tried(r);
                    return Some(r);
                }
                Stage::Start(Selection::Denied) | Stage::Done => {
                    self.stage = Stage::Done;
                    return None;
                }
                Stage::Start(Selection::NoServer) => {
                    self.stage = if stubborn {
                        Stage::Done
                    } else {
                        Stage::Emergency
                    };
                }
                Stage::Tried(r) => {
                    self.stage = match r {
                        _ if stubborn => Stage::Done,
                        ServerRef::Abuse | ServerRef::Emergency => Stage::Done,
                        ServerRef::Index(i) if n > 1 && i < n => Stage::Scan {
                            initial: i,
                            last: i,
                            steps: 0,
                        },
                        ServerRef::Index(_) => Stage::Emergency,
                    };
                }
                Stage::Scan {
                    initial,
                    last,
                    steps,
                } => {
                    if stubborn {
                        self.stage = Stage::Done;
                        continue;
                    }
                    // The list may have changed between calls; never scan past one pass.
                    if n == 0 || initial >= n || steps >= n {
                        self.stage = Stage::Emergency;
                        continue;
                    }
                    let s = (last + 1) % n;
                    let steps = steps + 1;
                    self.stage = if s == initial || steps >= n {
                        Stage::Emergency
                    } else {
                        Stage::Scan {
                            initial,
                            last: s,
                            steps,
                        }
                    };
                    return Some(ServerRef::Index(s));
                }
                Stage::Emergency => {
                    self.stage = Stage::Done;
                    return servers.emergency.as_ref().map(|_| ServerRef::Emergency);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use common::net::Endpoint;

    use crate::acl;
    use crate::clients::Clients;
    use crate::command::AclAction::{Deny, Permit};
    use crate::servers::Server;

    const NOW: i64 = 1_700_000_000;
    const BL: i64 = 30;
    const HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::BROADCAST;
    const A: ServerRef = ServerRef::Index(0);
    const B: ServerRef = ServerRef::Index(1);
    const C: ServerRef = ServerRef::Index(2);
    const E: ServerRef = ServerRef::Emergency;

    fn peer(s: &str) -> Peer {
        Peer::Ip(s.parse().unwrap())
    }

    fn server(port: u16) -> Server {
        Server::new(Some(Endpoint::Inet(SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )))))
    }

    fn servers(n: usize) -> Servers {
        let mut s = Servers::new();
        s.list = (0..n).map(|i| server(8000 + i as u16)).collect();
        s
    }

    fn fresh(addr: &str) -> Client {
        let mut c = Clients::new(1);
        let i = c.lookup(&peer(addr), NOW, 0);
        c.get(i).clone()
    }

    fn pick(s: &mut Servers, client: &Client, addr: &str, policy: Policy) -> Selection {
        initial(s, client, &peer(addr), &policy, &Acls::new(), 0, NOW, BL)
    }

    fn all(fo: &mut Failover, s: &Servers, stubborn: bool) -> Vec<ServerRef> {
        std::iter::from_fn(|| fo.next(s, stubborn)).collect()
    }

    /// A test engine: clients, servers and dead backends, driving selection exactly as
    /// the event loop does (lookup, initial, then admit/connect along the failover order).
    struct Sim {
        servers: Servers,
        clients: Clients,
        acls: Acls,
        policy: Policy,
        client_acl: u8,
        dead: HashSet<ServerRef>,
        now: i64,
        blacklist_time: i64,
    }

    impl Sim {
        fn new(n: usize, policy: Policy) -> Sim {
            Sim {
                servers: servers(n),
                clients: Clients::new(2048),
                acls: Acls::new(),
                policy,
                client_acl: 0,
                dead: HashSet::new(),
                now: NOW,
                blacklist_time: BL,
            }
        }

        /// One connection from `addr`, held open; the server it landed on, or `None` if
        /// the client was closed.
        fn connect(&mut self, addr: &str) -> Option<ServerRef> {
            let p = peer(addr);
            let slot = self.clients.lookup(&p, self.now, 0);
            let client = self.clients.get(slot).clone();
            let sel = initial(
                &mut self.servers,
                &client,
                &p,
                &self.policy,
                &self.acls,
                self.client_acl,
                self.now,
                self.blacklist_time,
            );
            let mut fo = Failover::new(sel);
            let mut tries = 0;
            while let Some(s) = fo.next(&self.servers, self.policy.stubborn) {
                tries += 1;
                assert!(tries <= self.servers.list.len() + 2, "unbounded failover");
                let client = self.clients.get(slot);
                let ok = admit(
                    &self.servers,
                    s,
                    client,
                    &p,
                    &self.acls,
                    self.now,
                    self.blacklist_time,
                );
                if ok.is_err() {
                    continue;
                }
                // The engine counts the connect when it starts (defect #11 fix) and
                // remembers the server even if the connect later fails (pen.md §4.5 step 7).
                self.clients.get_mut(slot).server = Some(s);
                self.servers.current = Some(s);
                if self.dead.contains(&s) {
                    self.servers.fail(s, self.now);
                    continue;
                }
                self.servers.get_mut(s).unwrap().conns += 1;
                return Some(s);
            }
            None
        }

        fn many(&mut self, addrs: &[&str]) -> Vec<Option<ServerRef>> {
            addrs.iter().map(|a| self.connect(a)).collect()
        }
    }

    // ---- §4.4 round robin ----

    #[test]
    fn round_robin_starts_at_server_one() {
        let mut s = servers(3);
        let c = fresh("127.0.0.1:1");
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", Policy::default()),
            Selection::Server(B)
        );
        assert_eq!(s.cursor(), 1);
    }

    #[test]
    fn round_robin_with_r_cycles_b_c_a_b_c() {
        // pen.md §4.11: -r, 5 connections from one IP → B C A B C.
        let mut sim = Sim::new(
            3,
            Policy {
                roundrobin: true,
                ..Policy::default()
            },
        );
        let got = sim.many(&["127.0.0.1:1"; 5]);
        assert_eq!(got, [B, C, A, B, C].map(Some));
    }

    #[test]
    fn round_robin_single_server() {
        let mut s = servers(1);
        assert_eq!(round_robin(&mut s, NOW, BL), Some(0));
        assert_eq!(round_robin(&mut s, NOW, BL), Some(0));
        s.fail(A, NOW);
        assert_eq!(round_robin(&mut s, NOW, BL), None);
    }

    #[test]
    fn round_robin_skips_unavailable_and_checks_cursor_last() {
        let mut s = servers(3);
        s.fail(C, NOW);
        assert_eq!(round_robin(&mut s, NOW, BL), Some(1));
        // Cursor 1: walk 2 (blacklisted), 0, then 1 last.
        assert_eq!(round_robin(&mut s, NOW, BL), Some(0));
        s.fail(A, NOW);
        assert_eq!(round_robin(&mut s, NOW, BL), Some(1));
        assert_eq!(
            round_robin(&mut s, NOW, BL),
            Some(1),
            "the cursor's own slot, last"
        );
        s.fail(B, NOW);
        assert_eq!(round_robin(&mut s, NOW, BL), None);
        assert_eq!(s.cursor(), 1, "no pick, no move");
    }

    #[test]
    fn round_robin_skips_empty_slots() {
        // Defect #12 fix: gap slots (and slot 0 too) are never picked.
        let mut s = servers(3);
        s.list[1] = Server::new(None);
        s.list[0] = Server::new(Some(Endpoint::Inet("0.0.0.0:80".parse().unwrap())));
        assert_eq!(round_robin(&mut s, NOW, BL), Some(2));
        assert_eq!(round_robin(&mut s, NOW, BL), Some(2));
    }

    #[test]
    fn no_servers_is_no_server() {
        let mut s = Servers::new();
        let c = fresh("127.0.0.1:1");
        for policy in [
            Policy::default(),
            Policy {
                hash: true,
                ..Policy::default()
            },
            Policy {
                weight: true,
                ..Policy::default()
            },
            Policy {
                prio: true,
                ..Policy::default()
            },
        ] {
            assert_eq!(pick(&mut s, &c, "127.0.0.1:1", policy), Selection::NoServer);
        }
        assert_eq!(Failover::new(Selection::NoServer).next(&s, false), None);
    }

    #[test]
    fn cursor_moves_only_on_round_robin_picks() {
        // pen.md §4.4: failover, stickiness and hash never move the cursor.
        let mut sim = Sim::new(3, Policy::default());
        sim.dead.insert(B);
        assert_eq!(sim.connect("127.0.0.1:1"), Some(C)); // RR → B (dead) → failover C
        assert_eq!(
            sim.servers.cursor(),
            1,
            "the cursor stays on the server that failed"
        );
        assert_eq!(sim.connect("127.0.0.1:2"), Some(C)); // sticky
        assert_eq!(sim.servers.cursor(), 1);
        assert_eq!(
            sim.connect("127.0.0.2:1"),
            Some(C),
            "next new client: the one after B"
        );
        assert_eq!(sim.servers.cursor(), 2);
        let mut s = servers(3);
        let c = fresh("127.0.0.1:1");
        pick(
            &mut s,
            &c,
            "127.0.0.1:1",
            Policy {
                hash: true,
                ..Policy::default()
            },
        );
        assert_eq!(s.cursor(), 0);
    }

    // ---- §4.4 hash ----

    #[test]
    fn hash_verified_ipv4_values() {
        let cases = [
            ("127.0.0.1", 2),
            ("127.0.0.2", 0),
            ("127.0.0.3", 1),
            ("127.0.0.4", 2),
            ("127.0.0.5", 0),
            ("127.1.0.0", 2),
            ("127.2.0.0", 0),
        ];
        for (ip, want) in cases {
            let p = peer(&format!("{ip}:40000"));
            assert_eq!(hash(&p, false, 3), Some(want), "{ip}");
            // Without -r the port never matters.
            assert_eq!(
                hash(&peer(&format!("{ip}:1")), false, 3),
                Some(want),
                "{ip}"
            );
        }
    }

    #[test]
    fn hash_with_roundrobin_xors_the_swapped_port() {
        // Verified with -h -r: ports 40501/2/3/4/40777 gave 0/1/2/0/1; the client was
        // 127.0.0.1 (.4 and .7 give the same; .2, .3 do not).
        let ports = [40501, 40502, 40503, 40504, 40777];
        let got = ports.map(|p| hash(&peer(&format!("127.0.0.1:{p}")), true, 3).unwrap());
        assert_eq!(got, [0, 1, 2, 0, 1]);
        let other = ports.map(|p| hash(&peer(&format!("127.0.0.2:{p}")), true, 3).unwrap());
        assert_ne!(other, [0, 1, 2, 0, 1]);
        // Swapped: 40501 = 0x9e35 is XORed in as 0x359e.
        let v = u32::from_le_bytes([127, 0, 0, 1]) ^ 0x359e;
        assert_eq!(
            hash(&peer("127.0.0.1:40501"), true, 1000),
            Some(v as usize % 1000)
        );
    }

    #[test]
    fn hash_with_roundrobin_in_initial() {
        let mut s = servers(3);
        let policy = Policy {
            hash: true,
            roundrobin: true,
            ..Policy::default()
        };
        let mut c = fresh("127.0.0.1:40501");
        c.server = Some(C); // -r: no stickiness
        let got: Vec<_> = [40501, 40502, 40503, 40504, 40777]
            .iter()
            .map(|p| pick(&mut s, &c, &format!("127.0.0.1:{p}"), policy))
            .collect();
        assert_eq!(got, [A, B, C, A, B].map(Selection::Server));
    }

    #[test]
    fn hash_ipv6_and_unix() {
        assert_eq!(hash(&peer("[::1]:5"), false, 3), Some(1));
        assert_eq!(hash(&peer("[2001:db8::ff]:5"), true, 7), Some(255 % 7));
        assert_eq!(
            hash(&peer("[::ffff:127.0.0.1]:9"), true, 3),
            Some(1),
            "mapped is IPv6"
        );
        assert_eq!(hash(&Peer::Unix, true, 3), Some(0));
        assert_eq!(hash(&peer("127.0.0.1:1"), false, 0), None);
    }

    #[test]
    fn hash_ignores_availability_and_counts_gaps() {
        let mut s = servers(3);
        s.list[2] = Server::new(None);
        s.fail(A, NOW);
        let policy = Policy {
            hash: true,
            ..Policy::default()
        };
        let c = fresh("127.0.0.1:1");
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", policy),
            Selection::Server(C)
        );
        let c = fresh("127.0.0.2:1");
        assert_eq!(
            pick(&mut s, &c, "127.0.0.2:1", policy),
            Selection::Server(A)
        );
    }

    #[test]
    fn hash_with_middle_server_dead() {
        // pen.md §4.10 (verified): -h, B dead: .2–.9 went to A C C A C C A C.
        let mut sim = Sim::new(
            3,
            Policy {
                hash: true,
                ..Policy::default()
            },
        );
        sim.dead.insert(B);
        let addrs: Vec<String> = (2..=9).map(|d| format!("127.0.0.{d}:1")).collect();
        let got: Vec<_> = addrs.iter().map(|a| sim.connect(a)).collect();
        assert_eq!(got, [A, C, C, A, C, C, A, C].map(Some));
    }

    // ---- §4.4 weight ----

    #[test]
    fn weight_one_and_three() {
        // Verified: weights 1 and 3, 8 held connections from new clients: A B B B A B B B.
        let mut sim = Sim::new(
            2,
            Policy {
                weight: true,
                ..Policy::default()
            },
        );
        sim.servers.list[0].weight = 1;
        sim.servers.list[1].weight = 3;
        let addrs: Vec<String> = (1..=8).map(|d| format!("127.0.0.{d}:1")).collect();
        let got: Vec<_> = addrs.iter().map(|a| sim.connect(a)).collect();
        assert_eq!(got, [A, B, B, B, A, B, B, B].map(Some));
        // Same with -r from one address (no stickiness).
        let policy = Policy {
            weight: true,
            roundrobin: true,
            ..Policy::default()
        };
        let mut sim = Sim::new(2, policy);
        sim.servers.list[0].weight = 1;
        sim.servers.list[1].weight = 3;
        assert_eq!(
            sim.many(&["127.0.0.1:1"; 8]),
            [A, B, B, B, A, B, B, B].map(Some)
        );
    }

    #[test]
    fn weight_skips_zero_weight_and_unavailable() {
        let mut s = servers(3);
        s.list[0].weight = 0;
        s.list[1].weight = 1;
        s.list[2].weight = 1;
        s.list[1].conns = 5;
        s.list[2].conns = 5;
        assert_eq!(
            least_weighted_load(&s, NOW, BL),
            Some(1),
            "ties to the lowest index"
        );
        s.fail(B, NOW);
        assert_eq!(least_weighted_load(&s, NOW, BL), Some(2));
        s.fail(C, NOW);
        assert_eq!(least_weighted_load(&s, NOW, BL), None);
    }

    #[test]
    fn weight_without_weights_refuses() {
        // pen.md §4.4: -W with no weights → NONE; nothing to fail over to, closed.
        let mut sim = Sim::new(
            3,
            Policy {
                weight: true,
                ..Policy::default()
            },
        );
        assert_eq!(sim.connect("127.0.0.1:1"), None);
    }

    #[test]
    fn weight_uses_integer_division() {
        let mut s = servers(2);
        s.list[0].weight = 3;
        s.list[0].conns = 1; // 256/3 = 85
        s.list[1].weight = 256;
        s.list[1].conns = 85; // 85
        assert_eq!(least_weighted_load(&s, NOW, BL), Some(0));
        s.list[1].conns = 84;
        assert_eq!(least_weighted_load(&s, NOW, BL), Some(1));
    }

    // ---- §4.4 prio ----

    #[test]
    fn prio_lowest_then_lowest_index() {
        let mut s = servers(3);
        s.list[0].prio = 5;
        s.list[1].prio = 2;
        s.list[2].prio = 2;
        s.list[1].conns = 100;
        assert_eq!(best_prio(&s, NOW, BL), Some(1));
        s.fail(B, NOW);
        assert_eq!(best_prio(&s, NOW, BL), Some(2));
        s.list[2] = Server::new(None);
        assert_eq!(best_prio(&s, NOW, BL), Some(0));
    }

    #[test]
    fn prio_full_fails_over_in_index_order() {
        // Verified: prio 0 (max 1), 9, 1; while the first is full, new clients go to
        // index 1 (prio 9), not index 2 (prio 1).
        let mut sim = Sim::new(
            3,
            Policy {
                prio: true,
                ..Policy::default()
            },
        );
        sim.servers.list[0].max = 1;
        sim.servers.list[1].prio = 9;
        sim.servers.list[2].prio = 1;
        assert_eq!(
            sim.many(&["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"]),
            [A, B, B].map(Some)
        );
    }

    #[test]
    fn precedence_prio_weight_hash_round_robin() {
        let mut s = servers(3);
        s.list[2].prio = -1;
        s.list[0].weight = 1;
        let c = fresh("127.0.0.2:1"); // hash → 0
        let all = Policy {
            hash: true,
            weight: true,
            prio: true,
            ..Policy::default()
        };
        assert_eq!(pick(&mut s, &c, "127.0.0.2:1", all), Selection::Server(C));
        let no_prio = Policy { prio: false, ..all };
        s.list[0].conns = 1;
        s.list[1].weight = 1;
        assert_eq!(
            pick(&mut s, &c, "127.0.0.2:1", no_prio),
            Selection::Server(B)
        );
        let hash_only = Policy {
            weight: false,
            ..no_prio
        };
        assert_eq!(
            pick(&mut s, &c, "127.0.0.2:1", hash_only),
            Selection::Server(A)
        );
        assert_eq!(s.cursor(), 0);
    }

    // ---- §4.3 stickiness ----

    #[test]
    fn sticky_client_returns_without_availability_check() {
        let mut s = servers(3);
        let mut c = fresh("127.0.0.1:1");
        c.server = Some(C);
        s.fail(C, NOW);
        let policy = Policy {
            prio: true,
            hash: true,
            weight: true,
            ..Policy::default()
        };
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", policy),
            Selection::Server(C)
        );
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", Policy::default()),
            Selection::Server(C)
        );
        assert_eq!(s.cursor(), 0);
    }

    #[test]
    fn stickiness_only_for_regular_in_range_servers() {
        let mut s = servers(3);
        s.emergency = Some(server(9000));
        let mut c = fresh("127.0.0.1:1");
        c.server = Some(E); // remembered emergency: fresh selection (pen.md §4.8)
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", Policy::default()),
            Selection::Server(B)
        );
        c.server = Some(ServerRef::Index(7));
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", Policy::default()),
            Selection::Server(C)
        );
        c.server = Some(A);
        let rr = Policy {
            roundrobin: true,
            ..Policy::default()
        };
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", rr),
            Selection::Server(A),
            "cursor 2 → 0"
        );
        assert_eq!(
            pick(&mut s, &c, "127.0.0.1:1", rr),
            Selection::Server(B),
            "-r: not sticky"
        );
    }

    // ---- §4.9 client ACL ----

    fn deny_all() -> Acls {
        let mut acls = Acls::new();
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        acls.add(0, acl::v4(Deny, any, any)).unwrap();
        acls
    }

    #[test]
    fn client_acl_table() {
        // pen.md §4.9, with the emergency bypass fixed (defect #8).
        let c = fresh("127.0.0.1:1");
        let p = peer("127.0.0.1:1");
        let acls = deny_all();
        let policy = Policy::default();
        let verdict =
            |s: &mut Servers, acls: &Acls, list| initial(s, &c, &p, &policy, acls, list, NOW, BL);
        // permit, any -B/-e → normal selection.
        let mut s = servers(3);
        s.abuse = Some(server(9001));
        s.emergency = Some(server(9000));
        assert_eq!(verdict(&mut s, &Acls::new(), 0), Selection::Server(B));
        // deny, -B set → abuse.
        assert_eq!(
            verdict(&mut s, &acls, 0),
            Selection::Server(ServerRef::Abuse)
        );
        // deny, no -B, -e set → closed (the original used the emergency server).
        s.abuse = None;
        assert_eq!(verdict(&mut s, &acls, 0), Selection::Denied);
        // deny, neither → closed.
        s.emergency = None;
        assert_eq!(verdict(&mut s, &acls, 0), Selection::Denied);
        // Another list screens clients when client_acl says so.
        assert_eq!(verdict(&mut s, &acls, 1), Selection::Server(C));
        assert_eq!(
            verdict(&mut s, &acls, 10),
            Selection::Denied,
            "out of range denies"
        );
        let mut fo = Failover::new(Selection::Denied);
        s.emergency = Some(server(9000));
        assert_eq!(fo.next(&s, false), None);
    }

    #[test]
    fn abuse_server_has_no_failover() {
        let mut s = servers(3);
        s.abuse = Some(server(9001));
        s.emergency = Some(server(9000));
        let mut fo = Failover::new(Selection::Server(ServerRef::Abuse));
        assert_eq!(all(&mut fo, &s, false), [ServerRef::Abuse]);
    }

    #[test]
    fn abuse_server_is_screened_by_acl_zero() {
        // Denied clients sent to -B go through ACL 0 there (pen.md §4.9): with client_acl
        // 0 denying, the abuse server refuses them too and the client is closed.
        let mut sim = Sim::new(2, Policy::default());
        sim.servers.abuse = Some(server(9001));
        sim.acls = deny_all();
        assert_eq!(sim.connect("127.0.0.1:1"), None);
        sim.client_acl = 1;
        sim.acls
            .add(1, acl::v4(Deny, "127.0.0.1".parse().unwrap(), HOST))
            .unwrap();
        sim.acls.clear(0);
        assert_eq!(sim.connect("127.0.0.1:1"), Some(ServerRef::Abuse));
        assert_eq!(sim.connect("127.0.0.2:1"), Some(B));
    }

    // ---- §4.5 admission ----

    #[test]
    fn admit_checks_in_order() {
        let mut s = servers(2);
        let c = fresh("127.0.0.1:1");
        let p = peer("127.0.0.1:1");
        let mut acls = Acls::new();
        let ok = |s: &Servers, acls: &Acls, r| admit(s, r, &c, &p, acls, NOW, BL);
        assert_eq!(ok(&s, &acls, A), Ok(()));
        assert_eq!(ok(&s, &acls, ServerRef::Index(2)), Err(Refusal::Empty));
        assert_eq!(ok(&s, &acls, E), Err(Refusal::Empty));
        assert_eq!(ok(&s, &acls, ServerRef::Abuse), Err(Refusal::Empty));
        // ACL of the server.
        acls.add(3, acl::v4(Deny, "127.0.0.1".parse().unwrap(), HOST))
            .unwrap();
        s.list[0].acl = 3;
        assert_eq!(ok(&s, &acls, A), Err(Refusal::Acl));
        // Full comes before ACL.
        s.list[0].max = 1;
        s.list[0].conns = 1;
        assert_eq!(ok(&s, &acls, A), Err(Refusal::Full));
        // Blacklisted before full.
        s.fail(A, NOW);
        assert_eq!(ok(&s, &acls, A), Err(Refusal::Blacklisted));
        // Empty before everything.
        s.list[0].endpoint = None;
        assert_eq!(ok(&s, &acls, A), Err(Refusal::Empty));
        s.list[1].endpoint = Some(Endpoint::Inet("127.0.0.1:0".parse().unwrap()));
        assert_eq!(ok(&s, &acls, B), Err(Refusal::Empty), "no port for you");
    }

    #[test]
    fn refusal_display() {
        assert_eq!(Refusal::Empty.to_string(), "no such server or no port");
        assert_eq!(Refusal::Blacklisted.to_string(), "blacklisted");
        assert_eq!(Refusal::Full.to_string(), "full");
        assert_eq!(Refusal::Acl.to_string(), "denied by its acl");
    }

    #[test]
    fn admit_soft_and_hard_limits() {
        let mut s = servers(1);
        s.list[0].max = 1;
        s.list[0].hard = 2;
        let p = peer("127.0.0.1:1");
        let mut c = fresh("127.0.0.1:1");
        let acls = Acls::new();
        assert_eq!(admit(&s, A, &c, &p, &acls, NOW, BL), Ok(()));
        s.list[0].conns = 1;
        assert_eq!(
            admit(&s, A, &c, &p, &acls, NOW, BL),
            Err(Refusal::Full),
            "not sticky"
        );
        c.server = Some(A);
        assert_eq!(
            admit(&s, A, &c, &p, &acls, NOW, BL),
            Ok(()),
            "sticky, below hard"
        );
        s.list[0].conns = 2;
        assert_eq!(
            admit(&s, A, &c, &p, &acls, NOW, BL),
            Err(Refusal::Full),
            "at hard"
        );
        s.list[0].max = 0;
        s.list[0].conns = 1000;
        assert_eq!(
            admit(&s, A, &c, &p, &acls, NOW, BL),
            Ok(()),
            "max 0: no limit"
        );
    }

    #[test]
    fn soft_hard_verified_example() {
        // pen.md §4.5: server 0 is :1:2 with prio 0, server 1 prio 1; held connections.
        let mut sim = Sim::new(
            2,
            Policy {
                prio: true,
                ..Policy::default()
            },
        );
        sim.servers.list[0].max = 1;
        sim.servers.list[0].hard = 2;
        sim.servers.list[1].prio = 1;
        let got = sim.many(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.2:1"]);
        assert_eq!(got, [A, A, B, B].map(Some));
        // With :1:0 the 2nd connection from the same client already goes to server 1.
        let mut sim = Sim::new(
            2,
            Policy {
                prio: true,
                ..Policy::default()
            },
        );
        sim.servers.list[0].max = 1;
        sim.servers.list[1].prio = 1;
        assert_eq!(sim.many(&["127.0.0.1:1", "127.0.0.1:2"]), [A, B].map(Some));
    }

    #[test]
    fn emergency_and_abuse_use_acl_zero() {
        let mut s = servers(1);
        let mut e = server(9000);
        e.acl = 5; // ignored
        s.emergency = Some(e);
        let c = fresh("127.0.0.1:1");
        let p = peer("127.0.0.1:1");
        let mut acls = Acls::new();
        acls.add(5, acl::v4(Deny, "127.0.0.1".parse().unwrap(), HOST))
            .unwrap();
        assert_eq!(admit(&s, E, &c, &p, &acls, NOW, BL), Ok(()));
        let acls = deny_all();
        assert_eq!(admit(&s, E, &c, &p, &acls, NOW, BL), Err(Refusal::Acl));
        s.emergency.as_mut().unwrap().max = 1;
        s.emergency.as_mut().unwrap().conns = 1;
        assert_eq!(admit(&s, E, &c, &p, &acls, NOW, BL), Err(Refusal::Full));
    }

    // ---- §4.7 failover order ----

    #[test]
    fn failover_scans_in_index_order_and_retries_initial() {
        let s = servers(4);
        let mut fo = Failover::new(Selection::Server(ServerRef::Index(2)));
        let want = [2, 3, 0, 1, 2].map(ServerRef::Index);
        assert_eq!(all(&mut fo, &s, false), want);
        let mut s = s;
        s.emergency = Some(server(9000));
        let mut fo = Failover::new(Selection::Server(ServerRef::Index(0)));
        let got = all(&mut fo, &s, false);
        assert_eq!(got, [A, B, C, ServerRef::Index(3), A, E]);
        assert_eq!(got.len(), s.list.len() + 2, "bounded: one pass");
    }

    #[test]
    fn failover_single_server_goes_to_emergency() {
        let mut s = servers(1);
        assert_eq!(
            all(&mut Failover::new(Selection::Server(A)), &s, false),
            [A]
        );
        s.emergency = Some(server(9000));
        assert_eq!(
            all(&mut Failover::new(Selection::Server(A)), &s, false),
            [A, E]
        );
    }

    #[test]
    fn failover_no_server_goes_straight_to_emergency() {
        let mut s = servers(3);
        assert_eq!(all(&mut Failover::new(Selection::NoServer), &s, false), []);
        s.emergency = Some(server(9000));
        assert_eq!(all(&mut Failover::new(Selection::NoServer), &s, false), [E]);
        // Stubborn mode never reaches it (pen.md §4.8).
        assert_eq!(all(&mut Failover::new(Selection::NoServer), &s, true), []);
    }

    #[test]
    fn failover_stubborn_and_emergency() {
        let mut s = servers(3);
        s.emergency = Some(server(9000));
        assert_eq!(all(&mut Failover::new(Selection::Server(B)), &s, true), [B]);
        assert_eq!(
            all(&mut Failover::new(Selection::Server(E)), &s, false),
            [E]
        );
    }

    #[test]
    fn failover_survives_a_shrinking_list() {
        let mut s = servers(5);
        let mut fo = Failover::new(Selection::Server(ServerRef::Index(4)));
        assert_eq!(fo.next(&s, false), Some(ServerRef::Index(4)));
        assert_eq!(fo.next(&s, false), Some(ServerRef::Index(0)));
        s.list.truncate(2);
        let rest = all(&mut fo, &s, false);
        assert!(rest.len() <= 2, "{rest:?}");
    }

    #[test]
    fn zero_blacklist_time_everything_down_is_one_pass() {
        // Fixes pen.md §13.2 #9: with -b 0 and every server down the original spun
        // forever; here one pass, then the client is closed.
        let mut sim = Sim::new(3, Policy::default());
        sim.blacklist_time = 0;
        sim.dead.extend([A, B, C]);
        assert_eq!(sim.connect("127.0.0.1:1"), None);
    }

    #[test]
    fn blacklisted_initial_is_skipped_by_admission() {
        let mut sim = Sim::new(
            3,
            Policy {
                hash: true,
                ..Policy::default()
            },
        );
        sim.servers.fail(A, NOW);
        assert_eq!(sim.connect("127.0.0.2:1"), Some(B)); // hash → A (blacklisted) → B
    }

    #[test]
    fn server_acl_skips_server_in_failover() {
        let mut sim = Sim::new(3, Policy::default());
        sim.acls
            .add(
                4,
                acl::v4(
                    Permit,
                    "10.0.0.0".parse().unwrap(),
                    "255.0.0.0".parse().unwrap(),
                ),
            )
            .unwrap();
        sim.servers.list[1].acl = 4;
        assert_eq!(sim.connect("127.0.0.1:1"), Some(C));
        assert_eq!(
            sim.connect("10.0.0.1:1"),
            Some(C),
            "RR cursor moved on to C"
        );
        assert_eq!(sim.connect("10.0.0.2:1"), Some(A));
        assert_eq!(sim.connect("10.0.0.3:1"), Some(B));
    }

    #[test]
    fn empty_slot_picked_by_hash_fails_over() {
        let mut sim = Sim::new(
            3,
            Policy {
                hash: true,
                ..Policy::default()
            },
        );
        sim.servers.list[0] = Server::new(None);
        assert_eq!(sim.connect("127.0.0.2:1"), Some(B));
    }

    // ---- §4.11 end-to-end examples ----

    #[test]
    fn e2e_default_stickiness() {
        // default: .1 ×3, .2 ×3, .3 ×2 → B B B, C C C, A A.
        let mut sim = Sim::new(3, Policy::default());
        let addrs = [
            "127.0.0.1:1",
            "127.0.0.1:2",
            "127.0.0.1:3",
            "127.0.0.2:1",
            "127.0.0.2:2",
        ];
        let got = sim.many(&addrs);
        assert_eq!(got, [B, B, B, C, C].map(Some));
        let got = sim.many(&["127.0.0.2:3", "127.0.0.3:1", "127.0.0.3:2"]);
        assert_eq!(got, [C, A, A].map(Some));
    }

    #[test]
    fn e2e_dead_server_with_blacklist() {
        // default, B dead (refused), -b 3: .1–.5 → C C A C A; after 3.5 s, .6 .7 .8 →
        // C C A (B retried and failed again).
        let mut sim = Sim::new(3, Policy::default());
        sim.blacklist_time = 3;
        sim.dead.insert(B);
        let first: Vec<String> = (1..=5).map(|d| format!("127.0.0.{d}:1")).collect();
        let got: Vec<_> = first.iter().map(|a| sim.connect(a)).collect();
        assert_eq!(got, [C, C, A, C, A].map(Some));
        sim.now += 3; // 3.5 s at one-second granularity: the blacklist has run out
        let got = sim.many(&["127.0.0.6:1", "127.0.0.7:1", "127.0.0.8:1"]);
        assert_eq!(got, [C, C, A].map(Some));
        assert_eq!(sim.servers.list[1].status, sim.now, "B failed again");
    }

    #[test]
    fn e2e_stubborn_with_emergency() {
        // -s -e E, servers A and B, B dead: .1 .2 .3 → closed, A, A (E not used).
        let mut sim = Sim::new(
            2,
            Policy {
                stubborn: true,
                ..Policy::default()
            },
        );
        sim.servers.emergency = Some(server(9000));
        sim.dead.insert(B);
        let got = sim.many(&["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"]);
        assert_eq!(got, [None, Some(A), Some(A)]);
    }

    #[test]
    fn e2e_all_dead_uses_emergency() {
        // -e E, servers A and B both dead: .1 .2 .3 → E E E.
        let mut sim = Sim::new(2, Policy::default());
        sim.servers.emergency = Some(server(9000));
        sim.dead.extend([A, B]);
        let got = sim.many(&["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"]);
        assert_eq!(got, [E, E, E].map(Some));
        // E is remembered, but not sticky: the next connection selects afresh.
        assert_eq!(sim.connect("127.0.0.1:2"), Some(E));
    }

    #[test]
    fn failed_over_client_is_repinned() {
        // pen.md §4.10: a client that failed over stays on its new server after the dead
        // one recovers.
        let mut sim = Sim::new(3, Policy::default());
        sim.dead.insert(B);
        assert_eq!(sim.connect("127.0.0.1:1"), Some(C));
        sim.dead.clear();
        sim.now += 100;
        assert_eq!(sim.connect("127.0.0.1:2"), Some(C));
    }

    #[test]
    fn even_distribution_around_a_dead_server() {
        // pen.md §4.10: new round-robin clients never land on a blacklisted server, and
        // spread evenly over the others.
        let mut sim = Sim::new(3, Policy::default());
        sim.dead.insert(B);
        let addrs: Vec<String> = (1..=61).map(|d| format!("127.0.1.{d}:1")).collect();
        let got: Vec<_> = addrs.iter().map(|a| sim.connect(a).unwrap()).collect();
        let a = got.iter().filter(|&&r| r == A).count();
        let c = got.iter().filter(|&&r| r == C).count();
        assert_eq!(a + c, 61);
        assert!(a.abs_diff(c) <= 1, "A {a} C {c}");
    }
}

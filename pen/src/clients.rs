//! The client table (pen.md §3, §4.2): which server each client address used last, with
//! per-client counters, bounded to `clients_max` slots with least-recently-used eviction.
//!
//! The original scanned every slot on each connection. Here lookup is O(1): a hash index
//! keyed by address only, plus an intrusive LRU list over slot indices. Slots are allocated
//! on demand up to the capacity, so a large `-c` costs nothing until clients arrive.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::servers::ServerRef;

/// A connected client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// An internet client, with the port of its latest connection.
    Ip(SocketAddr),
    /// A Unix-socket client; all of them share one client slot (pen.md §4.2).
    Unix,
}

impl Peer {
    /// The IP address, if this is an internet client.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(a) => Some(a.ip()),
            Peer::Unix => None,
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        Peer::Ip(a)
    }
}

/// `ip:port`, or `unix` for a Unix-socket peer (the original logged garbage there:
/// pen.md §13.2 #27).
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// One client slot (pen.md §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The address, with the port of the latest connection.
    pub addr: Peer,
    /// Wall-clock second of the last connect; 0 = never used.
    pub last: i64,
    /// The server assigned last, if any: a regular index makes the client sticky.
    pub server: Option<ServerRef>,
    /// How many connections this client made.
    pub connects: u64,
    /// Bytes sent to the client.
    pub csx: u64,
    /// Bytes received from the client.
    pub crx: u64,
}

impl Client {
    fn new(addr: Peer) -> Client {
        Client {
            addr,
            last: 0,
            server: None,
            connects: 0,
            csx: 0,
            crx: 0,
        }
    }

    /// Forget the remembered server and the counters (a new or expired client).
    fn reset(&mut self) {
        self.server = None;
        self.connects = 0;
        self.csx = 0;
        self.crx = 0;
    }
}

/// What clients are keyed by: the address only, never the port (pen.md §4.2). IPv4-mapped
/// IPv6 addresses are 16-byte keys, distinct from plain IPv4 ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
    Unix,
}

impl Key {
    fn of(peer: &Peer) -> Key {
        match peer {
            Peer::Ip(SocketAddr::V4(a)) => Key::V4(a.ip().octets()),
            Peer::Ip(SocketAddr::V6(a)) => Key::V6(a.ip().octets()),
            Peer::Unix => Key::Unix,
        }
    }
}

/// End of the LRU list.
const NIL: usize = usize::MAX;

/// A client plus its links in the LRU list.
#[derive(Clone, Debug)]
struct Slot {
    client: Client,
    key: Key,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// The client table.
#[derive(Clone, Debug)]
pub struct Clients {
    slots: Vec<Slot>,
    index: HashMap<Key, usize>,
    capacity: usize,
    /// Most recently used slot, or NIL.
    head: usize,
    /// Least recently used slot (the next to evict), or NIL.
    tail: usize,
}

impl Clients {
    /// A table of `capacity` slots (`-c`, default 2048), allocated as clients arrive. A
    /// capacity of 0 is taken as 1, since every connection needs a slot.
    pub fn new(capacity: usize) -> Clients {
        Clients {
            slots: Vec::new(),
            index: HashMap::new(),
            capacity: capacity.max(1),
            head: NIL,
            tail: NIL,
        }
    }

    /// The number of slots (`clients_max`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Raises the capacity (`clients_max N`), keeping every client; never shrinks.
    pub fn grow(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// Finds or creates the slot of `peer` for a new connection (pen.md §4.2, in O(1)).
    ///
    /// A known address is reused. An unknown one takes a fresh slot while there is room,
    /// else evicts the least recently used client (which is what the original's "oldest
    /// `last`" meant; ties now go to the one touched first rather than the lowest index).
    /// With `tracking > 0`, an entry with `last + tracking < now` is treated as unknown
    /// and forgets its server and counters: the original matched before checking expiry,
    /// so `-T` never made a returning client forget its server (fixes pen.md §13.2 #2).
    /// Always sets `last = now`, `addr = peer` (with its port) and counts the connect.
    pub fn lookup(&mut self, peer: &Peer, now: i64, tracking: i64) -> usize {
        let key = Key::of(peer);
        let i = match self.index.get(&key) {
            Some(&i) => {
                let c = &mut self.slots[i].client;
                if tracking > 0 && c.last.saturating_add(tracking) < now {
                    c.reset();
                }
                self.unlink(i);
                i
            }
            None => {
                let i = self.vacate();
                self.index.insert(key, i);
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.key = key;
        slot.client.last = now;
        slot.client.addr = *peer;
        slot.client.connects += 1;
        self.push_front(i);
        i
    }

    /// The client in `slot`. Panics if `slot` was never returned by [`Clients::lookup`].
    pub fn get(&self, slot: usize) -> &Client {
        &self.slots[slot].client
    }

    /// The client in `slot`, mutably. Panics if `slot` was never returned by
    /// [`Clients::lookup`].
    pub fn get_mut(&mut self, slot: usize) -> &mut Client {
        &mut self.slots[slot].client
    }

    /// The client in `slot` if it is still `peer`'s: a small table can hand the slot of a
    /// connection's client to another address while that connection lives, and then the
    /// connection must not credit (or re-pin) the newcomer.
    pub fn owned(&mut self, slot: usize, peer: &Peer) -> Option<&mut Client> {
        self.slots
            .get_mut(slot)
            .map(|s| &mut s.client)
            .filter(|c| c.last != 0 && c.addr.ip() == peer.ip())
    }

    /// The slots in use (`last != 0`), in slot order, for stats and `recent`.
    pub fn used(&self) -> impl Iterator<Item = (usize, &Client)> {
        self.slots
            .iter()
            .map(|s| &s.client)
            .enumerate()
            .filter(|(_, c)| c.last != 0)
    }

    /// A slot for a new client, unlinked and reset: a fresh one while below capacity,
    /// else the least recently used one, whose old address leaves the index.
    fn vacate(&mut self) -> usize {
        let victim = self.tail;
        if self.slots.len() < self.capacity || victim == NIL {
            self.slots.push(Slot {
                client: Client::new(Peer::Unix),
                key: Key::Unix,
                prev: NIL,
                next: NIL,
            });
            return self.slots.len() - 1;
        }
        self.unlink(victim);
        let old = self.slots[victim].key;
        self.index.remove(&old);
        self.slots[victim].client.reset();
        victim
    }

    /// Takes slot `i` out of the LRU list.
    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
        self.slots[i].prev = NIL;
        self.slots[i].next = NIL;
    }

    /// Puts unlinked slot `i` at the most recently used end.
    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        if self.head == NIL {
            self.tail = i;
        } else {
            self.slots[self.head].prev = i;
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn peer(s: &str) -> Peer {
        Peer::Ip(s.parse().unwrap())
    }

    /// The LRU order from most to least recent, checked against the back links.
    fn order(c: &Clients) -> Vec<usize> {
        let mut v = Vec::new();
        let mut i = c.head;
        let mut prev = NIL;
        while i != NIL {
            assert_eq!(c.slots[i].prev, prev);
            v.push(i);
            prev = i;
            i = c.slots[i].next;
        }
        assert_eq!(c.tail, prev);
        v
    }

    #[test]
    fn new_client_gets_a_fresh_slot() {
        let mut c = Clients::new(2048);
        assert_eq!(c.capacity(), 2048);
        assert_eq!(c.used().count(), 0);
        let a = c.lookup(&peer("127.0.0.1:40000"), NOW, 0);
        let b = c.lookup(&peer("127.0.0.2:40000"), NOW, 0);
        assert_eq!((a, b), (0, 1));
        let client = c.get(a);
        assert_eq!(client.addr, peer("127.0.0.1:40000"));
        assert_eq!(
            (client.last, client.server, client.connects),
            (NOW, None, 1)
        );
        assert_eq!((client.csx, client.crx), (0, 0));
        // Only the used slots were allocated.
        assert_eq!(c.slots.len(), 2);
    }

    #[test]
    fn keyed_by_address_only() {
        // pen.md §4.2: the port is ignored, but addr keeps the latest port.
        let mut c = Clients::new(8);
        let a = c.lookup(&peer("127.0.0.1:40000"), NOW, 0);
        c.get_mut(a).server = Some(ServerRef::Index(2));
        c.get_mut(a).csx = 10;
        let b = c.lookup(&peer("127.0.0.1:40001"), NOW + 1, 0);
        assert_eq!(a, b);
        let client = c.get(a);
        assert_eq!(client.addr, peer("127.0.0.1:40001"));
        assert_eq!((client.last, client.connects, client.csx), (NOW + 1, 2, 10));
        assert_eq!(client.server, Some(ServerRef::Index(2)));
    }

    #[test]
    fn families_are_distinct_keys() {
        // IPv4-mapped IPv6 clients are 16-byte keys, distinct from plain IPv4.
        let mut c = Clients::new(8);
        let v4 = c.lookup(&peer("127.0.0.1:1"), NOW, 0);
        let mapped = c.lookup(&peer("[::ffff:127.0.0.1]:1"), NOW, 0);
        let v6 = c.lookup(&peer("[::1]:1"), NOW, 0);
        assert_eq!((v4, mapped, v6), (0, 1, 2));
        assert_eq!(c.lookup(&peer("[::1]:2"), NOW, 0), 2);
    }

    #[test]
    fn unix_peers_share_one_slot() {
        let mut c = Clients::new(8);
        let a = c.lookup(&Peer::Unix, NOW, 0);
        let b = c.lookup(&Peer::Unix, NOW + 1, 0);
        assert_eq!(a, b);
        assert_eq!(c.get(a).connects, 2);
        assert_eq!(c.get(a).addr, Peer::Unix);
        assert_eq!(Peer::Unix.to_string(), "unix");
        assert_eq!(peer("127.0.0.1:80").to_string(), "127.0.0.1:80");
        assert_eq!(Peer::Unix.ip(), None);
    }

    #[test]
    fn lru_eviction_forgets_the_oldest() {
        // pen.md §4.2 (verified): with -c 2, .1 .2 .3 then .1 again: .1 is new again.
        let mut c = Clients::new(2);
        let one = c.lookup(&peer("127.0.0.1:1"), NOW, 0);
        c.get_mut(one).server = Some(ServerRef::Index(1));
        let two = c.lookup(&peer("127.0.0.2:1"), NOW + 1, 0);
        c.get_mut(two).server = Some(ServerRef::Index(2));
        let three = c.lookup(&peer("127.0.0.3:1"), NOW + 2, 0);
        assert_eq!(three, one, ".3 takes the least recently used slot");
        assert_eq!(c.get(three).server, None);
        assert_eq!(c.get(three).connects, 1);
        let again = c.lookup(&peer("127.0.0.1:1"), NOW + 3, 0);
        assert_eq!(again, two);
        assert_eq!(
            c.get(again).server,
            None,
            "the returning .1 is a new client"
        );
        assert_eq!(c.get(again).connects, 1);
        assert_eq!(c.used().count(), 2);
    }

    #[test]
    fn touching_protects_from_eviction() {
        let mut c = Clients::new(2);
        let one = c.lookup(&peer("127.0.0.1:1"), NOW, 0);
        let two = c.lookup(&peer("127.0.0.2:1"), NOW + 1, 0);
        c.lookup(&peer("127.0.0.1:2"), NOW + 2, 0);
        assert_eq!(c.lookup(&peer("127.0.0.3:1"), NOW + 3, 0), two);
        assert_eq!(c.lookup(&peer("127.0.0.1:3"), NOW + 4, 0), one);
        assert_eq!(c.get(one).connects, 3);
    }

    #[test]
    fn tracking_expires_a_returning_client() {
        // Fixes pen.md §13.2 #2: with -T 1, a client back after 2.5 s is unknown.
        let mut c = Clients::new(8);
        let a = c.lookup(&peer("127.0.0.2:1"), NOW, 1);
        c.get_mut(a).server = Some(ServerRef::Index(1));
        c.get_mut(a).crx = 5;
        // last + tracking == now: not yet expired.
        let b = c.lookup(&peer("127.0.0.2:2"), NOW + 1, 1);
        assert_eq!(b, a);
        assert_eq!(c.get(a).server, Some(ServerRef::Index(1)));
        assert_eq!(c.get(a).connects, 2);
        // Away for more than the tracking time: forgotten, same slot.
        let d = c.lookup(&peer("127.0.0.2:3"), NOW + 3, 1);
        assert_eq!(d, a);
        let client = c.get(a);
        assert_eq!((client.server, client.connects, client.crx), (None, 1, 0));
        assert_eq!(client.last, NOW + 3);
    }

    #[test]
    fn no_tracking_remembers_forever() {
        let mut c = Clients::new(8);
        let a = c.lookup(&peer("127.0.0.2:1"), NOW, 0);
        c.get_mut(a).server = Some(ServerRef::Index(1));
        c.lookup(&peer("127.0.0.2:1"), NOW + 1_000_000, 0);
        assert_eq!(c.get(a).server, Some(ServerRef::Index(1)));
    }

    #[test]
    fn grow_keeps_clients() {
        let mut c = Clients::new(1);
        let a = c.lookup(&peer("127.0.0.1:1"), NOW, 0);
        c.get_mut(a).server = Some(ServerRef::Index(0));
        c.grow(3);
        assert_eq!(c.capacity(), 3);
        c.grow(2); // never shrinks
        assert_eq!(c.capacity(), 3);
        assert_eq!(c.lookup(&peer("127.0.0.2:1"), NOW + 1, 0), 1);
        assert_eq!(c.lookup(&peer("127.0.0.3:1"), NOW + 2, 0), 2);
        assert_eq!(c.lookup(&peer("127.0.0.1:1"), NOW + 3, 0), a);
        assert_eq!(c.get(a).server, Some(ServerRef::Index(0)));
        // Full now: the next new client evicts the least recent (.2 in slot 1).
        assert_eq!(c.lookup(&peer("127.0.0.4:1"), NOW + 4, 0), 1);
    }

    #[test]
    fn zero_capacity_means_one_slot() {
        let mut c = Clients::new(0);
        assert_eq!(c.capacity(), 1);
        assert_eq!(c.lookup(&peer("127.0.0.1:1"), NOW, 0), 0);
        assert_eq!(c.lookup(&peer("127.0.0.2:1"), NOW, 0), 0);
        assert_eq!(c.get(0).addr, peer("127.0.0.2:1"));
    }

    #[test]
    fn used_in_slot_order() {
        let mut c = Clients::new(4);
        for (i, a) in ["127.0.0.3:1", "127.0.0.1:1", "127.0.0.2:1"]
            .iter()
            .enumerate()
        {
            c.lookup(&peer(a), NOW + 10 - i as i64, 0);
        }
        let got: Vec<_> = c.used().map(|(i, cl)| (i, cl.addr)).collect();
        assert_eq!(
            got,
            vec![
                (0, peer("127.0.0.3:1")),
                (1, peer("127.0.0.1:1")),
                (2, peer("127.0.0.2:1"))
            ]
        );
    }

    /// The original's O(n) scan (pen.md §4.2) with the tracking fix applied: the model
    /// the O(1) table must agree with when clock values are distinct.
    struct Model {
        slots: Vec<Option<(Key, i64, bool)>>, // key, last, remembers a server
    }

    impl Model {
        fn lookup(&mut self, key: Key, now: i64, tracking: i64) -> (usize, bool) {
            let expired = |last: i64| tracking > 0 && last + tracking < now;
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| matches!(s, Some((k, ..)) if *k == key))
            {
                let (_, last, remembers) = self.slots[i].unwrap();
                let fresh = remembers && !expired(last);
                self.slots[i] = Some((key, now, true));
                return (i, fresh);
            }
            let i = match self.slots.iter().position(Option::is_none) {
                Some(i) => i,
                None => (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].unwrap().1)
                    .unwrap(),
            };
            self.slots[i] = Some((key, now, true));
            (i, false)
        }
    }

    #[test]
    fn agrees_with_the_linear_scan() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for (cap, tracking) in [(1, 0), (4, 0), (7, 0), (16, 0), (5, 3), (9, 20)] {
            let mut c = Clients::new(cap);
            let mut m = Model {
                slots: vec![None; cap],
            };
            let mut now = NOW;
            for _ in 0..3000 {
                now += 1 + rand(3) as i64;
                let ip = format!("10.0.0.{}:{}", rand(2 * cap as u64 + 2), 1 + rand(60000));
                let p = peer(&ip);
                let i = c.lookup(&p, now, tracking);
                let fresh = c.get(i).server.is_some();
                let (mi, mfresh) = m.lookup(Key::of(&p), now, tracking);
                assert_eq!(fresh, mfresh, "cap {cap} tracking {tracking} {ip}");
                if tracking == 0 {
                    assert_eq!(i, mi, "cap {cap} {ip}");
                }
                c.get_mut(i).server = Some(ServerRef::Index(0));
                assert_eq!(c.index.len(), c.slots.len());
                assert_eq!(c.index.get(&Key::of(&p)), Some(&i));
            }
            assert_eq!(order(&c).len(), c.slots.len());
        }
    }

    #[test]
    fn owned_refuses_a_slot_taken_by_another_address() {
        let a: Peer = "10.0.0.1:1000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let b: Peer = "10.0.0.2:1000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let a2: Peer = "10.0.0.1:2000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let mut c = Clients::new(1);
        let slot = c.lookup(&a, 1, 0);
        assert!(c.owned(slot, &a2).is_some(), "same address, other port");
        assert_eq!(c.lookup(&b, 2, 0), slot, "one slot: b evicts a");
        assert!(c.owned(slot, &a).is_none());
        assert!(c.owned(slot, &b).is_some());
    }
}

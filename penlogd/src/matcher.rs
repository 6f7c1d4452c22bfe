//! The matcher: pen records waiting for their web line, indexed by (server, request).
//!
//! The original scanned a ring backwards for the newest record whose request was a prefix
//! match, never consumed it, and never looked at the oldest slot (spec §3.3, §6). Here a
//! web line takes the **oldest unused** record with exactly its key, and uses it up, so
//! concurrent identical requests are credited in order. Every operation is O(1) amortised
//! whatever the capacity: a hash map from key to a FIFO list threaded through one arrival
//! ring, which also gives eviction (beyond `capacity`) and expiry (beyond `window`).
//!
//! Times are plain `i64` milliseconds chosen by the caller (a monotonic clock in the
//! daemon, log timestamps in the merge), so the matcher never reads a clock.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

const NONE: u64 = u64::MAX;

/// Counters kept by the matcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Unused records pushed out because the ring was full.
    pub evicted: u64,
    /// Unused records dropped because they were older than the window.
    pub expired: u64,
}

/// Records keyed by (server, request), each handed out at most once.
pub struct Matcher<C> {
    keys: HashMap<Rc<[u8]>, List>,
    ring: VecDeque<Slot<C>>,
    /// Sequence number of `ring[0]`.
    base: u64,
    capacity: usize,
    window: Option<i64>,
    key_max: usize,
    scratch: Vec<u8>,
    /// Eviction and expiry counts.
    pub stats: MatchStats,
}

/// The unused records of one key, oldest first, as sequence numbers into the ring.
struct List {
    head: u64,
    tail: u64,
    /// The map's own key, so that a record can share it without a second lookup.
    key: Rc<[u8]>,
}

struct Slot<C> {
    key: Rc<[u8]>,
    /// `None` once used (or expired out of order).
    client: Option<C>,
    time: i64,
    /// The next record with the same key.
    next: u64,
}

impl<C> Matcher<C> {
    /// A matcher holding at most `capacity` records (at least 1). A record older than
    /// `window` ms is never used, nor one more than `window` ms in the future. Requests are
    /// compared on their first `key_max` bytes.
    pub fn new(capacity: usize, window: Option<i64>, key_max: usize) -> Matcher<C> {
        Matcher {
            keys: HashMap::new(),
            ring: VecDeque::with_capacity(capacity.clamp(1, 1 << 16)),
            base: 0,
            capacity: capacity.max(1),
            window,
            key_max,
            scratch: Vec::with_capacity(key_max + 17),
            stats: MatchStats::default(),
        }
    }

    /// Records currently held (used ones not yet cleared included).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Adds a record that arrived at `now`. Expiry is left to [`Matcher::expire`] and
    /// [`Matcher::take`]: in the merge, records are read ahead of the current time.
    pub fn record(&mut self, server: &[u8], request: &[u8], client: C, now: i64) {
        self.record_with(server, request, client, now, drop);
    }

    /// [`Matcher::record`], handing an unused record pushed out by a full ring to `spill`.
    pub fn record_with(
        &mut self,
        server: &[u8],
        request: &[u8],
        client: C,
        now: i64,
        spill: impl FnOnce(C),
    ) {
        if self.ring.len() >= self.capacity {
            if let Some(old) = self.pop_front(false) {
                spill(old);
            }
        }
        let seq = self.base + self.ring.len() as u64;
        build_key(&mut self.scratch, server, request, self.key_max);
        let key = match self.keys.get_mut(self.scratch.as_slice()) {
            Some(list) => {
                let key = list.key.clone();
                let tail = list.tail;
                list.tail = seq;
                let idx = (tail - self.base) as usize;
                self.ring[idx].next = seq;
                key
            }
            None => {
                let key: Rc<[u8]> = Rc::from(self.scratch.as_slice());
                self.keys.insert(
                    key.clone(),
                    List {
                        head: seq,
                        tail: seq,
                        key: key.clone(),
                    },
                );
                key
            }
        };
        self.ring.push_back(Slot {
            key,
            client: Some(client),
            time: now,
            next: NONE,
        });
    }

    /// Takes the oldest usable record for (server, request) at `now`, if any.
    pub fn take(&mut self, server: &[u8], request: &[u8], now: i64) -> Option<C> {
        self.expire(now);
        build_key(&mut self.scratch, server, request, self.key_max);
        let list = self.keys.get_mut(self.scratch.as_slice())?;
        let found = loop {
            let idx = (list.head - self.base) as usize;
            let slot = &mut self.ring[idx];
            // Saturating: a huge window or a far-off log time must not wrap around (which
            // made nothing match in release builds and panicked in debug ones).
            let stale = self
                .window
                .is_some_and(|w| slot.time < now.saturating_sub(w));
            let future = self
                .window
                .is_some_and(|w| slot.time > now.saturating_add(w));
            if future {
                return None;
            }
            let client = slot.client.take();
            let next = slot.next;
            if stale {
                // Out-of-order times (merge input) can leave an expired record behind a
                // newer ring front: it is dropped here instead.
                self.stats.expired += 1;
            }
            if next == NONE {
                self.keys.remove(self.scratch.as_slice());
                break if stale { None } else { client };
            }
            list.head = next;
            if !stale {
                break client;
            }
        };
        while self.ring.front().is_some_and(|s| s.client.is_none()) {
            self.pop_front(false);
        }
        found
    }

    /// Drops records older than the window (relative to `now`) from the front of the ring.
    pub fn expire(&mut self, now: i64) {
        self.expire_with(now, drop);
    }

    /// [`Matcher::expire`], handing each unused record it drops to `spill`.
    pub fn expire_with(&mut self, now: i64, mut spill: impl FnMut(C)) {
        let Some(w) = self.window else { return };
        while self
            .ring
            .front()
            .is_some_and(|s| s.time < now.saturating_sub(w) || s.client.is_none())
        {
            if let Some(old) = self.pop_front(true) {
                spill(old);
            }
        }
    }

    /// Hands every unused record to `spill`, oldest first, and empties the matcher.
    pub fn drain(&mut self, mut spill: impl FnMut(C)) {
        while !self.ring.is_empty() {
            if let Some(old) = self.pop_front(false) {
                spill(old);
            }
        }
    }

    /// When [`Matcher::expire`] will next have something to drop: the oldest record's time
    /// plus the window (possibly a record already used, so at worst too early).
    pub fn next_expiry(&self) -> Option<i64> {
        let w = self.window?;
        self.ring.front().map(|s| s.time.saturating_add(w))
    }

    /// Removes the oldest slot; an unused one is the head of its key's list, and is
    /// returned.
    fn pop_front(&mut self, expiring: bool) -> Option<C> {
        let slot = self.ring.pop_front()?;
        let seq = self.base;
        self.base += 1;
        let client = slot.client?;
        if expiring {
            self.stats.expired += 1;
        } else {
            self.stats.evicted += 1;
        }
        if let Some(list) = self.keys.get_mut(&slot.key) {
            debug_assert_eq!(list.head, seq, "an unused ring front heads its list");
            if slot.next == NONE {
                self.keys.remove(&slot.key);
            } else {
                list.head = slot.next;
            }
        }
        Some(client)
    }
}

/// `len(server) server request[..key_max]`: the length byte keeps IPv4 (4 bytes) and
/// IPv6 (16 bytes) servers, or text servers in the merge, from running into the request.
fn build_key(out: &mut Vec<u8>, server: &[u8], request: &[u8], key_max: usize) {
    out.clear();
    out.push(server.len().min(255) as u8);
    out.extend_from_slice(&server[..server.len().min(255)]);
    out.extend_from_slice(&request[..request.len().min(key_max)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S2: &[u8] = &[127, 0, 0, 2];
    const S3: &[u8] = &[127, 0, 0, 3];

    #[test]
    fn identical_requests_attributed_in_order() {
        let mut m = Matcher::new(1000, None, 900);
        m.record(S2, b"GET /same HTTP/1.1", "10.0.0.1", 0);
        m.record(S2, b"GET /same HTTP/1.1", "10.0.0.2", 1);
        m.record(S2, b"GET /same HTTP/1.1", "10.0.0.3", 2);
        assert_eq!(m.take(S3, b"GET /same HTTP/1.1", 3), None, "other server");
        assert_eq!(m.take(S2, b"GET /same HTTP/1.1", 3), Some("10.0.0.1"));
        assert_eq!(m.take(S2, b"GET /same HTTP/1.1", 3), Some("10.0.0.2"));
        assert_eq!(m.take(S2, b"GET /same HTTP/1.1", 3), Some("10.0.0.3"));
        assert_eq!(m.take(S2, b"GET /same HTTP/1.1", 3), None, "used up");
        assert!(m.is_empty());
        assert!(m.keys.is_empty());
    }

    #[test]
    fn exact_not_prefix() {
        let mut m = Matcher::new(10, None, 900);
        m.record(S2, b"GET /abcdef HTTP/1.1", "a", 0);
        assert_eq!(m.take(S2, b"GET /abc", 0), None);
        assert_eq!(m.take(S2, b"GET /abcdef HTTP/1.1", 0), Some("a"));
    }

    #[test]
    fn long_requests_match_on_key_max() {
        let mut m = Matcher::new(10, None, 900);
        let long = [b"GET /".as_slice(), &[b'x'; 1500]].concat();
        m.record(S2, &long[..941], "a", 0); // pen truncated its record
        assert_eq!(m.take(S2, &long, 0), Some("a"));
        let r150 = [b"GET /".as_slice(), &[b'y'; 150], b" HTTP/1.1"].concat();
        m.record(S2, &r150, "b", 0);
        assert_eq!(m.take(S2, &r150, 0), Some("b"));
    }

    #[test]
    fn eviction_beyond_capacity() {
        let mut m = Matcher::new(3, None, 900);
        m.record(S2, b"A", "a", 0);
        m.record(S2, b"B", "b", 0);
        m.record(S2, b"C", "c", 0);
        // With -n 3 the original could not match A; here all three are searchable.
        assert_eq!(m.take(S2, b"A", 0), Some("a"));
        m.record(S2, b"D", "d", 0);
        m.record(S2, b"E", "e", 0);
        assert_eq!(m.stats.evicted, 1);
        assert_eq!(m.take(S2, b"B", 0), None, "B evicted");
        assert_eq!(m.take(S2, b"C", 0), Some("c"));
        assert_eq!(m.take(S2, b"E", 0), Some("e"));
        assert_eq!(m.take(S2, b"D", 0), Some("d"));
        assert!(m.is_empty() && m.keys.is_empty());
    }

    #[test]
    fn eviction_within_one_key() {
        let mut m = Matcher::new(2, None, 900);
        for (i, c) in ["a", "b", "c", "d"].into_iter().enumerate() {
            m.record(S2, b"X", c, i as i64);
        }
        assert_eq!(m.stats.evicted, 2);
        assert_eq!(m.take(S2, b"X", 9), Some("c"));
        assert_eq!(m.take(S2, b"X", 9), Some("d"));
        assert_eq!(m.take(S2, b"X", 9), None);
    }

    #[test]
    fn records_dropped_by_eviction_expiry_and_drain_are_handed_back() {
        let mut m = Matcher::new(2, Some(100), 900);
        let mut spilled = Vec::new();
        m.record_with(S2, b"A", "a", 0, |c| spilled.push(c));
        m.record_with(S2, b"B", "b", 10, |c| spilled.push(c));
        m.record_with(S2, b"C", "c", 20, |c| spilled.push(c));
        assert_eq!(spilled, ["a"], "evicted by the full ring");
        assert_eq!(m.take(S2, b"B", 20), Some("b"));
        assert_eq!(
            m.next_expiry(),
            Some(120),
            "the used record went with the take"
        );
        m.expire_with(120, |c| spilled.push(c));
        assert_eq!(spilled, ["a"], "not older than the window yet");
        m.expire_with(121, |c| spilled.push(c));
        assert_eq!(spilled, ["a", "c"]);
        assert!(m.is_empty() && m.keys.is_empty() && m.next_expiry().is_none());
        m.record(S2, b"D", "d", 200);
        m.record(S2, b"E", "e", 201);
        m.drain(|c| spilled.push(c));
        assert_eq!(spilled, ["a", "c", "d", "e"]);
        assert!(m.is_empty() && m.keys.is_empty());
    }

    #[test]
    fn window_expires_old_records() {
        let mut m = Matcher::new(100, Some(1000), 900);
        m.record(S2, b"GET /", "old", 0);
        m.record(S2, b"GET /", "new", 1500);
        assert_eq!(m.take(S2, b"GET /", 1600), Some("new"));
        assert_eq!(m.stats.expired, 1);
        m.record(S2, b"GET /x", "x", 2000);
        assert_eq!(m.take(S2, b"GET /x", 3001), None, "just past the window");
        assert!(m.is_empty() && m.keys.is_empty());
        m.record(S2, b"GET /y", "y", 5000);
        assert_eq!(m.take(S2, b"GET /y", 3999), None, "too far in the future");
        assert_eq!(m.take(S2, b"GET /y", 4000), Some("y"));
    }

    #[test]
    fn out_of_order_times_expire_at_take() {
        let mut m = Matcher::new(100, Some(10), 900);
        m.record(S2, b"K", "front", 100);
        m.record(S2, b"GET /", "late", 50); // behind a newer front
        m.record(S2, b"GET /", "ok", 100);
        assert_eq!(m.take(S2, b"GET /", 105), Some("ok"));
        assert_eq!(m.stats.expired, 1);
        assert_eq!(m.take(S2, b"K", 105), Some("front"));
        assert!(m.is_empty() && m.keys.is_empty());
    }

    #[test]
    fn huge_windows_and_times_do_not_overflow() {
        let mut m = Matcher::new(10, Some(i64::MAX), 900);
        m.record(S2, b"GET /", "a", 5);
        m.expire(-5);
        assert_eq!(m.take(S2, b"GET /", 10), Some("a"), "now + w saturates");
        m.record(S2, b"GET /", "b", i64::MIN);
        m.expire(-10);
        assert_eq!(m.take(S2, b"GET /", -10), Some("b"), "now - w saturates");
        let mut m = Matcher::new(10, Some(1000), 900);
        m.record(S2, b"GET /", "old", i64::MIN);
        m.record(S2, b"GET /", "far", i64::MAX);
        assert_eq!(
            m.take(S2, b"GET /", i64::MIN + 5000),
            None,
            "old expired, far future"
        );
        m.record(S2, b"GET /", "new", i64::MAX);
        assert_eq!(m.take(S2, b"GET /", i64::MAX), Some("far"));
        assert_eq!(m.take(S2, b"GET /", i64::MAX), Some("new"));
    }

    #[test]
    fn interleaved_keys_and_ring_cleanup() {
        let mut m = Matcher::new(1000, None, 900);
        for i in 0..500u32 {
            m.record(S2, format!("GET /p/{i}").as_bytes(), i, 0);
            if i >= 10 {
                let j = i - 10;
                assert_eq!(m.take(S2, format!("GET /p/{j}").as_bytes(), 0), Some(j));
            }
        }
        assert_eq!(m.len(), 10);
        assert_eq!(m.stats, MatchStats::default());
    }
}

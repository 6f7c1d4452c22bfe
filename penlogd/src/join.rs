//! What penlogd does with one datagram, with no sockets and no clock (the caller passes
//! the source and the time): store a pen record, or rewrite the web lines it holds.
//!
//! Kinds are told apart as the original did (spec §3.1, §5): a datagram starting with `+`
//! is a pen record, anything else holds web lines; but a `+` datagram that is no record is
//! a web line when its source may send them and it has their shape, or its source may not
//! send records (the original dropped it). Unlike the original, a datagram holding
//! several lines is split into them, a line without a request or with no match is written
//! unchanged (never dropped), and bad input of any kind is counted and skipped.
//!
//! A web line that arrives before its record (UDP reordering, a slow pen: the original
//! never matched it, spec §6) waits up to the hold time in a second matcher keyed like
//! the first; a record that finds it there completes it at once instead of being stored.
//! A line whose wait ends is written unchanged.

use std::io::Write;
use std::net::IpAddr;

use common::logrec::Record;

use crate::matcher::Matcher;
use crate::nets::{allowed, Net};
use crate::stats::Stats;
use crate::webline::{find, has_escapes, unescape, WebLine};

/// Request bytes compared: every request byte a pen record can hold whatever its two
/// addresses (1023 − `"+ "` − 2 × 39 − 2 spaces = 941), rounded down.
pub const KEY_MAX: usize = 900;

/// Joins records and lines.
pub struct Join {
    matcher: Matcher<IpAddr>,
    /// Lines waiting for a late record; `None` when the hold time is 0.
    held: Option<Matcher<Held>>,
    pen_from: Vec<Net>,
    web_from: Vec<Net>,
    scratch: Vec<u8>,
    /// Counters (the kernel drop count and write errors are filled in by the daemon).
    pub stats: Stats,
}

/// A web line waiting for its record, with the end of its host field.
struct Held {
    line: Box<[u8]>,
    host_end: usize,
}

impl Join {
    /// `records` = capacity of each matcher; `window_ms` = maximal record age; `hold_ms`
    /// = how long an unmatched line waits for a late record (0: not at all).
    pub fn new(
        records: usize,
        window_ms: Option<i64>,
        hold_ms: i64,
        pen_from: Vec<Net>,
        web_from: Vec<Net>,
    ) -> Join {
        Join {
            matcher: Matcher::new(records, window_ms, KEY_MAX),
            held: (hold_ms > 0).then(|| Matcher::new(records, Some(hold_ms), KEY_MAX)),
            pen_from,
            web_from,
            scratch: Vec::with_capacity(KEY_MAX),
            stats: Stats::default(),
        }
    }

    /// Handles one datagram from `from` received at `now` (ms); output lines are appended
    /// to `out`. Returns the number of lines appended.
    pub fn datagram(&mut self, data: &[u8], from: IpAddr, now: i64, out: &mut Vec<u8>) -> usize {
        self.stats.received += 1;
        let mut n = self.release_held(now, out);
        let Some(&first) = data.first() else {
            self.stats.empty += 1;
            return n;
        };
        if first == b'+' {
            if let Some(completed) = self.record(data, from, now, out) {
                return n + completed;
            }
            // Otherwise a web line that starts with '+'.
        }
        if !allowed(&self.web_from, from) {
            self.stats.refused += 1;
            common::debug!(1, "refusing web line from {from}");
            return n;
        }
        self.matcher.expire(now);
        let mut lines = 0;
        let mut rest = data;
        while !rest.is_empty() {
            let (line, next) = match find(rest, b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            if !line.is_empty() {
                n += self.line(line, from, now, out);
                lines += 1;
            }
            rest = next;
        }
        if lines == 0 {
            self.stats.empty += 1;
        }
        n
    }

    /// Writes unchanged the held lines whose wait is over at `now`. Returns how many.
    pub fn release_held(&mut self, now: i64, out: &mut Vec<u8>) -> usize {
        self.release(Some(now), out)
    }

    /// Writes every held line unchanged (at exit). Returns how many.
    pub fn release_all(&mut self, out: &mut Vec<u8>) -> usize {
        self.release(None, out)
    }

    /// Writes unchanged the held lines due at `now`, or all of them (`None`).
    fn release(&mut self, now: Option<i64>, out: &mut Vec<u8>) -> usize {
        let Some(held) = self.held.as_mut() else {
            return 0;
        };
        let mut n = 0;
        let write = |h: Held| {
            write_unchanged(out, &h.line);
            n += 1;
        };
        match now {
            Some(now) => held.expire_with(now, write),
            None => held.drain(write),
        }
        self.stats.unmatched += n as u64;
        self.stats.waiting -= n as u64;
        n
    }

    /// When the oldest held line's wait ends (ms), if any line is held.
    pub fn next_release(&self) -> Option<i64> {
        self.held.as_ref().and_then(|h| h.next_expiry())
    }

    /// The matcher's eviction and expiry counts, with the other counters.
    pub fn snapshot(&self) -> Stats {
        Stats {
            matcher: self.matcher.stats,
            ..self.stats
        }
    }

    /// Handles a datagram starting with `+`: returns the number of lines written (a held
    /// line the record completes), or `None` when it is not a record but a web line that
    /// happens to start with `+` (`LogFormat "%X %h ..."` does that), for the caller to
    /// handle as one.
    fn record(&mut self, data: &[u8], from: IpAddr, now: i64, out: &mut Vec<u8>) -> Option<usize> {
        let pen_ok = allowed(&self.pen_from, from);
        let web_ok = allowed(&self.web_from, from);
        let e = match Record::parse(data) {
            Ok(r) if pen_ok => {
                self.stats.records += 1;
                let (key, len) = ip_key(r.server);
                // Held lines past their time were released above with this `now`, so
                // `take` drops none unwritten. An empty hold (the usual case: records
                // come first) costs no lookup.
                let early = self
                    .held
                    .as_mut()
                    .filter(|h| !h.is_empty())
                    .and_then(|h| h.take(&key[..len], r.request, now));
                if let Some(h) = early {
                    self.stats.matched += 1;
                    self.stats.waiting -= 1;
                    write_joined(out, r.client, &h.line[h.host_end..]);
                    return Some(1);
                }
                self.matcher.record(&key[..len], r.request, r.client, now);
                return Some(0);
            }
            Ok(_) => {
                self.stats.refused += 1;
                common::debug!(1, "refusing pen record from {from}");
                return Some(0);
            }
            Err(e) => e,
        };
        // Not a record. From a source that may send web lines it is one when the source
        // may not send records, or when it has a web line's shape (a host field, then a
        // quoted request) that no record has; otherwise it is a bad record.
        if web_ok && (!pen_ok || looks_like_web_line(data)) {
            return None;
        }
        if pen_ok {
            self.stats.bad_records += 1;
            common::debug!(1, "discarding bogus pen record from {from}: {e}");
        } else {
            self.stats.refused += 1;
            common::debug!(1, "refusing pen record from {from}");
        }
        Some(0)
    }

    /// Joins one web line, holds it for a late record, or writes it unchanged. Returns the
    /// number of lines written (a full hold writes its oldest line to make room).
    fn line(&mut self, line: &[u8], from: IpAddr, now: i64, out: &mut Vec<u8>) -> usize {
        self.stats.lines += 1;
        let w = WebLine::parse(line);
        if let (Some(host_end), Some(req)) = (w.host_end, w.request) {
            let req = if has_escapes(req) {
                unescape(req, &mut self.scratch);
                &self.scratch[..]
            } else {
                req
            };
            let (key, len) = ip_key(from);
            if let Some(client) = self.matcher.take(&key[..len], req, now) {
                self.stats.matched += 1;
                write_joined(out, client, &line[host_end..]);
                return 1;
            }
            if let Some(held) = self.held.as_mut() {
                let mut n = 0;
                let h = Held {
                    line: line.into(),
                    host_end,
                };
                held.record_with(&key[..len], req, h, now, |old| {
                    write_unchanged(out, &old.line);
                    n = 1;
                });
                self.stats.waiting += 1;
                self.stats.waiting -= n as u64;
                self.stats.unmatched += n as u64;
                return n;
            }
        }
        self.stats.unmatched += 1;
        write_unchanged(out, line);
        1
    }
}

/// Appends the line with everything before `rest` (its host field) replaced by `client`.
fn write_joined(out: &mut Vec<u8>, client: IpAddr, rest: &[u8]) {
    write_ip(out, client);
    out.extend_from_slice(rest);
    out.push(b'\n');
}

/// Appends the line as it came.
fn write_unchanged(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// True when the first line of `data` has a host field followed by a quoted request, as
/// access log lines do and pen records (`+ CLIENT SERVER REQUEST`, unquoted) do not.
fn looks_like_web_line(data: &[u8]) -> bool {
    let line = &data[..find(data, b'\n').unwrap_or(data.len())];
    let w = WebLine::parse(line);
    w.host_end.is_some() && w.request.is_some()
}

/// Appends `ip` as text; IPv4, by far the usual case, without the formatting machinery
/// (it was a tenth of the daemon's own time per line).
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// A server's key bytes: 4 for IPv4, 16 for IPv6 (already canonical).
fn ip_key(ip: IpAddr) -> ([u8; 16], usize) {
    let mut k = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            k[..4].copy_from_slice(&a.octets());
            (k, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn join() -> Join {
        Join::new(1000, Some(600_000), 0, vec![], vec![])
    }

    fn feed(j: &mut Join, from: &str, data: &[u8]) -> String {
        feed_at(j, from, data, 0)
    }

    /// Feeds one datagram at `now` ms; returns the output, checking the line count.
    fn feed_at(j: &mut Join, from: &str, data: &[u8], now: i64) -> String {
        let mut out = Vec::new();
        let n = j.datagram(data, ip(from), now, &mut out);
        assert_eq!(n, out.iter().filter(|&&b| b == b'\n').count(), "line count");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A join whose unmatched lines wait 200 ms for a late record.
    fn holding(records: usize) -> Join {
        Join::new(records, Some(600_000), 200, vec![], vec![])
    }

    #[test]
    fn a_line_before_its_record_waits_for_it() {
        let mut j = holding(1000);
        assert_eq!(feed_at(&mut j, "127.0.0.2", LINE, 0), "", "held");
        assert_eq!(j.next_release(), Some(200));
        let late = feed_at(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /same HTTP/1.1\n",
            150,
        );
        assert!(late.starts_with("10.0.0.1 - - [21/Nov"), "{late}");
        assert_eq!(j.next_release(), None, "nothing left held");
        // The record was used by the held line, not stored for another.
        assert_eq!(feed_at(&mut j, "127.0.0.2", LINE, 160), "");
        let s = j.snapshot();
        assert_eq!(
            (s.records, s.lines, s.matched, s.unmatched, s.waiting),
            (1, 2, 1, 0, 1)
        );
    }

    #[test]
    fn a_held_line_is_written_unchanged_when_its_wait_ends() {
        let mut j = holding(1000);
        assert_eq!(feed_at(&mut j, "127.0.0.2", LINE, 0), "");
        let mut out = Vec::new();
        assert_eq!(j.release_held(200, &mut out), 0, "not yet");
        assert_eq!(j.release_held(201, &mut out), 1);
        assert_eq!(out, LINE);
        // A record arriving after that is stored as usual, for the next such line.
        feed_at(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /same HTTP/1.1\n",
            300,
        );
        assert!(feed_at(&mut j, "127.0.0.2", LINE, 301).starts_with("10.0.0.1 "));
        let s = j.snapshot();
        assert_eq!((s.lines, s.matched, s.unmatched, s.waiting), (2, 1, 1, 0));
    }

    #[test]
    fn a_full_hold_writes_its_oldest_line_and_exit_writes_the_rest() {
        let mut j = holding(2);
        let other = b"127.0.0.1 - - [x] \"GET /other HTTP/1.1\" 200 2\n";
        let third = b"127.0.0.1 - - [x] \"GET /third HTTP/1.1\" 200 2\n";
        assert_eq!(feed_at(&mut j, "127.0.0.2", LINE, 0), "");
        assert_eq!(feed_at(&mut j, "127.0.0.2", other, 1), "");
        assert_eq!(
            feed_at(&mut j, "127.0.0.2", third, 2),
            String::from_utf8_lossy(LINE)
        );
        let mut out = Vec::new();
        assert_eq!(j.release_all(&mut out), 2);
        assert_eq!(out, [&other[..], &third[..]].concat());
        let s = j.snapshot();
        assert_eq!((s.lines, s.unmatched, s.waiting), (3, 3, 0));
    }

    #[test]
    fn hold_0_writes_unmatched_lines_at_once() {
        let mut j = join();
        assert_eq!(
            feed(&mut j, "127.0.0.2", LINE),
            String::from_utf8_lossy(LINE)
        );
        assert_eq!(j.next_release(), None);
    }

    const LINE: &[u8] =
        b"127.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /same HTTP/1.1\" 200 2\n";

    #[test]
    fn spec_capture_ambiguity_fixed() {
        let mut j = join();
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /same HTTP/1.1\n",
        );
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.2 127.0.0.2 GET /same HTTP/1.1\n",
        );
        assert_eq!(
            feed(&mut j, "127.0.0.3", LINE),
            String::from_utf8_lossy(LINE),
            "other server"
        );
        assert!(feed(&mut j, "127.0.0.2", LINE).starts_with("10.0.0.1 - - [21/Nov"));
        assert!(feed(&mut j, "127.0.0.2", LINE).starts_with("10.0.0.2 - - [21/Nov"));
        assert!(
            feed(&mut j, "127.0.0.2", LINE).starts_with("127.0.0.1 - -"),
            "used up"
        );
        let s = j.snapshot();
        assert_eq!(
            (s.received, s.records, s.lines, s.matched, s.unmatched),
            (6, 2, 4, 2, 2)
        );
    }

    #[test]
    fn ip_text() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.255.9",
            "255.255.255.255",
            "2001:db8::5",
            "::1",
        ] {
            let mut out = Vec::new();
            write_ip(&mut out, ip(a));
            assert_eq!(out, a.as_bytes());
        }
    }

    #[test]
    fn ipv6_server_and_client() {
        let mut j = join();
        feed(&mut j, "::1", b"+ 2001:db8::5 ::1 GET /v6 HTTP/1.1\n");
        let out = feed(&mut j, "::1", b"::1 - - [x] \"GET /v6 HTTP/1.1\" 200 1\n");
        assert_eq!(out, "2001:db8::5 - - [x] \"GET /v6 HTTP/1.1\" 200 1\n");
        // An IPv4-mapped source matches an IPv4 server.
        feed(&mut j, "::1", b"+ 10.0.0.9 127.0.0.2 GET / HTTP/1.1\n");
        let out = feed(
            &mut j,
            "127.0.0.2",
            b"127.0.0.1 - - [x] \"GET / HTTP/1.1\" 200 1\n",
        );
        assert!(out.starts_with("10.0.0.9 "));
    }

    #[test]
    fn escaped_and_raw_requests_match() {
        let mut j = join();
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /caf\xc3\xa9\"q\" HTTP/1.1\n",
        );
        let out = feed(
            &mut j,
            "127.0.0.2",
            b"127.0.0.1 - - [x] \"GET /caf\\xc3\\xa9\\\"q\\\" HTTP/1.1\" 200 1\n",
        );
        assert!(out.starts_with("10.0.0.1 - - [x]"), "{out}");
    }

    #[test]
    fn long_request_matches() {
        let mut j = join();
        let path = "p".repeat(1500);
        let mut rec = Vec::new();
        common::logrec::udp_record(
            &mut rec,
            &"10.0.0.7",
            &"127.0.0.2",
            format!("GET /{path} HTTP/1.1").as_bytes(),
        );
        assert_eq!(rec.len(), 1024);
        feed(&mut j, "127.0.0.1", &rec);
        let out = feed(
            &mut j,
            "127.0.0.2",
            format!("127.0.0.1 - - [x] \"GET /{path} HTTP/1.1\" 200 1\n").as_bytes(),
        );
        assert!(out.starts_with("10.0.0.7 "));
    }

    #[test]
    fn lines_without_request_or_host_are_written_unchanged() {
        let mut j = join();
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /abcdef HTTP/1.1\n",
        );
        assert_eq!(
            feed(&mut j, "127.0.0.2", b"no request here\n"),
            "no request here\n"
        );
        let odd = b"nospace\"GET /abcdef HTTP/1.1\"\n";
        assert_eq!(feed(&mut j, "127.0.0.2", odd), String::from_utf8_lossy(odd));
        // The record was not used up by those lines.
        assert!(
            feed(&mut j, "127.0.0.2", b"h \"GET /abcdef HTTP/1.1\" 1\n").starts_with("10.0.0.1 \"")
        );
    }

    #[test]
    fn several_lines_per_datagram_and_no_newline() {
        let mut j = join();
        let out = feed(&mut j, "127.0.0.2", b"a \"x\"\n\nb \"y\"\nc no newline");
        assert_eq!(out, "a \"x\"\nb \"y\"\nc no newline\n");
        assert_eq!(j.snapshot().lines, 3);
    }

    #[test]
    fn bad_input_counted_never_fatal() {
        let mut j = join();
        assert_eq!(feed(&mut j, "127.0.0.1", b""), "");
        assert_eq!(feed(&mut j, "127.0.0.1", b"\n\n"), "");
        assert_eq!(
            feed(&mut j, "127.0.0.1", b"+ this looks like a web line\n"),
            ""
        );
        assert_eq!(
            feed(&mut j, "127.0.0.1", b"+ 2001:db8::1 ::1 GET /v6 HTTP/1.1\n"),
            ""
        );
        assert_eq!(
            feed(&mut j, "127.0.0.1", b"+ 10.0.0.1 web.example GET /\n"),
            ""
        );
        assert_eq!(feed(&mut j, "127.0.0.1", b"+\xff\xfe"), "");
        let mut seed = 12345u32;
        for len in [1usize, 7, 100, 1024, 65507] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            feed(&mut j, "127.0.0.2", &junk);
        }
        let s = j.snapshot();
        assert_eq!((s.empty, s.bad_records, s.records), (2, 3, 1));
    }

    #[test]
    fn web_lines_starting_with_plus_are_web_lines() {
        // LogFormat "%X %h %l %u %t \"%r\" %>s %b": %X is + for a kept-alive connection.
        let plus = b"+ 127.0.0.1 - - [x] \"GET /k HTTP/1.1\" 200 1\n";
        let mut j = join();
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET /k HTTP/1.1\n",
        );
        assert_eq!(
            feed(&mut j, "127.0.0.2", plus),
            "10.0.0.1 127.0.0.1 - - [x] \"GET /k HTTP/1.1\" 200 1\n"
        );
        assert_eq!(
            feed(&mut j, "127.0.0.2", plus),
            String::from_utf8_lossy(plus),
            "unmatched"
        );
        let s = j.snapshot();
        assert_eq!((s.records, s.bad_records, s.lines, s.matched), (1, 0, 2, 1));
        // A source allowed only for web lines: any + line that is not a record.
        let mut j = Join::new(
            10,
            None,
            0,
            vec![Net::parse("127.0.0.1").unwrap()],
            vec![Net::parse("127.0.0.2").unwrap()],
        );
        assert_eq!(
            feed(&mut j, "127.0.0.2", b"+ odd format\n"),
            "+ odd format\n"
        );
        // From a pen-only source the same lines are bad records, and refused elsewhere.
        assert_eq!(feed(&mut j, "127.0.0.1", plus), "");
        assert_eq!(feed(&mut j, "127.0.0.9", plus), "");
        let s = j.snapshot();
        assert_eq!((s.lines, s.bad_records, s.refused), (1, 1, 1));
    }

    #[test]
    fn source_filters() {
        let mut j = Join::new(
            10,
            None,
            0,
            vec![Net::parse("127.0.0.1").unwrap()],
            vec![Net::parse("127.0.0.2").unwrap()],
        );
        feed(&mut j, "127.0.0.9", b"+ 6.6.6.6 127.0.0.2 GET / HTTP/1.1\n");
        feed(
            &mut j,
            "127.0.0.1",
            b"+ 10.0.0.1 127.0.0.2 GET / HTTP/1.1\n",
        );
        assert_eq!(feed(&mut j, "127.0.0.9", b"x \"GET / HTTP/1.1\"\n"), "");
        assert_eq!(
            feed(&mut j, "127.0.0.2", b"x \"GET / HTTP/1.1\"\n"),
            "10.0.0.1 \"GET / HTTP/1.1\"\n"
        );
        assert_eq!(j.snapshot().refused, 2);
    }
}

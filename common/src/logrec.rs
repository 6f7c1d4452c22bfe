//! pen's request records (logging.md §1.3, §1.4): the UDP record sent to penlogd and the
//! local file line read by the offline merge, with their writers (used by pen) and
//! parsers (used by penlogd). The byte layout is the compatibility contract of spec §5,
//! so the writers produce exactly what the original pen did.
//!
//! The parsers are stricter than the original's `sscanf`: the client and server of a UDP
//! record must be IP literals. penlogd never resolves names (spec §6: a name meant a
//! blocking DNS lookup per record, and an unresolvable one a segfault), and a client that
//! is not an address cannot be written into an access log.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;

use nom::bytes::complete::{tag, take_till, take_till1, take_while1};
use nom::character::complete::{digit1, space0};
use nom::combinator::{opt, recognize};
use nom::sequence::pair;
use nom::{IResult, Parser};

/// The largest UDP record pen sends, final LF included (spec §1.4).
pub const UDP_MAX: usize = 1024;

/// The most request bytes a local file line keeps (spec §1.3).
pub const FILE_REQUEST_MAX: usize = 100;

/// Appends the UDP record `+ CLIENT SERVER REQUEST\n` (logging.md §1.4): request cut at the first CR or LF, raw bytes kept, whole datagram at most 1024 bytes including the LF.
pub fn udp_record(
    out: &mut Vec<u8>,
    client: &dyn fmt::Display,
    server: &dyn fmt::Display,
    request: &[u8],
) {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "+ {client} {server} ");
    let room = (UDP_MAX - 1).saturating_sub(out.len() - start);
    let req = first_line(request);
    out.extend_from_slice(&req[..req.len().min(room)]);
    out.push(b'\n');
}

/// Appends the local file line `CLIENT EPOCH SERVER REQUEST\n` (logging.md §1.3): request cut at CR/LF, at most 100 bytes, bytes >= 0x80 become '.'.
pub fn file_line(
    out: &mut Vec<u8>,
    client: &dyn fmt::Display,
    epoch: i64,
    server: &dyn fmt::Display,
    request: &[u8],
) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{client} {epoch} {server} ");
    let req = first_line(&request[..request.len().min(FILE_REQUEST_MAX)]);
    out.extend(req.iter().map(|&b| if b >= 0x80 { b'.' } else { b }));
    out.push(b'\n');
}

/// The bytes before the first CR or LF.
fn first_line(request: &[u8]) -> &[u8] {
    match request.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(n) => &request[..n],
        None => request,
    }
}

/// A parsed UDP record: who asked (`client`), which backend served it (`server`), and the
/// request bytes (raw, without the final LF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub client: IpAddr,
    pub server: IpAddr,
    pub request: &'a [u8],
}

impl Record<'_> {
    /// Appends the record in its wire form (the inverse of [`Record::parse`]).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        udp_record(out, &self.client, &self.server, self.request);
    }

    /// Parses one datagram `+ CLIENT SERVER REQUEST[\n]`. As with the original's `scanf`,
    /// the blanks after `+` and between the addresses may be runs (or none after `+`);
    /// one blank separates the server from the request, which may be empty and ends at the
    /// first LF. IPv4-mapped IPv6 addresses are read as IPv4, so that a dual-stack pen and
    /// an IPv4 web server agree.
    pub fn parse(datagram: &[u8]) -> Result<Record<'_>, RecordError> {
        let (client, server, request) = match record_fields(datagram) {
            Ok((_, fields)) => fields,
            Err(_) => return Err(RecordError::Malformed),
        };
        let client = ip(client).ok_or_else(|| RecordError::bad("client", client))?;
        let server = ip(server).ok_or_else(|| RecordError::bad("server", server))?;
        Ok(Record {
            client,
            server,
            request,
        })
    }
}

impl fmt::Display for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let req = String::from_utf8_lossy(self.request);
        write!(f, "+ {} {} {req}", self.client, self.server)
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn token(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_till1(|b| is_blank(b) || b == b'\n').parse(i)
}

/// (client, server, request) tokens of a record.
type RecordFields<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn record_fields(i: &[u8]) -> IResult<&[u8], RecordFields<'_>> {
    let (i, _) = tag(&b"+"[..]).parse(i)?;
    let (i, _) = space0(i)?;
    let (i, client) = token(i)?;
    let (i, _) = take_while1(is_blank).parse(i)?;
    let (i, server) = token(i)?;
    let (i, _) = opt(tag(&b" "[..])).parse(i)?;
    let (i, request) = take_till(|b| b == b'\n').parse(i)?;
    Ok((i, (client, server, request)))
}

/// Parses an IP literal, reading IPv4-mapped IPv6 as IPv4.
pub fn ip(token: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(token) {
        return Some(IpAddr::V4(v4));
    }
    let text = std::str::from_utf8(token).ok()?;
    text.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// A fast path for the usual case, a plain dotted quad (penlogd parses one per record):
/// four decimal numbers 0..=255 of 1 to 3 digits without leading zeros.
fn dotted_quad(token: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = token.split(|&b| b == b'.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') {
            return None;
        }
        let mut n = 0u16;
        for &d in p {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u16::from(d - b'0');
        }
        *o = u8::try_from(n).ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(octets.into()),
    }
}

/// Why a datagram starting with `+` is not a usable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Not `+ CLIENT SERVER ...`: a field is missing.
    Malformed,
    /// The named field is not an IP address; `token` is its text (lossy, at most 64 bytes).
    BadAddress { field: &'static str, token: String },
}

impl RecordError {
    fn bad(field: &'static str, token: &[u8]) -> RecordError {
        let token = String::from_utf8_lossy(&token[..token.len().min(64)]).into_owned();
        RecordError::BadAddress { field, token }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Malformed => {
                write!(f, "malformed record (expected '+ CLIENT SERVER REQUEST')")
            }
            RecordError::BadAddress { field, token } => {
                write!(f, "{field} '{token}' is not an IP address")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// A parsed local file line `CLIENT EPOCH SERVER REQUEST` (spec §1.3). The client and
/// server are kept as text: for a Unix-socket listener or backend they are paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLine<'a> {
    pub client: &'a str,
    pub epoch: i64,
    pub server: &'a str,
    pub request: &'a [u8],
}

impl FileLine<'_> {
    /// Parses one line (with or without its LF). The request is everything after the
    /// server's single separating space and may be empty.
    pub fn parse(line: &[u8]) -> Option<FileLine<'_>> {
        let (_, (client, epoch, server, request)) = file_fields(line).ok()?;
        Some(FileLine {
            client: std::str::from_utf8(client).ok()?,
            epoch: std::str::from_utf8(epoch).ok()?.parse().ok()?,
            server: std::str::from_utf8(server).ok()?,
            request,
        })
    }

    /// Appends the line in its file form (the inverse of [`FileLine::parse`] for requests
    /// that `file_line` leaves unchanged).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        file_line(out, &self.client, self.epoch, &self.server, self.request);
    }
}

type FileFields<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn file_fields(i: &[u8]) -> IResult<&[u8], FileFields<'_>> {
    let sp = |i| tag(&b" "[..]).parse(i);
    let (i, client) = token(i)?;
    let (i, _) = sp(i)?;
    let (i, epoch) = recognize(pair(opt(tag(&b"-"[..])), digit1)).parse(i)?;
    let (i, _) = sp(i)?;
    let (i, server) = token(i)?;
    let (i, _) = opt(sp).parse(i)?;
    let (i, request) = take_till(|b| b == b'\n' || b == b'\r').parse(i)?;
    Ok((i, (client, epoch, server, request)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(client: &str, server: &str, request: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        udp_record(&mut out, &client, &server, request);
        out
    }

    #[test]
    fn udp_record_layout() {
        assert_eq!(
            rec("10.0.0.1", "10.0.0.2", b"GET / HTTP/1.0\r\nHost: x"),
            b"+ 10.0.0.1 10.0.0.2 GET / HTTP/1.0\n"
        );
        assert_eq!(
            rec("127.0.0.1", "127.0.0.1", b"\r\nGET"),
            b"+ 127.0.0.1 127.0.0.1 \n"
        );
        // Raw bytes survive (spec §1.4 capture).
        assert_eq!(
            rec(
                "127.0.0.1",
                "127.0.0.1",
                b"GET /caf\xc3\xa9\x01\tX HTTP/1.0\n"
            ),
            b"+ 127.0.0.1 127.0.0.1 GET /caf\xc3\xa9\x01\tX HTTP/1.0\n"
        );
    }

    #[test]
    fn udp_record_truncated_to_1024() {
        let long = [b"GET /".as_slice(), &[b'b'; 1100]].concat();
        let out = rec("127.0.0.1", "127.0.0.1", &long);
        assert_eq!(out.len(), UDP_MAX);
        assert!(out.ends_with(b"bbb\n"));
        let v6 = rec("2001:db8::1234:5678:9abc:def0", "2001:db8::1", &long);
        assert_eq!(v6.len(), UDP_MAX);
        // Appending keeps what was there.
        let mut out = b"xx".to_vec();
        udp_record(&mut out, &"1.2.3.4", &"5.6.7.8", &long);
        assert_eq!(out.len(), 2 + UDP_MAX);
    }

    #[test]
    fn file_line_layout() {
        let mut out = Vec::new();
        file_line(
            &mut out,
            &"127.0.0.1",
            1795236007,
            &"127.0.0.1",
            b"GET /caf\xc3\xa9\x01\tX HTTP/1.0\r\n",
        );
        assert_eq!(
            out,
            b"127.0.0.1 1795236007 127.0.0.1 GET /caf..\x01\tX HTTP/1.0\n"
        );
        out.clear();
        let long = [b"GET /".as_slice(), &[b'a'; 145], b" HTTP/1.0"].concat();
        file_line(&mut out, &"::1", 5, &"::1", &long);
        assert_eq!(out.len(), "::1 5 ::1 ".len() + FILE_REQUEST_MAX + 1);
        out.clear();
        file_line(&mut out, &"127.0.0.1", 7, &"127.0.0.1", b"\r\n");
        assert_eq!(out, b"127.0.0.1 7 127.0.0.1 \n");
    }

    #[test]
    fn record_round_trip() {
        for (c, s, r) in [
            ("10.0.0.1", "127.0.0.2", &b"GET /same HTTP/1.1"[..]),
            ("2001:db8::5", "::1", b"GET /v6 HTTP/1.1"),
            ("127.0.0.1", "127.0.0.1", b""),
            (
                "127.0.0.1",
                "127.0.0.1",
                b"GET /caf\xc3\xa9\x01\t\"q\" HTTP/1.0",
            ),
            ("127.0.0.1", "127.0.0.1", b" leading space"),
        ] {
            let wire = rec(c, s, r);
            let parsed = Record::parse(&wire).unwrap();
            assert_eq!(parsed.client, c.parse::<IpAddr>().unwrap());
            assert_eq!(parsed.server, s.parse::<IpAddr>().unwrap());
            assert_eq!(parsed.request, r);
            let mut again = Vec::new();
            parsed.write_to(&mut again);
            assert_eq!(again, wire);
        }
    }

    #[test]
    fn record_lenient_blanks_and_no_newline() {
        let r = Record::parse(b"+10.0.0.1 \t 10.0.0.2 GET /x").unwrap();
        assert_eq!(
            (r.client.to_string(), r.server.to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
        assert_eq!(r.request, b"GET /x");
        assert_eq!(
            Record::parse(b"+ 10.0.0.1 10.0.0.2\n").unwrap().request,
            b""
        );
        // Only the first line of the datagram counts.
        assert_eq!(
            Record::parse(b"+ 1.1.1.1 2.2.2.2 A\nB\n").unwrap().request,
            b"A"
        );
        // IPv4-mapped addresses are read as IPv4.
        let r = Record::parse(b"+ ::ffff:10.0.0.1 ::ffff:127.0.0.2 GET /\n").unwrap();
        assert_eq!(r.client, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.server, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.to_string(), "+ 10.0.0.1 127.0.0.2 GET /");
    }

    #[test]
    fn ip_literals() {
        for good in [
            "0.0.0.0",
            "1.2.3.4",
            "255.255.255.255",
            "::1",
            "2001:db8::5",
        ] {
            assert_eq!(ip(good.as_bytes()), Some(good.parse().unwrap()), "{good}");
        }
        for bad in [
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1..2.3",
            "",
            "a.b.c.d",
            "1.2.3.4 ",
        ] {
            assert_eq!(ip(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn record_errors() {
        assert_eq!(Record::parse(b""), Err(RecordError::Malformed));
        assert_eq!(Record::parse(b"+"), Err(RecordError::Malformed));
        assert_eq!(Record::parse(b"+ 10.0.0.1\n"), Err(RecordError::Malformed));
        assert_eq!(Record::parse(b"+ 10.0.0.1"), Err(RecordError::Malformed));
        assert_eq!(
            Record::parse(b"- 1.1.1.1 2.2.2.2 x"),
            Err(RecordError::Malformed)
        );
        let e = Record::parse(b"+ this looks like a web line\n").unwrap_err();
        assert_eq!(e.to_string(), "client 'this' is not an IP address");
        let e = Record::parse(b"+ 10.0.0.1 web.example GET /\n").unwrap_err();
        assert_eq!(
            e,
            RecordError::BadAddress {
                field: "server",
                token: "web.example".into()
            }
        );
        assert!(Record::parse(b"+ 10.0.0.1 \xff\xfe GET /\n").is_err());
        assert!(Record::parse(b"+ /run/pen.sock 10.0.0.1 GET /\n").is_err());
    }

    #[test]
    fn file_line_round_trip_and_errors() {
        let mut out = Vec::new();
        file_line(
            &mut out,
            &"10.0.0.1",
            1000000000,
            &"192.168.0.2",
            b"GET /x HTTP/1.0",
        );
        let l = FileLine::parse(&out).unwrap();
        assert_eq!(
            l,
            FileLine {
                client: "10.0.0.1",
                epoch: 1000000000,
                server: "192.168.0.2",
                request: b"GET /x HTTP/1.0"
            }
        );
        let mut again = Vec::new();
        l.write_to(&mut again);
        assert_eq!(again, out);
        assert_eq!(
            FileLine::parse(b"127.0.0.1 7 127.0.0.1 \n")
                .unwrap()
                .request,
            b""
        );
        assert_eq!(
            FileLine::parse(b"127.0.0.1 7 127.0.0.1").unwrap().request,
            b""
        );
        assert_eq!(
            FileLine::parse(b"::1 -5 /run/b.sock GET /").unwrap().epoch,
            -5
        );
        assert!(FileLine::parse(b"").is_none());
        assert!(FileLine::parse(b"127.0.0.1 x 127.0.0.1 GET").is_none());
        assert!(FileLine::parse(b"127.0.0.1 7").is_none());
        assert!(FileLine::parse(b"127.0.0.1 99999999999999999999999 1.1.1.1 GET").is_none());
    }
}

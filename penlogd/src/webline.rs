//! Access log lines as penlogd sees them (spec §3.3): the host field to replace, and the
//! quoted request to match on.
//!
//! The original took the text between the first two `"` (so Apache's `\"` ended it early)
//! and spliced at the first space even inside the quotes. Here the request ends at the
//! first *unescaped* quote and is unescaped the way Apache's `ap_escape_logitem` escaped
//! it, so it compares equal to the raw bytes pen recorded; and a line whose first space
//! comes after its first quote has no host field and is never rewritten.

/// What penlogd needs from one access log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebLine<'a> {
    /// Offset of the first space, which ends the host field; `None` when the line has no
    /// space before its request.
    pub host_end: Option<usize>,
    /// The request between the quotes, still escaped; `None` without a closed quote.
    pub request: Option<&'a [u8]>,
}

impl<'a> WebLine<'a> {
    /// Splits a line (without its LF).
    pub fn parse(line: &'a [u8]) -> WebLine<'a> {
        let quote = find(line, b'"');
        let space = find(&line[..quote.unwrap_or(line.len())], b' ');
        let host_end = match (space, quote) {
            (None, Some(_)) => None,
            (s, _) => s,
        };
        let request = quote.and_then(|q| quoted(&line[q + 1..]));
        WebLine { host_end, request }
    }
}

/// The position of the first `b` in `hay` (glibc's vectorised memchr: these scans were
/// the daemon's largest own cost when done a byte at a time).
pub fn find(hay: &[u8], b: u8) -> Option<usize> {
    // SAFETY: memchr reads at most hay.len() bytes from a valid slice.
    let p = unsafe { libc::memchr(hay.as_ptr().cast(), i32::from(b), hay.len()) };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

/// The text up to the first quote not escaped by a backslash.
fn quoted(s: &[u8]) -> Option<&[u8]> {
    let q = find(s, b'"')?;
    if find(&s[..q], b'\\').is_none() {
        return Some(&s[..q]);
    }
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(&s[..i]),
            _ => i += 1,
        }
    }
    None
}

/// True when `s` holds escapes that [`unescape`] would change.
pub fn has_escapes(s: &[u8]) -> bool {
    find(s, b'\\').is_some()
}

/// Undoes Apache's log escaping (`\"`, `\\`, `\xhh`, `\n`, `\r`, `\t`, `\b`, `\v`) into
/// `out`; an unknown or cut escape is kept as written.
pub fn unescape(s: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 >= s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match s[i + 1] {
            b'"' => (b'"', 2),
            b'\\' => (b'\\', 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'b' => (0x08, 2),
            b'v' => (0x0b, 2),
            b'x' => match (s.get(i + 2).and_then(hex), s.get(i + 3).and_then(hex)) {
                (Some(h), Some(l)) => ((h << 4) | l, 4),
                _ => (b'\\', 1),
            },
            _ => (b'\\', 1),
        };
        out.push(byte);
        i += used;
    }
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> (Option<usize>, Option<&[u8]>) {
        let w = WebLine::parse(s);
        (w.host_end, w.request)
    }

    fn unesc(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        unescape(s, &mut out);
        out
    }

    #[test]
    fn common_and_combined() {
        let common = b"127.0.0.1 - - [21/Nov/2026:04:44:32 +0000] \"GET /a.html HTTP/1.1\" 200 2";
        assert_eq!(parse(common), (Some(9), Some(&b"GET /a.html HTTP/1.1"[..])));
        let combined = b"127.0.0.1 - frank [21/Nov/2026:04:44:32 +0000] \"GET / HTTP/1.1\" 200 18 \"-\" \"curl/7.88.1\"";
        assert_eq!(parse(combined), (Some(9), Some(&b"GET / HTTP/1.1"[..])));
    }

    #[test]
    fn ipv6_host_field() {
        let l = b"2001:db8::5 - - [x] \"GET /v6client HTTP/1.1\" 200 1";
        assert_eq!(parse(l), (Some(11), Some(&b"GET /v6client HTTP/1.1"[..])));
    }

    #[test]
    fn odd_quoting() {
        // Apache escapes a quote in the URL; the request runs to the unescaped one.
        let l = br#"10.0.0.1 - - [x] "GET /a\"b\\ HTTP/1.1" 200 1"#;
        let (_, req) = parse(l);
        assert_eq!(req, Some(&br#"GET /a\"b\\ HTTP/1.1"#[..]));
        assert_eq!(unesc(req.unwrap()), br#"GET /a"b\ HTTP/1.1"#);
        // Empty request, and a lone quote.
        assert_eq!(parse(b"h - - [x] \"\" 400 0"), (Some(1), Some(&b""[..])));
        assert_eq!(parse(b"h - - [x] \"GET / 400 0"), (Some(1), None));
        // The first space inside the quotes: no host field to replace.
        assert_eq!(
            parse(b"nospace\"GET /abcdef HTTP/1.1\""),
            (None, Some(&b"GET /abcdef HTTP/1.1"[..]))
        );
        // A trailing backslash cannot escape past the end.
        assert_eq!(parse(b"h \"abc\\"), (Some(1), None));
    }

    #[test]
    fn lines_without_request() {
        assert_eq!(parse(b"just some text"), (Some(4), None));
        assert_eq!(parse(b"nospaces"), (None, None));
        assert_eq!(parse(b""), (None, None));
    }

    #[test]
    fn unescaping() {
        assert_eq!(
            unesc(br"GET /caf\xc3\xa9\x01\tX HTTP/1.0"),
            b"GET /caf\xc3\xa9\x01\tX HTTP/1.0"
        );
        assert_eq!(unesc(br"\XZZ\x4"), br"\XZZ\x4");
        assert_eq!(unesc(br"a\qb\"), br"a\qb\");
        assert_eq!(unesc(br"\n\r\b\v\\"), b"\n\r\x08\x0b\\");
        assert!(has_escapes(br"a\b") && !has_escapes(b"plain"));
        assert_eq!(find(b"abc", b'c'), Some(2));
        assert_eq!(find(b"", b'c'), None);
        assert_eq!(find(b"abc", b'd'), None);
    }
}

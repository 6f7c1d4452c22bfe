//! X-Forwarded-For insertion (pen.md §6) as a pure byte state machine over the
//! client→server stream.
//!
//! The original rewrote only a request head that sat whole inside one read, searched the
//! body for existing headers and wrote a NUL past its buffer (§13.2 #16). This version
//! follows the stream: it finds every request head of a keep-alive connection, wherever
//! the reads split it, skips bodies by `Content-Length` or chunked framing, and inserts
//! `X-Forwarded-Proto` then `X-Forwarded-For` just before the blank line that ends a
//! `GET`/`POST`/`HEAD` head, unless that head already carries them (kept untouched, as
//! the original). Anything it cannot follow (a malformed head, an upgrade, `CONNECT`)
//! switches it to pass-through for the rest of the connection: it never breaks a stream.

/// Where the inserter is in the request stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Before the first byte of a request (leading CR/LF between requests are skipped).
    RequestStart,
    /// Inside the request line.
    RequestLine,
    /// At the first byte of a header line (or of the blank line ending the head).
    LineStart,
    /// Inside a header name (before ':').
    Name,
    /// Inside a header value, up to the LF.
    Value,
    /// Saw CR of the blank line; expecting LF.
    BlankCr,
    /// Skipping `n` body bytes.
    Body(u64),
    /// Chunked body: reading a chunk-size line.
    ChunkSize,
    /// Chunked body: skipping the rest of the chunk-size line (extensions) to LF.
    ChunkExt,
    /// Chunked body: `n` chunk data bytes left.
    ChunkData(u64),
    /// Chunked body: the CRLF after chunk data.
    ChunkEnd,
    /// Chunked body: trailer section, at a line start.
    TrailerStart,
    /// Chunked body: inside a trailer line.
    Trailer,
    /// Gave up following the stream: forward everything unchanged.
    Passthrough,
}

/// Which header the current name turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Other,
    ForwardedFor,
    ForwardedProto,
    ContentLength,
    TransferEncoding,
    Upgrade,
}

const NAME_MAX: usize = 24;
const VALUE_MAX: usize = 24;

/// Per-connection inserter state: a few dozen bytes, no heap.
#[derive(Clone, Debug)]
pub struct XffState {
    at: At,
    /// The method of the current request is GET, POST or HEAD (case-insensitive).
    rewrite: bool,
    method: [u8; 8],
    method_len: u8,
    method_done: bool,
    has_xff: bool,
    has_xfp: bool,
    upgrade: bool,
    chunked: bool,
    content_length: u64,
    name: [u8; NAME_MAX],
    name_len: u8,
    known: Known,
    value: [u8; VALUE_MAX],
    value_len: u8,
    chunk_size: u64,
    chunk_digits: u8,
    /// Insert headers (`-H`), or only follow the requests (for the request log).
    insert: bool,
    /// The start of a request line that a read split; allocated only then.
    line: Vec<u8>,
}

impl Default for XffState {
    fn default() -> Self {
        XffState {
            at: At::RequestStart,
            rewrite: false,
            method: [0; 8],
            method_len: 0,
            method_done: false,
            has_xff: false,
            has_xfp: false,
            upgrade: false,
            chunked: false,
            content_length: 0,
            name: [0; NAME_MAX],
            name_len: 0,
            known: Known::Other,
            value: [0; VALUE_MAX],
            value_len: 0,
            chunk_size: 0,
            chunk_digits: 0,
            insert: true,
            line: Vec::new(),
        }
    }
}

/// What the scanner found in a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete request line (without CR/LF), however the reads split it: one per
    /// request head, for the request log.
    Request(&'a [u8]),
    /// Headers are to be inserted here.
    Insert(Insert),
}

/// The most bytes of a request line kept across reads (a log record holds less).
const LINE_MAX: usize = 1024;

/// What to insert at one offset of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insert {
    /// Offset in the chunk before which the headers go.
    pub at: usize,
    /// Whether `X-Forwarded-Proto` is to be inserted.
    pub proto: bool,
    /// Whether `X-Forwarded-For` is to be inserted.
    pub xff: bool,
}

impl XffState {
    /// A scanner that inserts headers (`insert`, for `-H`) or only follows the requests.
    pub fn new(insert: bool) -> XffState {
        XffState {
            insert,
            ..XffState::default()
        }
    }

    /// True once the stream turned out not to be HTTP that can be followed (or was
    /// upgraded to something else): from then on the scanner reports nothing.
    pub fn gave_up(&self) -> bool {
        self.at == At::Passthrough
    }

    /// Scans one chunk read from the client and reports request starts and insertion
    /// points, in increasing offset order.
    pub fn scan(&mut self, chunk: &[u8], mut event: impl FnMut(Event)) {
        // Where the current request line starts in this chunk, if it is being read.
        let mut line_from = (self.at == At::RequestLine).then_some(0);
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.at {
                At::Passthrough => return,
                At::RequestStart => {
                    if b != b'\r' && b != b'\n' {
                        self.begin_request();
                        line_from = Some(i);
                        continue; // reprocess this byte in RequestLine
                    }
                }
                At::RequestLine => match b {
                    b'\n' => {
                        let from = line_from.take().unwrap_or(0);
                        let line: &[u8] = if self.line.is_empty() {
                            &chunk[from..i]
                        } else {
                            keep(&mut self.line, &chunk[from..i]);
                            &self.line
                        };
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        if !looks_like_request(line) || self.method_is(b"CONNECT") {
                            // Not HTTP we can follow (or a tunnel): stop here.
                            self.at = At::Passthrough;
                            return;
                        }
                        event(Event::Request(line));
                        self.line.clear();
                        self.rewrite = self.insert && self.method_is_rewritten();
                        self.at = At::LineStart;
                    }
                    b' ' => self.method_done = true,
                    _ if !self.method_done => {
                        let n = self.method_len as usize;
                        if n < self.method.len() {
                            self.method[n] = b.to_ascii_uppercase();
                        }
                        self.method_len = self.method_len.saturating_add(1);
                    }
                    _ => {}
                },
                At::LineStart => match b {
                    b'\r' => {
                        self.emit_insert(i, &mut event);
                        self.at = At::BlankCr;
                    }
                    b'\n' => {
                        self.emit_insert(i, &mut event);
                        self.end_head();
                    }
                    b' ' | b'\t' => self.at = At::Value, // obsolete line folding: a value
                    _ => {
                        self.name_len = 0;
                        self.known = Known::Other;
                        self.at = At::Name;
                        continue;
                    }
                },
                At::Name => match b {
                    b':' => {
                        self.known = self.classify();
                        self.value_len = 0;
                        self.at = At::Value;
                    }
                    b'\n' => {
                        // A header line without a colon: not HTTP we can follow.
                        self.at = At::Passthrough;
                        return;
                    }
                    _ => {
                        let n = self.name_len as usize;
                        if n < NAME_MAX {
                            self.name[n] = b.to_ascii_lowercase();
                        }
                        self.name_len = self.name_len.saturating_add(1);
                    }
                },
                At::Value => match b {
                    b'\n' => {
                        self.finish_header();
                        if self.at == At::Passthrough {
                            return;
                        }
                        self.at = At::LineStart;
                    }
                    b'\r' => {}
                    _ => {
                        let n = self.value_len as usize;
                        if n < VALUE_MAX && !(n == 0 && (b == b' ' || b == b'\t')) {
                            self.value[n] = b.to_ascii_lowercase();
                            self.value_len += 1;
                        } else if n >= VALUE_MAX {
                            self.value_len = u8::MAX; // too long to be a value we act on
                        }
                    }
                },
                At::BlankCr => {
                    if b != b'\n' {
                        self.at = At::Passthrough;
                        return;
                    }
                    self.end_head();
                }
                At::Body(n) => {
                    let take = (chunk.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    self.at = if left == 0 {
                        At::RequestStart
                    } else {
                        At::Body(left)
                    };
                    continue;
                }
                At::ChunkSize => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.chunk_digits += 1;
                        if self.chunk_digits > 15 {
                            self.at = At::Passthrough;
                            return;
                        }
                        self.chunk_size = self.chunk_size * 16 + d;
                    }
                    b';' | b' ' | b'\t' | b'\r' => self.at = At::ChunkExt,
                    b'\n' => self.chunk_line_done(),
                    _ => {
                        self.at = At::Passthrough;
                        return;
                    }
                },
                At::ChunkExt => {
                    if b == b'\n' {
                        self.chunk_line_done();
                    }
                }
                At::ChunkData(n) => {
                    let take = (chunk.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    self.at = if left == 0 {
                        At::ChunkEnd
                    } else {
                        At::ChunkData(left)
                    };
                    continue;
                }
                At::ChunkEnd => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.start_chunk();
                        self.at = At::ChunkSize;
                    }
                    _ => {
                        self.at = At::Passthrough;
                        return;
                    }
                },
                At::TrailerStart => match b {
                    b'\r' => {}
                    b'\n' => self.at = At::RequestStart,
                    _ => self.at = At::Trailer,
                },
                At::Trailer => {
                    if b == b'\n' {
                        self.at = At::TrailerStart;
                    }
                }
            }
            i += 1;
        }
        if let (At::RequestLine, Some(from)) = (self.at, line_from) {
            keep(&mut self.line, &chunk[from..]);
        }
    }

    fn begin_request(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        *self = XffState {
            at: At::RequestLine,
            insert: self.insert,
            line,
            ..XffState::default()
        };
    }

    fn method_is(&self, m: &[u8]) -> bool {
        let n = self.method_len as usize;
        n == m.len() && n <= self.method.len() && &self.method[..n] == m
    }

    fn method_is_rewritten(&self) -> bool {
        self.method_is(b"GET") || self.method_is(b"POST") || self.method_is(b"HEAD")
    }

    fn classify(&self) -> Known {
        let n = self.name_len as usize;
        if n > NAME_MAX {
            return Known::Other;
        }
        match &self.name[..n] {
            b"x-forwarded-for" => Known::ForwardedFor,
            b"x-forwarded-proto" => Known::ForwardedProto,
            b"content-length" => Known::ContentLength,
            b"transfer-encoding" => Known::TransferEncoding,
            b"upgrade" => Known::Upgrade,
            _ => Known::Other,
        }
    }

    fn finish_header(&mut self) {
        let v = if self.value_len as usize <= VALUE_MAX {
            let mut v = &self.value[..self.value_len as usize];
            while let [rest @ .., b' ' | b'\t'] = v {
                v = rest;
            }
            Some(v)
        } else {
            None
        };
        match self.known {
            Known::ForwardedFor => self.has_xff = true,
            Known::ForwardedProto => self.has_xfp = true,
            Known::Upgrade => self.upgrade = true,
            Known::ContentLength => {
                let parsed = v.and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
                match parsed {
                    Some(n) => self.content_length = n,
                    None => self.at = At::Passthrough,
                }
            }
            Known::TransferEncoding => match v {
                Some(v) if v.ends_with(b"chunked") => self.chunked = true,
                Some(b"identity") => {}
                _ => self.at = At::Passthrough,
            },
            Known::Other => {}
        }
    }

    fn emit_insert(&mut self, at: usize, event: &mut impl FnMut(Event)) {
        if self.rewrite && (!self.has_xff || !self.has_xfp) {
            event(Event::Insert(Insert {
                at,
                proto: !self.has_xfp,
                xff: !self.has_xff,
            }));
        }
        // Never insert twice into one head, even if the blank line is odd.
        self.rewrite = false;
    }

    fn end_head(&mut self) {
        self.at = if self.upgrade {
            At::Passthrough
        } else if self.chunked {
            self.start_chunk();
            At::ChunkSize
        } else if self.content_length > 0 {
            At::Body(self.content_length)
        } else {
            At::RequestStart
        };
    }

    fn start_chunk(&mut self) {
        self.chunk_size = 0;
        self.chunk_digits = 0;
    }

    fn chunk_line_done(&mut self) {
        if self.chunk_digits == 0 {
            self.at = At::Passthrough;
        } else if self.chunk_size == 0 {
            self.at = At::TrailerStart;
        } else {
            self.at = At::ChunkData(self.chunk_size);
        }
    }
}

/// Appends `bytes` to a split request line, up to [`LINE_MAX`].
fn keep(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = LINE_MAX.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Whether a line is an HTTP/1 request line: a method token of at most 20 letters, a
/// space, a target, and ` HTTP/d.d` at the end (not checked on a line cut at
/// [`LINE_MAX`]). Binary and other line protocols (SMTP, SSH, POP…) fail this at once.
fn looks_like_request(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = (1..=20).contains(&sp) && line[..sp].iter().all(|b| b.is_ascii_alphabetic());
    if !method || line.len() <= sp + 1 {
        return false;
    }
    if line.len() >= LINE_MAX {
        return true;
    }
    matches!(line, [.., b' ', b'H', b'T', b'T', b'P', b'/', d, b'.', e]
        if d.is_ascii_digit() && e.is_ascii_digit())
}

/// Writes the headers of `ins` for `client` into `out` (`X-Forwarded-Proto` first, as the
/// original orders them), each ending in CRLF, for insertion at the start of the blank
/// line that ends the head.
pub fn render(out: &mut Vec<u8>, ins: Insert, client: &dyn std::fmt::Display, https: bool) {
    use std::io::Write;
    if ins.proto {
        out.extend_from_slice(if https {
            b"X-Forwarded-Proto: https\r\n"
        } else {
            b"X-Forwarded-Proto: http\r\n"
        });
    }
    if ins.xff {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "X-Forwarded-For: {client}\r\n");
    }
}

/// Rewrites `chunk` into `out` (cleared first) with the headers inserted, and calls
/// `request` with each complete request line. Returns false, leaving `out` empty, when
/// nothing is to be inserted (forward `chunk` as it is).
pub fn rewrite(
    state: &mut XffState,
    chunk: &[u8],
    client: &dyn std::fmt::Display,
    https: bool,
    out: &mut Vec<u8>,
    mut request: impl FnMut(&[u8]),
) -> bool {
    out.clear();
    let mut copied = 0;
    let mut inserted = false;
    state.scan(chunk, |ev| match ev {
        Event::Request(line) => request(line),
        Event::Insert(ins) => {
            out.extend_from_slice(&chunk[copied..ins.at]);
            render(out, ins, client, https);
            copied = ins.at;
            inserted = true;
        }
    });
    if !inserted {
        return false;
    }
    out.extend_from_slice(&chunk[copied..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]]) -> Vec<u8> {
        let mut st = XffState::default();
        let mut all = Vec::new();
        let mut out = Vec::new();
        for p in pieces {
            if rewrite(&mut st, p, &"10.0.0.1", false, &mut out, |_| {}) {
                all.extend_from_slice(&out);
            } else {
                all.extend_from_slice(p);
            }
        }
        all
    }

    fn whole(s: &[u8]) -> Vec<u8> {
        run(&[s])
    }

    const XH: &str = "X-Forwarded-Proto: http\r\nX-Forwarded-For: 10.0.0.1\r\n";

    #[test]
    fn get_gets_both_headers_before_the_blank_line() {
        let out = whole(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.0\r\nHost: a\r\n{XH}\r\n")
        );
    }

    #[test]
    fn methods_are_case_insensitive_and_others_untouched() {
        let out = whole(b"get / HTTP/1.0\r\n\r\nBODY");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("get / HTTP/1.0\r\n{XH}\r\nBODY")
        );
        for m in ["PUT", "DELETE", "OPTIONS", "GETX"] {
            let req = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(whole(req.as_bytes()), req.as_bytes(), "{m}");
        }
    }

    #[test]
    fn existing_headers_are_kept_and_not_added_twice() {
        let req = b"POST / HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\nContent-Length: 0\r\n\r\n";
        let out = String::from_utf8(whole(req)).unwrap();
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nx-forwarded-for: 1.2.3.4\r\nContent-Length: 0\r\n\
             X-Forwarded-Proto: http\r\n\r\n"
        );
        let both =
            b"GET / HTTP/1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
        assert_eq!(whole(both), both);
    }

    #[test]
    fn body_text_is_not_mistaken_for_headers() {
        let req = b"POST / HTTP/1.1\r\nContent-Length: 26\r\n\r\nX-Forwarded-Proto: zz\r\n\r\n";
        let out = String::from_utf8(whole(req)).unwrap();
        assert_eq!(
            out,
            format!(
                "POST / HTTP/1.1\r\nContent-Length: 26\r\n{XH}\r\nX-Forwarded-Proto: zz\r\n\r\n"
            )
        );
    }

    #[test]
    fn lf_only_heads() {
        let out = String::from_utf8(whole(b"HEAD / HTTP/1.0\nHost: a\n\n")).unwrap();
        assert_eq!(out, format!("HEAD / HTTP/1.0\nHost: a\n{XH}\n"));
    }

    #[test]
    fn every_keepalive_request_and_pipelined_request_is_rewritten() {
        let one = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        let out = String::from_utf8(whole(format!("{one}{one}{one}").as_bytes())).unwrap();
        assert_eq!(out.matches("X-Forwarded-For: 10.0.0.1").count(), 3);
        let post = "POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let out = String::from_utf8(run(&[post.as_bytes(), one.as_bytes()])).unwrap();
        assert_eq!(out.matches("X-Forwarded-For").count(), 2);
        assert!(out.contains("\r\n\r\nhelloGET /a"));
    }

    #[test]
    fn split_at_every_byte_gives_exactly_one_header_per_request() {
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Other: 1\r\n\r\nPOST /y HTTP/1.1\r\n\
                    Content-Length: 3\r\n\r\nabcGET /z HTTP/1.0\n\n";
        let expect = whole(req);
        assert_eq!(
            String::from_utf8_lossy(&expect)
                .matches("X-Forwarded-For")
                .count(),
            3
        );
        for cut in 0..=req.len() {
            let got = run(&[&req[..cut], &req[cut..]]);
            assert_eq!(got, expect, "split at {cut}");
        }
        // And one byte per read.
        let bytes: Vec<&[u8]> = req.chunks(1).collect();
        assert_eq!(run(&bytes), expect);
    }

    #[test]
    fn chunked_bodies_are_skipped() {
        let req = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\
                    3;ext=1\r\nGET\r\n0\r\nTrailer: x\r\n\r\nGET /n HTTP/1.1\r\n\r\n";
        let out = String::from_utf8(whole(req)).unwrap();
        assert_eq!(out.matches("X-Forwarded-For").count(), 2, "{out}");
        assert!(out.contains("hello\r\n3;ext=1\r\nGET\r\n0\r\n"));
        for cut in 0..=req.len() {
            assert_eq!(
                run(&[&req[..cut], &req[cut..]]),
                out.as_bytes(),
                "split at {cut}"
            );
        }
    }

    #[test]
    fn garbage_and_upgrades_pass_through() {
        let junk = b"\x16\x03\x01\x00\xa5binary\nstuff\n\n";
        assert_eq!(whole(junk), junk);
        let up = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /notreally HTTP/1.1\r\n\r\n";
        let out = String::from_utf8(whole(up)).unwrap();
        assert_eq!(out.matches("X-Forwarded-For").count(), 1);
        let bad = b"GET / HTTP/1.1\r\nContent-Length: xyz\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let out = String::from_utf8(whole(bad)).unwrap();
        assert_eq!(out.matches("X-Forwarded-For").count(), 0);
    }

    fn lines(pieces: &[&[u8]], insert: bool) -> Vec<String> {
        let mut st = XffState::new(insert);
        let mut out = Vec::new();
        let mut got = Vec::new();
        for p in pieces {
            rewrite(&mut st, p, &"x", false, &mut out, |l| {
                got.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        got
    }

    #[test]
    fn one_request_line_per_request_however_split() {
        let req = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nGET \r\n\
                    get /c HTTP/1.0\n\n";
        let want = ["GET /a HTTP/1.1", "POST /b HTTP/1.1", "get /c HTTP/1.0"];
        assert_eq!(lines(&[req], true), want);
        for cut in 0..=req.len() {
            assert_eq!(
                lines(&[&req[..cut], &req[cut..]], false),
                want,
                "split at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = req.chunks(1).collect();
        assert_eq!(lines(&bytes, false), want);
    }

    #[test]
    fn following_only_never_inserts() {
        let mut st = XffState::new(false);
        let mut out = Vec::new();
        assert!(!rewrite(
            &mut st,
            b"GET / HTTP/1.1\r\n\r\n",
            &"x",
            false,
            &mut out,
            |_| {}
        ));
        assert!(!st.gave_up());
    }

    #[test]
    fn other_protocols_are_not_taken_for_requests() {
        for junk in [
            &b"\x16\x03\x01\x02\x00\n"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"+OK ready\r\n",
            b"HELO x\r\n",
        ] {
            let mut st = XffState::new(false);
            let mut out = Vec::new();
            let mut n = 0;
            rewrite(&mut st, junk, &"x", false, &mut out, |_| n += 1);
            assert!(st.gave_up() && n == 0, "{junk:?}");
        }
        // A request line longer than LINE_MAX is kept up to LINE_MAX.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(3000));
        let got = lines(&[&long.as_bytes()[..1500], &long.as_bytes()[1500..]], false);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), LINE_MAX);
    }

    #[test]
    fn https_and_ipv6_client() {
        let mut st = XffState::default();
        let mut out = Vec::new();
        let ip: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(rewrite(
            &mut st,
            b"GET / HTTP/1.1\r\n\r\n",
            &ip,
            true,
            &mut out,
            |_| {}
        ));
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("X-Forwarded-Proto: https\r\nX-Forwarded-For: ::ffff:127.0.0.1\r\n"));
    }
}

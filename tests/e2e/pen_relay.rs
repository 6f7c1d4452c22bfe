//! pen's forwarding: HTTP header insertion on keep-alive connections, half-close, large
//! transfers, address families, Unix sockets, the connection limit, `tcp_fastclose`,
//! isolation of broken connections, `idle_timeout` and the request log (pen.md §5, §6, §8.1).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::*;

// ---------------------------------------------------------------------------------------
// Helpers: backends, a deterministic byte pattern, and pen on other address families.

/// A tiny HTTP/1.1 keep-alive backend: it records every request head it receives, reads
/// the body by `Content-Length`, and answers `200 OK` with the body echoed (or `ok`).
struct HttpBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// Raw bytes read from all connections, to know when a write has arrived.
    received: Arc<AtomicUsize>,
}

impl HttpBackend {
    fn start() -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let (h, r) = (heads.clone(), received.clone());
        // The accept thread ends with the test process; the listener is never closed.
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let (h, r) = (h.clone(), r.clone());
                thread::spawn(move || serve_http(s, h, r));
            }
        });
        HttpBackend {
            addr,
            heads,
            received,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// Counts the bytes read from a socket.
struct Counting {
    s: TcpStream,
    n: Arc<AtomicUsize>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf)?;
        self.n.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

fn serve_http(s: TcpStream, heads: Arc<Mutex<Vec<String>>>, received: Arc<AtomicUsize>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(Counting { s, n: received });
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        heads.lock().unwrap().push(head);
        if body.is_empty() {
            body = b"ok".to_vec();
        }
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        if w.write_all(&resp).is_err() {
            return;
        }
    }
}

/// Reads one response (head and `Content-Length` body) from a keep-alive connection.
fn read_response(r: &mut impl BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading a response head: {e}; so far {head:?}"));
        assert!(n > 0, "connection closed inside a response head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (head, body)
}

/// A backend that says `name\n` to each connection, reads until EOF and then keeps its
/// socket open until the test ends: a server that never closes first.
struct HoldBackend {
    addr: SocketAddr,
    /// Connections whose EOF (from pen) it has read.
    eofs: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HoldBackend {
    fn start(name: &str) -> HoldBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let eofs = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, st, name) = (eofs.clone(), stop.clone(), format!("{name}\n"));
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let (e, st, name) = (e.clone(), st.clone(), name.clone());
                thread::spawn(move || {
                    let _ = s.write_all(name.as_bytes());
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    e.fetch_add(1, Ordering::SeqCst);
                    // Hold the socket open: only the end of the test releases it.
                    while !st.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        });
        HoldBackend { addr, eofs, stop }
    }
}

impl Drop for HoldBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Bytes of a deterministic pattern: blocks of a prime length, each a fixed pseudo-random
/// block whose first 8 bytes are the block number, so that a lost, repeated or reordered
/// piece is caught wherever the reads split the stream.
const BLOCK: usize = 65521;

fn block_base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| noise(BLOCK, 0x9e37_79b9_7f4a_7c15))
}

/// `len` pseudo-random bytes (xorshift64) from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Fills `out` with the pattern bytes starting at stream offset `off`.
fn pattern_fill(mut off: u64, out: &mut [u8]) {
    let base = block_base();
    let mut i = 0;
    while i < out.len() {
        let k = off / BLOCK as u64;
        let r = (off % BLOCK as u64) as usize;
        let n = (BLOCK - r).min(out.len() - i);
        out[i..i + n].copy_from_slice(&base[r..r + n]);
        if r < 8 {
            let m = (8 - r).min(n);
            out[i..i + m].copy_from_slice(&k.to_le_bytes()[r..r + m]);
        }
        i += n;
        off += n as u64;
    }
}

/// Checks that `data` is the pattern at offset `off`; returns the first bad offset.
fn pattern_check(off: u64, data: &[u8], scratch: &mut Vec<u8>) -> Result<(), u64> {
    scratch.resize(data.len(), 0);
    pattern_fill(off, scratch);
    if scratch[..] == *data {
        return Ok(());
    }
    let at = data.iter().zip(scratch.iter()).take_while(|(a, b)| a == b);
    Err(off + at.count() as u64)
}

/// Polls until a Unix socket at `path` accepts connections.
fn wait_for_unix(path: &Path, pen: &mut Proc) {
    let end = Instant::now() + DEADLINE;
    while UnixStream::connect(path).is_err() {
        if let Some(st) = pen.child.try_wait().unwrap() {
            panic!("pen exited with {st}:\n{}", pen.output());
        }
        assert!(
            Instant::now() < end,
            "nothing listening on {}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one line.
fn line_of(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

/// Writes `msg` and reads it back (the echo of a [`NameServer`], after its name line).
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Waits for the peer to close: a read returns EOF (or a reset). Returns how long it took.
fn wait_closed(s: &mut impl Read, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < limit,
            "connection still open after {limit:?}"
        );
    }
}

/// Asserts that nothing arrives on `s` for `quiet` and the connection stays open.
fn assert_waiting(s: &mut TcpStream, quiet: Duration) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("connection closed: it should wait in the backlog"),
        Ok(n) => panic!("served too early: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("connection failed instead of waiting: {e}"),
    }
    s.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// Runs four requests on one keep-alive connection from 127.0.0.2: a GET whose head comes
/// in two reads, a POST whose body comes in a later read, a GET with its own
/// X-Forwarded-For and one with a lower-case one.
fn keep_alive_session(pen: SocketAddr, be: &HttpBackend) {
    let mut w = connect_from("127.0.0.2", pen);
    let mut r = BufReader::new(w.try_clone().unwrap());
    // The backend must have read the first part before the second is sent: then pen read
    // them separately.
    let mut send_after_arrival = |parts: &[&[u8]]| {
        for p in parts {
            let before = be.received();
            w.write_all(p).unwrap();
            wait_until("the backend to receive a part", || {
                be.received() >= before + p.len()
            });
        }
    };
    send_after_arrival(&[
        b"GET /one HTTP/1.1\r\nHost: a\r\n",
        b"User-Agent: t\r\n\r\n",
    ]);
    assert_eq!(read_response(&mut r).1, b"ok");
    send_after_arrival(&[
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
        b"hello world",
    ]);
    assert_eq!(read_response(&mut r).1, b"hello world");
    send_after_arrival(&[b"GET /three HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"]);
    assert_eq!(read_response(&mut r).1, b"ok");
    send_after_arrival(&[b"HEAD /four HTTP/1.1\r\nx-forwarded-for: 5.6.7.8\r\n\r\n"]);
    assert_eq!(read_response(&mut r).1, b"ok");
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls a log file until it has at least `n` lines; returns them.
fn log_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lines = text.lines().map(str::to_string).collect();
        lines.len() >= n
    });
    lines
}

/// Splits `CLIENT EPOCH SERVER REQUEST` and checks the epoch is within [from, to].
fn check_log_line(line: &str, from: i64, to: i64) -> String {
    let mut f = line.splitn(4, ' ');
    let (client, epoch, server, request) = (
        f.next().unwrap(),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
    );
    let epoch: i64 = epoch
        .parse()
        .unwrap_or_else(|_| panic!("bad epoch in {line:?}"));
    assert!(
        (from..=to).contains(&epoch),
        "epoch {epoch} not in {from}..={to}: {line:?}"
    );
    format!("{client} {server} {request}")
}

// ---------------------------------------------------------------------------------------
// Tests.

/// `-H`: every request head of a keep-alive connection gets exactly one
/// `X-Forwarded-Proto: http` then `X-Forwarded-For: <client>` before its blank line, however
/// the reads split it; a body is not touched; an existing X-Forwarded-For is kept alone.
#[test]
fn xff_on_every_keep_alive_request() {
    let be = HttpBackend::start();
    let (_pen, addr) = start_pen(&["-f", "-H", "127.0.0.1:{port}", &be.addr.to_string()]);
    keep_alive_session(addr, &be);
    assert_eq!(
        be.heads(),
        vec![
            "GET /one HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.2\r\n\r\n",
            "POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.2\r\n\r\n",
            "GET /three HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\
             X-Forwarded-Proto: http\r\n\r\n",
            "HEAD /four HTTP/1.1\r\nx-forwarded-for: 5.6.7.8\r\nX-Forwarded-Proto: http\r\n\r\n",
        ]
    );
}

/// A client that sends its request and shuts down writing still gets the whole response
/// the backend writes after reading EOF (the original lost 3 of 5: §13.2 #1).
#[test]
fn half_close_keeps_the_response() {
    const RESPONSE: usize = 300_000;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).is_err() || req.is_empty() {
                    return; // pen's readiness probe
                }
                let mut resp = vec![0u8; RESPONSE];
                pattern_fill(0, &mut resp);
                let _ = s.write_all(&resp);
            });
        }
    });
    let (_pen, addr) = start_pen(&["-f", "127.0.0.1:{port}", &backend.to_string()]);
    let mut scratch = Vec::new();
    for i in 0..10 {
        let mut s = connect_from("127.0.0.2", addr);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("round {i}: {e} after {} bytes", got.len()));
        assert_eq!(got.len(), RESPONSE, "round {i}: response length");
        assert_eq!(pattern_check(0, &got, &mut scratch), Ok(()), "round {i}");
    }
}

/// 100 MiB each way, at once, byte-exact: an upload checked by the backend as it reads,
/// and a download checked by the client.
#[test]
fn large_transfers_both_ways() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut op = [0u8; 1];
                if s.read_exact(&mut op).is_err() {
                    return; // pen's readiness probe
                }
                let mut buf = vec![0u8; 1 << 20];
                let mut scratch = Vec::new();
                match op[0] {
                    b'U' => {
                        let mut off = 0u64;
                        let mut bad = None;
                        loop {
                            let n = match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if bad.is_none() {
                                bad = pattern_check(off, &buf[..n], &mut scratch).err();
                            }
                            off += n as u64;
                        }
                        let _ = writeln!(s, "{off} {bad:?}");
                    }
                    b'D' => {
                        let mut len = [0u8; 8];
                        s.read_exact(&mut len).unwrap();
                        let len = u64::from_le_bytes(len);
                        let mut off = 0;
                        while off < len {
                            let n = (len - off).min(buf.len() as u64) as usize;
                            pattern_fill(off, &mut buf[..n]);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                            off += n as u64;
                        }
                    }
                    _ => {}
                }
            });
        }
    });
    let (_pen, addr) = start_pen(&["-f", "127.0.0.1:{port}", &backend.to_string()]);
    let start = Instant::now();
    let upload = thread::spawn(move || {
        let mut s = connect_from("127.0.0.2", addr);
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(b"U").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < SIZE {
            let n = (SIZE - off).min(buf.len() as u64) as usize;
            pattern_fill(off, &mut buf[..n]);
            s.write_all(&buf[..n]).unwrap();
            off += n as u64;
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    });
    let download = thread::spawn(move || {
        let mut s = connect_from("127.0.0.3", addr);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(b"D").unwrap();
        s.write_all(&SIZE.to_le_bytes()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut scratch = Vec::new();
        let (mut off, mut bad) = (0u64, None);
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => panic!("download: {e} at {off}"),
            };
            if bad.is_none() {
                bad = pattern_check(off, &buf[..n], &mut scratch).err();
            }
            off += n as u64;
        }
        (off, bad)
    });
    assert_eq!(upload.join().unwrap(), format!("{SIZE} None\n"), "upload");
    assert_eq!(download.join().unwrap(), (SIZE, None), "download");
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "took {:?}",
        start.elapsed()
    );
}

/// pen on `[::1]` in front of an IPv4 backend, and on 127.0.0.1 in front of `[::1]:port`.
#[test]
fn ipv6_and_ipv4_both_ways() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 cannot be bound here; skipping the IPv6 test");
        return;
    }
    let four = NameServer::start("four");
    let (_pen6, addr6) = start_pen_at(
        "::1".parse().unwrap(),
        &["-f", "[::1]:{port}", &four.spec()],
    );
    let mut s = TcpStream::connect(addr6).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(line_of(&mut r), "four\n");
    s.write_all(b"over six\n").unwrap();
    assert_eq!(line_of(&mut r), "over six\n");

    let six = NameServer::start_on("[::1]:0", "six");
    let spec = format!("[::1]:{}", six.addr.port());
    let (_pen4, addr4) = start_pen(&["-f", "127.0.0.1:{port}", &spec]);
    let (name, mut s) = hello_from("127.0.0.2", addr4);
    assert_eq!(name, "six");
    echo(&mut s, b"over four\n");
}

/// `transparent`: pen connects to the backend from the client's own address (loopback
/// addresses need no privilege; elsewhere IP_TRANSPARENT does); after `no transparent`,
/// from its own again.
#[test]
fn transparent_connects_from_the_client_address() {
    let backend = peer_echo().to_string();
    let (_pen, addr, ctl) = pen_with_control(&["-O", "transparent"], &[&backend]);
    for from in ["127.0.0.2", "127.0.0.3"] {
        let seen: SocketAddr = which_from(from, addr).parse().unwrap();
        assert_eq!(seen.ip().to_string(), from);
    }
    penctl(&ctl, "no transparent");
    let seen: SocketAddr = which_from("127.0.0.2", addr).parse().unwrap();
    assert_eq!(seen.ip().to_string(), "127.0.0.1");
}

/// A Unix listening socket in front of a TCP backend (with its explicit port), and a TCP
/// listener in front of a Unix-socket backend.
#[test]
fn unix_sockets_both_sides() {
    let dir = temp_dir("unix");
    let tcp = NameServer::start("tcp");
    let sock = dir.join("pen.sock");
    let mut pen = Proc::start("pen", &["-f", sock.to_str().unwrap(), &tcp.spec()]);
    wait_for_unix(&sock, &mut pen);
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(line_of(&mut r), "tcp\n");
    s.write_all(b"via unix\n").unwrap();
    assert_eq!(line_of(&mut r), "via unix\n");

    let bsock = dir.join("b.sock");
    let listener = UnixListener::bind(&bsock).unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.write_all(b"unix\n");
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (_pen2, addr) = start_pen(&["-f", "127.0.0.1:{port}", bsock.to_str().unwrap()]);
    let (name, mut s) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "unix");
    echo(&mut s, b"to unix\n");
}

/// `-x 1`: a second client is not refused; it waits in the kernel backlog and is served
/// as soon as the first connection is closed on both ends (pen.md §5.1).
#[test]
fn connection_limit_queues_in_the_backlog() {
    let ns = NameServer::start("one");
    let (_pen, addr) = start_pen(&["-f", "-x", "1", "127.0.0.1:{port}", &ns.spec()]);
    let (name, mut first) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "one");
    let mut second = connect_from("127.0.0.3", addr);
    let accepted = ns.accepted.load(Ordering::SeqCst);
    assert_waiting(&mut second, Duration::from_millis(400));
    assert_eq!(
        ns.accepted.load(Ordering::SeqCst),
        accepted,
        "second client forwarded"
    );
    echo(&mut first, b"still served\n");
    // The backend echoes until EOF and then closes: both ends close.
    drop(first);
    let mut r = BufReader::new(second.try_clone().unwrap());
    assert_eq!(line_of(&mut r), "one\n");
    echo(&mut second, b"second\n");
}

/// `-x 1 -O "tcp_fastclose down"`: the client closes while the backend keeps its socket
/// open, and the slot is freed at once (pen.md §5.3).
#[test]
fn fastclose_down_frees_the_slot() {
    let hold = HoldBackend::start("hold");
    let spec = hold.addr.to_string();
    let (_pen, addr) = start_pen(&[
        "-f",
        "-x",
        "1",
        "-O",
        "tcp_fastclose down",
        "127.0.0.1:{port}",
        &spec,
    ]);
    let (name, first) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "hold");
    let mut second = connect_from("127.0.0.3", addr);
    assert_waiting(&mut second, Duration::from_millis(300));
    drop(first);
    let mut r = BufReader::new(second);
    assert_eq!(line_of(&mut r), "hold\n");
    // pen closed its backend socket, so the backend saw EOF on the first connection.
    wait_until("the backend to see pen's close", || {
        hold.eofs.load(Ordering::SeqCst) >= 1
    });
}

/// A backend reset ends only its own connection; garbage from a client (also in `-H`
/// mode) only affects that client.
#[test]
fn broken_connections_affect_only_themselves() {
    // A backend that echoes, and resets the connection when it reads "RESET".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if buf[..n].windows(5).any(|w| w == b"RESET") {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        return; // dropped with linger 0: RST
                    }
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (mut pen, addr) = start_pen(&["-f", "127.0.0.1:{port}", &backend.to_string()]);
    let mut a = connect_from("127.0.0.2", addr);
    let mut b = connect_from("127.0.0.3", addr);
    echo(&mut a, b"a1");
    echo(&mut b, b"b1");
    a.write_all(b"RESET").unwrap();
    wait_closed(&mut a, DEADLINE);
    echo(&mut b, b"b2 after the reset");
    let mut c = connect_from("127.0.0.2", addr);
    echo(&mut c, b"c1");
    assert!(pen.child.try_wait().unwrap().is_none());

    // -H mode with an echo backend: garbage clients next to a keep-alive client.
    let ns = NameServer::start("echo");
    let (mut hpen, haddr) = start_pen(&["-f", "-H", "127.0.0.1:{port}", &ns.spec()]);
    let mut good = connect_from("127.0.0.2", haddr);
    let mut gr = BufReader::new(good.try_clone().unwrap());
    assert_eq!(line_of(&mut gr), "echo\n");
    let request = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, path: &str| {
        write!(w, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let want = format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-For: 127.0.0.2\r\n\r\n"
        );
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    };
    request(&mut good, &mut gr, "/before");
    // Random bytes are not HTTP: forwarded unchanged, both ways.
    let junk = noise(200_000, 7);
    let g = connect_from("127.0.0.3", haddr);
    let mut gr2 = BufReader::new(g.try_clone().unwrap());
    assert_eq!(line_of(&mut gr2), "echo\n");
    let j = junk.clone();
    let mut gw = g.try_clone().unwrap();
    let writer = thread::spawn(move || gw.write_all(&j).unwrap());
    let mut back = vec![0u8; junk.len()];
    gr2.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == junk, "random bytes were altered in -H mode");
    g.shutdown(Shutdown::Both).unwrap();
    // Malformed heads: whatever pen does with them, it is their business.
    let nasty: Vec<Vec<u8>> = vec![
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\nxx".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n".to_vec(),
        [&b"GET / HTTP/1.1\r\n"[..], &[b'h'; 50_000], b"\r\n\r\n"].concat(),
        [&b"GET /"[..], &[b'a'; 100_000], b" HTTP/1.1\r\n\r\n"].concat(),
        [&b"GET / HTTP/1.1\r\n"[..], &noise(40_000, 11)].concat(),
        b"\r\n\r\n\n\n\r\rGET\r\n\r\n\0\0\0".to_vec(),
    ];
    for bytes in nasty {
        let s = connect_from("127.0.0.3", haddr);
        let mut w = s.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut sink = Vec::new();
            let mut s = s;
            let _ = s.read_to_end(&mut sink);
        });
        let _ = w.write_all(&bytes);
        let _ = w.shutdown(Shutdown::Write);
        reader.join().unwrap();
        request(&mut good, &mut gr, "/during");
    }
    let mut fresh = connect_from("127.0.0.2", haddr);
    let mut fr = BufReader::new(fresh.try_clone().unwrap());
    assert_eq!(line_of(&mut fr), "echo\n");
    request(&mut fresh, &mut fr, "/after");
    request(&mut good, &mut gr, "/after");
    assert!(hpen.child.try_wait().unwrap().is_none(), "pen died");
    assert!(pen.child.try_wait().unwrap().is_none(), "pen died");
}

/// `idle_timeout 1`: an idle connection is closed by pen within a few seconds, and so is
/// a half-closed one (the original never swept those: §13.2 #10).
#[test]
fn idle_timeout_closes_idle_and_half_closed() {
    let hold = HoldBackend::start("hold");
    let spec = hold.addr.to_string();
    let (_pen, addr) = start_pen(&["-f", "-O", "idle_timeout 1", "127.0.0.1:{port}", &spec]);
    let start = Instant::now();
    let (name, idle) = hello_from("127.0.0.2", addr);
    assert_eq!(name, "hold");
    let (name, half) = hello_from("127.0.0.3", addr);
    assert_eq!(name, "hold");
    half.shutdown(Shutdown::Write).unwrap();
    let idle_t = thread::spawn(move || {
        let mut idle = idle;
        wait_closed(&mut idle, Duration::from_secs(8))
    });
    let mut half = half;
    wait_closed(&mut half, Duration::from_secs(8));
    let half_at = start.elapsed();
    idle_t.join().unwrap();
    let idle_at = start.elapsed();
    assert!(
        half_at >= Duration::from_millis(900),
        "closed too early: {half_at:?}"
    );
    assert!(
        idle_at >= Duration::from_millis(900),
        "closed too early: {idle_at:?}"
    );
}

/// `-l FILE`: one line `CLIENT EPOCH SERVER REQUEST` per request, written promptly (the
/// original buffered until HUP: §13.2 #25); with `-H`, one line per request head of a
/// keep-alive connection, not one per read.
#[test]
fn request_log_file() {
    let dir = temp_dir("reqlog");
    let log = dir.join("pen.log");
    let logs = log.to_str().unwrap();
    let ns = NameServer::start("x");
    let from = now_epoch();
    let (_pen, addr) = start_pen(&["-f", "-l", logs, "127.0.0.1:{port}", &ns.spec()]);
    let (_, mut s) = hello_from("127.0.0.2", addr);
    echo(&mut s, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let lines = log_lines(&log, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        check_log_line(&lines[0], from, now_epoch()),
        "127.0.0.2 127.0.0.1 GET /x HTTP/1.1"
    );

    let hlog = dir.join("http.log");
    let be = HttpBackend::start();
    let (_hpen, haddr) = start_pen(&[
        "-f",
        "-H",
        "-l",
        hlog.to_str().unwrap(),
        "127.0.0.1:{port}",
        &be.addr.to_string(),
    ]);
    let from = now_epoch();
    keep_alive_session(haddr, &be);
    let to = now_epoch();
    let lines = log_lines(&hlog, 4);
    let got: Vec<String> = lines.iter().map(|l| check_log_line(l, from, to)).collect();
    assert_eq!(
        got,
        vec![
            "127.0.0.2 127.0.0.1 GET /one HTTP/1.1",
            "127.0.0.2 127.0.0.1 POST /two HTTP/1.1",
            "127.0.0.2 127.0.0.1 GET /three HTTP/1.1",
            "127.0.0.2 127.0.0.1 HEAD /four HTTP/1.1",
        ]
    );
}

/// `-l HOST:PORT`: one UDP record `+ CLIENT SERVER REQUEST\n` per request (pen.md §8.1).
#[test]
fn request_log_udp() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(DEADLINE)).unwrap();
    let target = sink.local_addr().unwrap().to_string();
    let ns = NameServer::start("x");
    let (_pen, addr) = start_pen(&["-f", "-l", &target, "127.0.0.1:{port}", &ns.spec()]);
    let (_, mut s) = hello_from("127.0.0.2", addr);
    echo(&mut s, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut buf = [0u8; 2048];
    let n = sink.recv(&mut buf).expect("a log datagram");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        "+ 127.0.0.2 127.0.0.1 GET /x HTTP/1.1\n"
    );
}

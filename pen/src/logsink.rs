//! The request log (pen.md §8.1, logging.md §1): a local file in the original's line
//! format, or UDP records to penlogd.
//!
//! Fixes over the original: records are flushed at the end of every loop pass instead of
//! sitting in a stdio buffer until HUP (§13.2 #25); `no log` stops UDP records too and
//! `log` reports the whole `host:port` (#26); the network target may be IPv6; a send that
//! would block drops the record and counts it instead of stalling the loop; a target that
//! cannot be opened at run time is an error reply, not a fatal exit.
//!
//! The file target is opened non-blocking, so a pipe or FIFO (`-l /dev/stdout` under a
//! log collector, `-l /run/pen/log.fifo`) whose reader falls behind never stalls traffic:
//! what it cannot take yet is kept, up to [`MAX_BACKLOG`] bytes, and written on a later
//! pass; records beyond that are dropped and counted. A FIFO with no reader yet is opened
//! all the same (the original waited in `open` for one, with traffic stopped). A regular
//! file is not affected: its writes never return "would block".

use std::fmt::{self, Display};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;

use common::addr::{parse_port, resolve, split_host_port, Proto};
use common::logrec;
use common::net::Endpoint;

/// Bytes of records kept for a pipe or FIFO whose reader is behind.
pub const MAX_BACKLOG: usize = 256 << 10;

/// A log target that could not be opened, with the reason.
#[derive(Debug)]
pub struct LogError(pub String);

impl Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

enum Target {
    File {
        file: File,
    },
    /// `v6`: the target address is IPv6, so the receiver is a new penlogd.
    Net {
        sock: UdpSocket,
        v6: bool,
    },
}

/// The request log sink. Off until [`LogSink::open`] succeeds.
#[derive(Default)]
pub struct LogSink {
    /// The target as the user wrote it (`log` replies with it).
    name: Option<String>,
    target: Option<Target>,
    /// Records waiting to be written to the file target.
    buf: Vec<u8>,
    /// The file target (a pipe) could not take all of `buf` at the last flush.
    behind: bool,
    /// The last write to the file target failed (reported once until one succeeds).
    failing: bool,
    /// Scratch for one UDP record.
    dgram: Vec<u8>,
    /// Records written or sent, and records dropped (full socket buffer, send error).
    pub records: u64,
    pub dropped: u64,
    /// Records withheld because their server is not IPv4 and the target is (see
    /// [`LogSink::sends_server`]); warned about once.
    pub skipped: u64,
    warned_skip: bool,
}

/// The host of a network log target `HOST:PORT`, or `None` for a file.
pub fn network_host(spec: &str) -> Option<&str> {
    network_spec(spec).and_then(|(host, _)| host)
}

/// Whether `spec` names a network target: `host:port` or `[v6]:port` with a numeric
/// port, not a path. The original took any name with a colon (so `logs:today` became a
/// host); a file name with a colon can still be written `./logs:514`.
fn network_spec(spec: &str) -> Option<(Option<&str>, &str)> {
    if spec.starts_with('/') || spec.starts_with('.') {
        return None;
    }
    let (host, port) = split_host_port(spec).ok()?;
    if host.is_none() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, port))
}

impl LogSink {
    /// Opens `spec` as the new target, replacing the current one. On error the current
    /// target stays.
    pub fn open(&mut self, spec: &str) -> Result<(), LogError> {
        let target = match network_spec(spec) {
            Some((host, port)) => {
                let err = |e: String| LogError(format!("can't log to '{spec}': {e}"));
                let port = parse_port(port, Proto::Udp).map_err(err)?;
                let addr = resolve(host, port).map_err(|e| err(e.problem))?;
                let sock = udp_to(addr).map_err(|e| err(e.to_string()))?;
                Target::Net {
                    sock,
                    v6: addr.is_ipv6(),
                }
            }
            None => {
                let file = open_file(spec)
                    .map_err(|e| LogError(format!("can't open logfile '{spec}': {e}")))?;
                Target::File { file }
            }
        };
        self.flush();
        self.target = Some(target);
        self.name = Some(spec.to_string());
        Ok(())
    }

    /// Stops logging to any target (`no log`). Records a pipe had not taken yet are
    /// counted as dropped.
    pub fn stop(&mut self) {
        self.flush();
        self.dropped += self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.buf.clear();
        self.behind = false;
        self.target = None;
        self.name = None;
    }

    /// The target as given, if logging is on.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// True when records are wanted (saves formatting work otherwise).
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// Whether records naming this server may be sent. The original penlogd crashes on a
    /// server field that is not an IPv4 address (logging.md §5), and it can only listen on
    /// IPv4; so over an IPv4 target only IPv4 servers are sent (an IPv4-mapped address is
    /// written as a dotted quad by [`ServerAddr`]), and over IPv6 everything is. The file
    /// target takes everything.
    pub fn sends_server(&self, server: &Endpoint) -> bool {
        match (&self.target, server) {
            (Some(Target::Net { v6: false, .. }), Endpoint::Inet(a)) => match a.ip() {
                IpAddr::V4(_) => true,
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
            },
            (Some(Target::Net { v6: false, .. }), Endpoint::Unix(_)) => false,
            _ => true,
        }
    }

    /// Counts a record withheld by [`LogSink::sends_server`]; the first one is reported.
    fn withhold(&mut self, server: &Endpoint) {
        self.skipped += 1;
        if !self.warned_skip {
            self.warned_skip = true;
            common::diag!(
                "not sending log records for server {server} to an IPv4 log target: \
                 the original penlogd crashes on them; log to penlogd over IPv6 to get them"
            );
        }
    }

    /// Reopens a file target (HUP, for rotation with `mv`). A network target is left alone.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        if let (Some(Target::File { .. }), Some(name)) = (&self.target, self.name.clone()) {
            self.flush();
            return self.open(&name);
        }
        Ok(())
    }

    /// Logs one request to `server`: `request` is the chunk starting at the request (cut
    /// at CR/LF by the record format).
    pub fn record(&mut self, client: &dyn Display, server: &Endpoint, request: &[u8], now: i64) {
        if !self.sends_server(server) {
            self.withhold(server);
            return;
        }
        let server = &ServerAddr(server);
        match &self.target {
            None => {}
            Some(Target::File { .. }) if self.behind && self.buf.len() >= MAX_BACKLOG => {
                self.dropped += 1;
            }
            Some(Target::File { .. }) => {
                let start = self.buf.len();
                logrec::file_line(&mut self.buf, client, now, server, request);
                self.records += 1;
                if common::diag::enabled(3) {
                    let line = String::from_utf8_lossy(&self.buf[start..]);
                    common::debug!(3, "{}", line.trim_end());
                }
            }
            Some(Target::Net { sock, .. }) => {
                self.dgram.clear();
                logrec::udp_record(&mut self.dgram, client, server, request);
                match sock.send(&self.dgram) {
                    Ok(_) => self.records += 1,
                    // A full buffer or an ICMP error from an absent penlogd: never block
                    // the loop for a log record; count it.
                    Err(_) => self.dropped += 1,
                }
            }
        }
    }

    /// Writes buffered file records (called once per loop pass and before exit). What a
    /// pipe cannot take yet stays for the next call.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(Target::File { file }) = &mut self.target else {
            self.buf.clear();
            return;
        };
        let mut done = 0;
        let result = loop {
            match file.write(&self.buf[done..]) {
                Ok(0) => break Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    if done == self.buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.behind = false;
        match result {
            Ok(()) => {
                self.buf.clear();
                self.failing = false;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.buf.drain(..done);
                self.behind = true;
                self.failing = false;
            }
            Err(e) => {
                // One line per record.
                let lost = self.buf[done..].iter().filter(|&&b| b == b'\n').count();
                self.dropped += lost.max(1) as u64;
                self.buf.clear();
                // A FIFO whose reader left fails each pass until one comes back.
                if !self.failing {
                    common::diag!("can't write log file: {e}");
                }
                self.failing = true;
            }
        }
    }
}

/// Opens a log file for appending, non-blocking (see the module doc). A FIFO with no
/// reader refuses a non-blocking writer (ENXIO); it is then opened for reading too, which
/// Linux allows, so that records wait in the pipe until a reader comes.
fn open_file(path: &str) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK);
    match options.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => options.read(true).open(path),
        opened => opened,
    }
}

/// A non-blocking UDP socket connected to `addr`, from an unspecified local address of
/// the same family.
fn udp_to(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// A server address as it appears in log records: the IP with no port (an IPv4-mapped
/// address as a dotted quad), or the socket path.
pub struct ServerAddr<'a>(pub &'a Endpoint);

impl Display for ServerAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Endpoint::Inet(a) => match a.ip() {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => write!(f, "{v4}"),
                    None => write!(f, "{v6}"),
                },
                ip => write!(f, "{ip}"),
            },
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory `NAME-PID` holding a FIFO `log.fifo`.
    fn fifo(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("log.fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        (dir, fifo)
    }

    /// The FIFO's read end, non-blocking.
    fn read_end(fifo: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .unwrap()
    }

    #[test]
    fn a_fifo_whose_reader_is_behind_keeps_a_bounded_backlog() {
        use std::io::Read;
        let (dir, fifo) = fifo("pen-logfifo");

        // No reader yet: opened all the same, without waiting.
        let mut sink = LogSink::default();
        sink.open(fifo.to_str().unwrap()).unwrap();
        let server = Endpoint::Inet("10.0.0.1:80".parse().unwrap());
        let mut n = 0;
        while sink.dropped == 0 {
            for _ in 0..100 {
                let req = format!("GET /{n} HTTP/1.0\r\n");
                sink.record(&"127.0.0.2", &server, req.as_bytes(), 0);
                n += 1;
            }
            sink.flush();
            assert!(n < 1_000_000, "nothing was ever dropped");
        }
        assert!(sink.behind);
        assert!(sink.buf.len() <= MAX_BACKLOG + 200, "{}", sink.buf.len());

        // A reader comes: everything kept arrives, whole lines in order.
        let mut reader = read_end(&fifo);
        let (mut got, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
        while sink.behind || !sink.buf.is_empty() {
            while let Ok(k @ 1..) = reader.read(&mut chunk) {
                got.extend_from_slice(&chunk[..k]);
            }
            sink.flush();
        }
        while let Ok(k @ 1..) = reader.read(&mut chunk) {
            got.extend_from_slice(&chunk[..k]);
        }
        let text = String::from_utf8(got).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, sink.records);
        assert_eq!(sink.records + sink.dropped, n);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l, &format!("127.0.0.2 0 10.0.0.1 GET /{i} HTTP/1.0"));
        }

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_reader_that_leaves_costs_records_until_one_comes_back() {
        use std::io::Read;
        let (dir, fifo) = fifo("pen-logfifo2");
        let reader = read_end(&fifo);
        let mut sink = LogSink::default();
        sink.open(fifo.to_str().unwrap()).unwrap();
        let server = Endpoint::Inet("10.0.0.1:80".parse().unwrap());
        drop(reader);
        for path in ["/lost1", "/lost2"] {
            let req = format!("GET {path} HTTP/1.0\r\n");
            sink.record(&"127.0.0.2", &server, req.as_bytes(), 0);
            sink.flush();
        }
        assert!(sink.failing);
        assert_eq!((sink.records, sink.dropped), (2, 2));

        let mut reader = read_end(&fifo);
        sink.record(&"127.0.0.2", &server, b"GET /back HTTP/1.0\r\n", 0);
        sink.flush();
        assert!(!sink.failing && sink.buf.is_empty());
        let mut chunk = [0u8; 256];
        let k = reader.read(&mut chunk).unwrap();
        assert_eq!(&chunk[..k], b"127.0.0.2 0 10.0.0.1 GET /back HTTP/1.0\n");

        // `no log` with records still waiting for the pipe counts them as dropped.
        let mut n = 0;
        while !sink.behind {
            let req = format!("GET /{n} HTTP/1.0\r\n");
            sink.record(&"127.0.0.2", &server, req.as_bytes(), 0);
            sink.flush();
            n += 1;
        }
        let waiting = sink.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let dropped = sink.dropped;
        sink.stop();
        assert!(waiting > 0 && sink.buf.is_empty());
        assert_eq!(sink.dropped, dropped + waiting);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn network_targets_need_a_numeric_port() {
        assert_eq!(
            network_spec("127.0.0.1:514"),
            Some((Some("127.0.0.1"), "514"))
        );
        assert_eq!(network_spec("[::1]:514"), Some((Some("::1"), "514")));
        assert_eq!(
            network_spec("loghost:10000"),
            Some((Some("loghost"), "10000"))
        );
        assert_eq!(network_spec("logs:today"), None);
        assert_eq!(network_spec("/var/log/pen.log"), None);
        assert_eq!(network_spec("./x:514"), None);
        assert_eq!(network_spec("pen.log"), None);
    }

    #[test]
    fn old_penlogd_only_gets_ipv4_servers() {
        let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sink = LogSink::default();
        sink.open(&u4.local_addr().unwrap().to_string()).unwrap();
        let v4 = Endpoint::Inet("10.0.0.1:80".parse().unwrap());
        let mapped = Endpoint::Inet("[::ffff:10.0.0.1]:80".parse().unwrap());
        let v6 = Endpoint::Inet("[2001:db8::1]:80".parse().unwrap());
        let unix = Endpoint::Unix("/run/b.sock".into());
        assert!(sink.sends_server(&v4));
        assert!(sink.sends_server(&mapped));
        assert!(!sink.sends_server(&v6));
        assert!(!sink.sends_server(&unix));
        // Counted per record, not per check.
        assert_eq!(sink.skipped, 0);
        sink.record(&"127.0.0.2", &v6, b"GET / HTTP/1.0\r\n", 0);
        sink.record(&"127.0.0.2", &unix, b"GET / HTTP/1.0\r\n", 0);
        sink.record(&"127.0.0.2", &v4, b"GET / HTTP/1.0\r\n", 0);
        assert_eq!((sink.skipped, sink.records), (2, 1));
        assert_eq!(ServerAddr(&mapped).to_string(), "10.0.0.1");
        if let Ok(u6) = UdpSocket::bind("[::1]:0") {
            sink.open(&format!("[::1]:{}", u6.local_addr().unwrap().port()))
                .unwrap();
            assert!(sink.sends_server(&v6));
            assert!(sink.sends_server(&unix));
        }
        let file = std::env::temp_dir().join(format!("pen-logsink-{}", std::process::id()));
        sink.open(file.to_str().unwrap()).unwrap();
        assert!(sink.sends_server(&v6));
        let _ = std::fs::remove_file(file);
    }
}

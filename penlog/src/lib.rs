//! penlog, the piped logger of the pen suite (logging.md §2): every line read on stdin
//! becomes one UDP datagram to penlogd, sent from `LOCAL_ADDR` when given, because
//! penlogd identifies a web server by the datagram's source IP.
//!
//! Unlike the original, a line is never split over several datagrams (penlogd dropped the
//! pieces as bogus) and never cut at a NUL: a line of up to [`MAX_DATAGRAM`] bytes goes
//! out whole, and a longer one is truncated to that size with its LF kept. Nothing here
//! can block or stop the web server: the socket is non-blocking, a full send buffer is
//! waited on once for at most [`SEND_WAIT`], a failed send is counted and skipped, and the counts are reported on stderr (Apache's error log) at exit.

use std::fmt;
use std::io::{self, BufRead, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use clap::Parser;
use common::addr::{parse_port, Proto};
use socket2::{Domain, SockAddr, Socket, Type};

/// The largest datagram penlog sends: the IPv4 UDP payload limit.
pub const MAX_DATAGRAM: usize = 65507;

/// Command line: `penlog SERVER PORT [LOCAL_ADDR]`, as the original.
#[derive(Parser, Debug)]
#[command(
    name = "penlog",
    version,
    about = "Send each line of stdin to penlogd as one UDP datagram",
    after_help = "Apache: CustomLog \"|/usr/bin/penlog LOGHOST 10000 WEB_IP\" common"
)]
pub struct Args {
    /// penlogd's host (IPv4 or IPv6 address, or a name).
    pub server: String,
    /// penlogd's UDP port (number or service name).
    pub port: String,
    /// Local address to send from: must be the address pen uses for this web server.
    pub local: Option<String>,
}

/// A startup or input failure; each is fatal and exits 1.
#[derive(Debug)]
pub enum Error {
    Port(String, String),
    Resolve(String, String),
    NoAddress { host: String, family: &'static str },
    Socket(&'static str, SocketAddr, io::Error),
    Read(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Port(p, why) => write!(f, "bad port '{p}': {why}"),
            Error::Resolve(h, why) => write!(f, "can't resolve '{h}': {why}"),
            Error::NoAddress { host, family } => write!(f, "'{host}' has no {family} address"),
            Error::Socket(step, addr, e) => write!(f, "can't {step} {addr}: {e}"),
            Error::Read(e) => write!(f, "can't read stdin: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// What happened to the lines read; reported at exit when something was lost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines read (a last line without LF counts).
    pub lines: u64,
    /// Lines whose send failed (full buffer, no route, ...): certainly lost.
    pub unsent: u64,
    /// ICMP "port unreachable" reports: each means an earlier datagram was lost.
    pub refused: u64,
    /// Lines longer than a datagram, sent truncated.
    pub truncated: u64,
    /// The destination, for the report.
    pub dest: Option<SocketAddr>,
    /// The last send error, for the report.
    pub last_error: Option<String>,
}

impl Summary {
    /// One line for stderr, or `None` when every line went out whole.
    pub fn report(&self) -> Option<String> {
        if self.unsent == 0 && self.refused == 0 && self.truncated == 0 {
            return None;
        }
        let mut parts = Vec::new();
        let dest = self.dest.map(|d| d.to_string()).unwrap_or_default();
        if self.unsent > 0 {
            let why = self.last_error.as_deref().unwrap_or("unknown error");
            parts.push(format!(
                "{} of {} lines not sent to {dest} ({why})",
                self.unsent, self.lines
            ));
        }
        if self.refused > 0 {
            parts.push(format!(
                "at least {} lines refused by {dest} (is penlogd running?)",
                self.refused
            ));
        }
        if self.truncated > 0 {
            parts.push(format!(
                "{} lines truncated to {MAX_DATAGRAM} bytes",
                self.truncated
            ));
        }
        Some(parts.join("; "))
    }
}

/// Sends every line of `input` to penlogd, then returns the counts.
pub fn run(args: &Args, input: impl BufRead) -> Result<Summary, Error> {
    let port = parse_port(&args.port, Proto::Udp).map_err(|e| Error::Port(args.port.clone(), e))?;
    let local = match &args.local {
        Some(host) => Some(resolve(host, 0, None)?),
        None => None,
    };
    let dest = resolve(&args.server, port, local.map(|l| l.ip()))?;
    let sender = Sender::open(dest, local)?;
    pump(input, sender)
}

/// Resolves `host` (literal or name) with `port`; when `family_of` is given, takes the
/// first address of that family (LOCAL_ADDR and SERVER must agree).
fn resolve(host: &str, port: u16, family_of: Option<IpAddr>) -> Result<SocketAddr, Error> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::Resolve(host.to_string(), e.to_string()))?
            .collect(),
    };
    let wanted = |a: &SocketAddr| family_of.is_none_or(|f| f.is_ipv4() == a.is_ipv4());
    addrs
        .into_iter()
        .find(wanted)
        .ok_or_else(|| Error::NoAddress {
            host: host.to_string(),
            family: match family_of {
                Some(IpAddr::V4(_)) => "IPv4",
                Some(IpAddr::V6(_)) => "IPv6",
                None => "usable",
            },
        })
}

/// The UDP socket: connected, so that ICMP errors are reported, and non-blocking, so that
/// a full send buffer costs a line and never stalls the web server.
struct Sender {
    sock: Socket,
    dest: SocketAddr,
}

impl Sender {
    fn open(dest: SocketAddr, local: Option<SocketAddr>) -> Result<Sender, Error> {
        let sock = Socket::new(Domain::for_address(dest), Type::DGRAM, None)
            .map_err(|e| Error::Socket("create a socket for", dest, e))?;
        let bind = local.unwrap_or(match dest {
            SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        });
        sock.bind(&SockAddr::from(bind))
            .map_err(|e| Error::Socket("bind", bind, e))?;
        sock.connect(&SockAddr::from(dest))
            .map_err(|e| Error::Socket("connect to", dest, e))?;
        sock.set_nonblocking(true)
            .map_err(|e| Error::Socket("set O_NONBLOCK for", dest, e))?;
        Ok(Sender { sock, dest })
    }

    /// Sends one datagram, counting failures in `sum`.
    fn send(&self, line: &[u8], sum: &mut Summary) {
        let (mut refused, mut waited) = (false, false);
        loop {
            match self.sock.send(line) {
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // The error belongs to an earlier datagram (ICMP port unreachable); this one
                // was not sent, and the error is now cleared, so try once more.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused && !refused => {
                    refused = true;
                    sum.refused += 1;
                }
                // The send buffer is full for a moment (a burst of lines): wait for room
                // once, briefly, rather than lose the line at once. Bounded, so that the
                // web server is never held up for long.
                Err(e) if e.kind() == ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    wait_writable(self.sock.as_raw_fd(), SEND_WAIT);
                }
                Err(e) => {
                    sum.unsent += 1;
                    sum.last_error = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

/// The longest penlog waits for room in a full send buffer before counting a line as
/// unsent.
const SEND_WAIT: Duration = Duration::from_millis(50);

/// Waits until `fd` is writable or `limit` passes (an interrupted wait just returns: the
/// caller tries once more either way).
fn wait_writable(fd: RawFd, limit: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Reads lines without ever holding more than one datagram, and sends each.
fn pump(mut input: impl BufRead, sender: Sender) -> Result<Summary, Error> {
    let mut sum = Summary {
        dest: Some(sender.dest),
        ..Summary::default()
    };
    let mut line: Vec<u8> = Vec::with_capacity(4096);
    let mut cut = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Read(e)),
        };
        if buf.is_empty() {
            if !line.is_empty() || cut {
                finish(&mut line, &mut cut, &sender, &mut sum);
            }
            return Ok(sum);
        }
        let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let taken = chunk.len();
        // Keep room for the LF that a truncated line gets back.
        let room = (MAX_DATAGRAM - 1).saturating_sub(line.len());
        if chunk.len() - usize::from(end) > room {
            cut = true;
            line.extend_from_slice(&chunk[..room]);
        } else if !cut {
            line.extend_from_slice(chunk);
        }
        input.consume(taken);
        if end {
            finish(&mut line, &mut cut, &sender, &mut sum);
        }
    }
}

fn finish(line: &mut Vec<u8>, cut: &mut bool, sender: &Sender, sum: &mut Summary) {
    sum.lines += 1;
    if *cut {
        sum.truncated += 1;
        line.push(b'\n');
    }
    sender.send(line, sum);
    line.clear();
    *cut = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn listener() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn args(sock: &UdpSocket, local: Option<&str>) -> Args {
        let port = sock.local_addr().unwrap().port().to_string();
        Args {
            server: "127.0.0.1".into(),
            port,
            local: local.map(str::to_string),
        }
    }

    fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0; 70000];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[test]
    fn full_send_buffer_is_waited_on_briefly() {
        // A Unix datagram pair stands in for a UDP socket whose send buffer is full: sends
        // fail with EAGAIN until the peer reads.
        let (tx, rx) = Socket::pair(Domain::UNIX, Type::DGRAM, None).unwrap();
        tx.set_nonblocking(true).unwrap();
        let sender = Sender {
            sock: tx,
            dest: "127.0.0.1:9".parse().unwrap(),
        };
        let mut queued = 0;
        while sender.sock.send(b"fill\n").is_ok() {
            queued += 1;
        }
        let mut sum = Summary::default();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let mut buf = [std::mem::MaybeUninit::new(0u8); 16];
            rx.recv(&mut buf).unwrap();
            rx
        });
        sender.send(b"waited\n", &mut sum);
        assert_eq!(
            sum.unsent, 0,
            "room made within the wait: {:?}",
            sum.last_error
        );
        let rx = reader.join().unwrap();
        let t0 = std::time::Instant::now();
        sender.send(b"lost\n", &mut sum);
        assert_eq!(sum.unsent, 1, "still full after the wait");
        assert!(t0.elapsed() >= SEND_WAIT && t0.elapsed() < 20 * SEND_WAIT);
        assert!(queued > 0);
        drop(rx);
    }

    #[test]
    fn one_datagram_per_line() {
        let l = listener();
        let input: &[u8] = b"first line\n\nbinary \0\xff\x01 ok\nno trailing newline";
        let sum = run(&args(&l, Some("127.0.0.5")), input).unwrap();
        assert_eq!(sum.lines, 4);
        assert_eq!(sum.report(), None);
        let (d, from) = recv(&l);
        assert_eq!(d, b"first line\n");
        assert_eq!(from.ip(), "127.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(recv(&l).0, b"\n");
        assert_eq!(recv(&l).0, b"binary \0\xff\x01 ok\n");
        assert_eq!(recv(&l).0, b"no trailing newline");
    }

    #[test]
    fn long_lines_whole_or_truncated() {
        let l = listener();
        let mut input = [b"x".repeat(5000), b"\n".to_vec()].concat();
        input.extend([b"y".repeat(MAX_DATAGRAM * 2 + 17), b"\nshort\n".to_vec()].concat());
        input.extend(b"z".repeat(MAX_DATAGRAM));
        let sum = run(&args(&l, None), input.as_slice()).unwrap();
        assert_eq!((sum.lines, sum.truncated), (4, 2));
        assert!(sum.report().unwrap().contains("2 lines truncated"));
        assert_eq!(recv(&l).0.len(), 5001);
        let (d, _) = recv(&l);
        assert_eq!(d.len(), MAX_DATAGRAM);
        assert!(d.ends_with(b"yy\n"));
        assert_eq!(recv(&l).0, b"short\n");
        let (d, _) = recv(&l);
        assert_eq!(d.len(), MAX_DATAGRAM);
        assert!(d.ends_with(b"zz\n"));
    }

    #[test]
    fn exactly_max_fits() {
        let l = listener();
        let input = [b"w".repeat(MAX_DATAGRAM - 1), b"\n".to_vec()].concat();
        let sum = run(&args(&l, None), input.as_slice()).unwrap();
        assert_eq!((sum.lines, sum.truncated), (1, 0));
        assert_eq!(recv(&l).0, input);
    }

    #[test]
    fn refused_lines_are_counted() {
        let port = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let a = Args {
            server: "127.0.0.1".into(),
            port: port.to_string(),
            local: None,
        };
        let input = b"a line\n".repeat(50);
        let sum = run(&a, input.as_slice()).unwrap();
        assert_eq!(sum.lines, 50);
        assert!(sum.refused > 0, "{sum:?}");
        assert!(sum.report().unwrap().contains("refused"));
    }

    #[test]
    fn startup_errors() {
        let a = |s: &str, p: &str, l: Option<&str>| Args {
            server: s.into(),
            port: p.into(),
            local: l.map(str::to_string),
        };
        let err = |a: Args| run(&a, &b""[..]).unwrap_err().to_string();
        assert_eq!(
            err(a("127.0.0.1", "0", None)),
            "bad port '0': port 0 out of range"
        );
        assert!(err(a("127.0.0.1", "nosuchservice", None)).starts_with("bad port"));
        assert_eq!(
            err(a("::1", "9", Some("127.0.0.2"))),
            "'::1' has no IPv4 address"
        );
        assert!(err(a("127.0.0.1", "9", Some("192.0.2.1"))).starts_with("can't bind 192.0.2.1:0"));
    }
}

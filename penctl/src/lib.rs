//! penctl: sends one command to pen's control socket and copies the reply to stdout
//! (control.md §2).
//!
//! The syntax, the request bytes and the exit codes are the original's:
//! `penctl host:port|/path/to/socket command [args...]`, one line per connection, the reply is
//! everything up to EOF, and any reply at all (even an error message from pen) exits 0.
//! Beyond the original: `[v6]:port` targets, every resolved address is tried rather than only
//! the first, connect/send/read timeouts (`PENCTL_TIMEOUT`, default 10 s) so penctl never
//! hangs on a stuck pen, and errors that name the target and the reason.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use common::addr::{self, Proto};

/// What penctl prints (on stdout, exit 0) when given fewer than two arguments.
pub const USAGE: &str = "usage: penctl host:port command\n";

/// The longest request, newline included: pen reads a command with a single `recv` of at most
/// 4095 bytes (control.md §1.2), so anything longer would be cut.
pub const MAX_REQUEST: usize = 4095;

/// The timeout used for connecting, sending and each read when `PENCTL_TIMEOUT` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable that overrides [`DEFAULT_TIMEOUT`], in seconds. An option would
/// be ambiguous: every word after the target belongs to the command.
pub const TIMEOUT_VAR: &str = "PENCTL_TIMEOUT";

/// A failure, printed by main as one line `penctl: {err}` with exit status 1.
#[derive(Debug)]
pub enum Error {
    /// The target is not a path, has no `:`, or its host or port is unusable.
    Target { target: String, problem: String },
    /// A `host:port` target that is not valid UTF-8 (and so can't be a host name).
    NotUnicode { target: String },
    /// The request would not fit in pen's single read.
    TooLong { len: usize },
    /// `PENCTL_TIMEOUT` is not a positive number of seconds.
    BadTimeout { value: String },
    /// Name resolution failed or found nothing.
    Resolve { host: String, problem: String },
    /// Every address (`tried` of them) refused or timed out; `source` is the last error.
    Connect {
        target: String,
        tried: usize,
        source: io::Error,
    },
    /// Sending the request failed.
    Send { target: String, source: io::Error },
    /// No reply bytes arrived for `after`.
    Timeout { target: String, after: Duration },
    /// The peer reset the connection before sending any reply: what pen's control ACL
    /// does to a denied host (it closes the connection with the request unread).
    Reset { target: String },
    /// Reading the reply failed.
    Read { target: String, source: io::Error },
    /// Copying the reply to stdout failed.
    Stdout(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Target { target, problem } => write!(f, "{problem} in '{target}'"),
            Error::NotUnicode { target } => write!(f, "target '{target}' is not valid UTF-8"),
            Error::TooLong { len } => {
                write!(f, "argument list too long ({len} bytes, max {MAX_REQUEST})")
            }
            Error::BadTimeout { value } => write!(
                f,
                "bad {TIMEOUT_VAR} '{value}': expected a positive number of seconds"
            ),
            Error::Resolve { host, problem } => write!(f, "can't resolve '{host}': {problem}"),
            Error::Connect {
                target,
                tried,
                source,
            } => {
                write!(f, "can't connect to {target}: {}", describe(source))?;
                if *tried > 1 {
                    write!(f, " (tried {tried} addresses)")?;
                }
                Ok(())
            }
            Error::Send { target, source } => {
                write!(f, "can't send to {target}: {}", describe(source))
            }
            Error::Timeout { target, after } => write!(
                f,
                "no reply from {target} within {} s (set {TIMEOUT_VAR} to wait longer)",
                after.as_secs_f64()
            ),
            Error::Reset { target } => write!(
                f,
                "{target} closed the connection without a reply (does pen's control_acl deny \
                 this host?)"
            ),
            Error::Read { target, source } => {
                write!(f, "can't read reply from {target}: {}", describe(source))
            }
            Error::Stdout(e) => write!(f, "can't write to stdout: {}", describe(e)),
        }
    }
}

impl std::error::Error for Error {}

/// An OS error's text without std's ` (os error N)` suffix, as strerror(3) would print it.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(bare) => bare.to_string(),
            None => text,
        },
        None => text,
    }
}

/// Where pen's control socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// argv[1] contained `/` (control.md §2), so it is a path; it need not be UTF-8.
    Unix(PathBuf),
    /// `host:port` split at the last colon, or `[host]:port`. `text` is argv[1] as written,
    /// for messages.
    Inet {
        host: String,
        port: u16,
        text: String,
    },
}

impl Target {
    /// Parses argv[1]: a path if it contains `/`, otherwise `host:port` or `[host]:port`,
    /// where the port may be a service name.
    pub fn parse(arg: &OsStr) -> Result<Target, Error> {
        if arg.as_bytes().contains(&b'/') {
            return Ok(Target::Unix(PathBuf::from(arg)));
        }
        let text = arg.to_str().ok_or_else(|| Error::NotUnicode {
            target: arg.to_string_lossy().into_owned(),
        })?;
        let bad = |problem: String| Error::Target {
            target: text.to_string(),
            problem,
        };
        // split_host_port reads a colon-less word as a bare port; penctl needs both halves.
        if !text.contains(':') {
            return Err(bad("no port given".into()));
        }
        let (host, port) = addr::split_host_port(text).map_err(|e| bad(e.problem))?;
        let host = match host {
            Some(h) if !h.is_empty() => h,
            // The original passed "" to getaddrinfo, which failed; say what is missing.
            _ => return Err(bad("no host given".into())),
        };
        let port = addr::parse_port(port, Proto::Tcp).map_err(bad)?;
        Ok(Target::Inet {
            host: host.to_string(),
            port,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Inet { text, .. } => f.write_str(text),
        }
    }
}

/// One control request: where to send it and the exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub target: Target,
    /// The command words joined by single spaces, plus `\n`.
    pub line: Vec<u8>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Fewer than two arguments: print [`USAGE`] and exit 0, as the original.
    Usage,
    /// Send a request.
    Send(Request),
}

/// Parses the arguments after argv[0].
///
/// Command words are sent as raw bytes, as the original did: pen, not penctl, decides what
/// a valid command is, so a non-UTF-8 word is forwarded rather than refused.
pub fn parse_args(args: &[OsString]) -> Result<Invocation, Error> {
    let [target, words @ ..] = args else {
        return Ok(Invocation::Usage);
    };
    if words.is_empty() {
        return Ok(Invocation::Usage);
    }
    let target = Target::parse(target)?;
    let mut line = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(word.as_bytes());
    }
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(Error::TooLong { len: line.len() });
    }
    Ok(Invocation::Send(Request { target, line }))
}

/// The timeout from `PENCTL_TIMEOUT` (seconds, fractions allowed), or [`DEFAULT_TIMEOUT`].
pub fn timeout(var: Option<&OsStr>) -> Result<Duration, Error> {
    let Some(raw) = var else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let value = raw.to_string_lossy();
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Error::BadTimeout {
            value: value.into_owned(),
        })
}

/// Runs penctl: prints the usage or sends the request, copying the reply to `out`.
pub fn run(
    args: &[OsString],
    timeout_var: Option<&OsStr>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match parse_args(args)? {
        Invocation::Usage => finish(out.write_all(USAGE.as_bytes()).and_then(|()| out.flush())),
        Invocation::Send(req) => send(&req, timeout(timeout_var)?, out),
    }
}

/// A connected control socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Connects to the target, trying every resolved address in order.
///
/// Each TCP address gets the full timeout. A Unix connect has no timeout in std; it only
/// blocks when pen's listen backlog is full.
fn connect(target: &Target, t: Duration) -> Result<Stream, Error> {
    let (host, port, text) = match target {
        Target::Unix(path) => {
            return UnixStream::connect(path)
                .map(Stream::Unix)
                .map_err(|source| Error::Connect {
                    target: target.to_string(),
                    tried: 1,
                    source,
                });
        }
        Target::Inet { host, port, text } => (host, *port, text),
    };
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve {
            host: host.clone(),
            problem: resolve_problem(&e),
        })?
        .collect();
    match connect_any(&addrs, t) {
        Ok(s) => Ok(Stream::Tcp(s)),
        Err(Some(source)) => Err(Error::Connect {
            target: text.clone(),
            tried: addrs.len(),
            source,
        }),
        Err(None) => Err(Error::Resolve {
            host: host.clone(),
            problem: "no addresses found".into(),
        }),
    }
}

/// Tries each address in turn (the original tried only the first, so a name resolving to
/// `::1` first failed against an IPv4-only pen). The error is the last one, `None` if
/// there were no addresses.
fn connect_any(addrs: &[SocketAddr], t: Duration) -> Result<TcpStream, Option<io::Error>> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, t) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last)
}

/// The resolver's reason without std's generic prefix.
fn resolve_problem(e: &io::Error) -> String {
    let text = describe(e);
    match text.strip_prefix("failed to lookup address information: ") {
        Some(reason) => reason.to_string(),
        None => text,
    }
}

/// Sends one request and copies the reply, byte for byte, to `out` until EOF.
///
/// The timeout bounds the connect, the send and each wait for reply bytes. If `out` is a
/// closed pipe (`penctl … status | head`), the copy stops quietly, as the original's
/// SIGPIPE death did, but with exit 0.
pub fn send(req: &Request, t: Duration, out: &mut dyn Write) -> Result<(), Error> {
    let target = req.target.to_string();
    let mut stream = connect(&req.target, t)?;
    stream.set_timeouts(t).map_err(|source| Error::Send {
        target: target.clone(),
        source,
    })?;
    let io = stream.io();
    if let Err(source) = io.write_all(&req.line) {
        return Err(match source.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Error::Reset { target },
            _ => Error::Send { target, source },
        });
    }

    let mut buf = [0u8; 8192];
    let mut copied = 0;
    loop {
        match io.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                copied += n;
                if let Err(e) = out.write_all(&buf[..n]) {
                    return finish(Err(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout shows as EAGAIN on Unix (WouldBlock), TimedOut elsewhere.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::Timeout { target, after: t });
            }
            // The original exited 0 with empty output here; a request that was never run
            // is an error worth saying so.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && copied == 0 => {
                return Err(Error::Reset { target });
            }
            Err(source) => return Err(Error::Read { target, source }),
        }
    }
    finish(out.flush())
}

/// Maps a stdout result, treating a closed pipe as a normal end.
fn finish(r: io::Result<()>) -> Result<(), Error> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(Error::Stdout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn request(v: &[&str]) -> Request {
        match parse_args(&args(v)).unwrap() {
            Invocation::Send(r) => r,
            Invocation::Usage => panic!("usage for {v:?}"),
        }
    }

    fn inet(host: &str, port: u16, text: &str) -> Target {
        Target::Inet {
            host: host.into(),
            port,
            text: text.into(),
        }
    }

    fn target_err(s: &str) -> String {
        Target::parse(OsStr::new(s)).unwrap_err().to_string()
    }

    #[test]
    fn usage_below_two_args() {
        assert_eq!(parse_args(&[]).unwrap(), Invocation::Usage);
        assert_eq!(
            parse_args(&args(&["127.0.0.1:1"])).unwrap(),
            Invocation::Usage
        );
        // Usage wins even over a bad target, as in the original (argc is checked first).
        assert_eq!(parse_args(&args(&["junk"])).unwrap(), Invocation::Usage);
    }

    #[test]
    fn request_bytes() {
        assert_eq!(request(&["h:1", "servers"]).line, b"servers\n");
        assert_eq!(
            request(&["h:1", "server", "0", "max", "5"]).line,
            b"server 0 max 5\n"
        );
        // One quoted argument with spaces is sent the same as separate words.
        assert_eq!(
            request(&["h:1", "server 0 max 5"]).line,
            b"server 0 max 5\n"
        );
        assert_eq!(request(&["h:1", "a", "", "b"]).line, b"a  b\n");
    }

    #[test]
    fn non_utf8_words_are_forwarded() {
        use std::os::unix::ffi::OsStringExt;
        let v = vec![OsString::from("h:1"), OsString::from_vec(vec![b'x', 0xff])];
        match parse_args(&v).unwrap() {
            Invocation::Send(r) => assert_eq!(r.line, b"x\xff\n"),
            Invocation::Usage => panic!("usage"),
        }
    }

    #[test]
    fn request_limit() {
        let word = "x".repeat(MAX_REQUEST - 1);
        assert_eq!(request(&["h:1", &word]).line.len(), MAX_REQUEST);
        let word = "x".repeat(MAX_REQUEST);
        let err = parse_args(&args(&["h:1", &word])).unwrap_err().to_string();
        assert_eq!(err, "argument list too long (4096 bytes, max 4095)");
    }

    #[test]
    fn targets() {
        let p = |s: &str| Target::parse(OsStr::new(s)).unwrap();
        assert_eq!(
            p("127.0.0.1:41001"),
            inet("127.0.0.1", 41001, "127.0.0.1:41001")
        );
        assert_eq!(p("::1:41011"), inet("::1", 41011, "::1:41011"));
        assert_eq!(p("[::1]:41011"), inet("::1", 41011, "[::1]:41011"));
        assert_eq!(
            p("localhost:41011"),
            inet("localhost", 41011, "localhost:41011")
        );
        assert_eq!(
            p("/run/pen/ctl.sock"),
            Target::Unix("/run/pen/ctl.sock".into())
        );
        assert_eq!(p("./ctl"), Target::Unix("./ctl".into()));
        assert_eq!(p("./ctl").to_string(), "./ctl");
    }

    #[test]
    fn non_utf8_unix_path() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(b"/tmp/\xffctl".to_vec());
        assert_eq!(
            Target::parse(&raw).unwrap(),
            Target::Unix(PathBuf::from(raw.clone()))
        );
        let raw = OsString::from_vec(b"h\xff:1".to_vec());
        assert!(Target::parse(&raw)
            .unwrap_err()
            .to_string()
            .contains("not valid UTF-8"));
    }

    #[test]
    fn bad_targets() {
        assert_eq!(target_err("127.0.0.1"), "no port given in '127.0.0.1'");
        assert_eq!(target_err("127.0.0.1:"), "no port given in '127.0.0.1:'");
        assert_eq!(target_err(":41001"), "no host given in ':41001'");
        assert_eq!(target_err("[::1]"), "no port given in '[::1]'");
        assert_eq!(target_err("[::1:80"), "missing ']' in '[::1:80'");
        assert_eq!(target_err("h:0"), "port 0 out of range in 'h:0'");
        assert_eq!(
            target_err("h:70000"),
            "port 70000 out of range in 'h:70000'"
        );
        assert!(target_err("h:no-such-service-x").contains("unknown port or service"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(
            timeout(Some(OsStr::new("1"))).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            timeout(Some(OsStr::new(" 0.5 "))).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["", "0", "-1", "x", "nan", "inf", "1e300", "1e-12"] {
            let err = timeout(Some(OsStr::new(bad))).unwrap_err().to_string();
            assert!(err.starts_with("bad PENCTL_TIMEOUT"), "{bad}: {err}");
        }
    }

    #[test]
    fn os_error_text_is_bare() {
        let e = io::Error::from_raw_os_error(111);
        assert!(!describe(&e).contains("os error"), "{}", describe(&e));
        assert_eq!(describe(&io::Error::other("plain")), "plain");
    }

    #[test]
    fn every_address_is_tried() {
        let t = Duration::from_secs(5);
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let open_addr = open.local_addr().unwrap();
        let s = connect_any(&[closed, open_addr], t).unwrap();
        assert_eq!(s.peer_addr().unwrap(), open_addr);
        let e = connect_any(&[closed, closed], t).unwrap_err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(connect_any(&[], t).unwrap_err().is_none());
    }

    #[test]
    fn broken_pipe_on_stdout_is_not_an_error() {
        assert!(finish(Err(io::ErrorKind::BrokenPipe.into())).is_ok());
        assert!(finish(Err(io::ErrorKind::Other.into())).is_err());
    }
}

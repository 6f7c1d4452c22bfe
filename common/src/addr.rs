//! The address grammar shared by every binary: `port`, `host:port` (split at the last
//! colon, as the original), `[v6]:port` (which the original could not parse), Unix paths,
//! and pen's backend spec `host[:port[:max[:hard[:weight[:prio]]]]]` (pen.md §2.3, §2.4).
//!
//! Unlike the original, which read junk as 0, every malformed field is an error naming it.

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::net::Endpoint;

/// A malformed or unresolvable address, naming the input and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError {
    pub input: String,
    pub problem: String,
}

impl AddrError {
    fn new(input: &str, problem: impl Into<String>) -> AddrError {
        AddrError {
            input: input.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad address '{}': {}", self.input, self.problem)
    }
}

impl std::error::Error for AddrError {}

/// Transport protocol, for service-name lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Splits `host:port` at the last colon; `[addr]:port` strips the brackets. Without a
/// colon the whole text is the port and the host is `None`.
pub fn split_host_port(s: &str) -> Result<(Option<&str>, &str), AddrError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddrError::new(s, "missing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| AddrError::new(s, "no port given"))?;
        return Ok((Some(host), port));
    }
    match s.rsplit_once(':') {
        Some(("", port)) => Ok((None, port)),
        Some((host, port)) => Ok((Some(host), port)),
        None => Ok((None, s)),
    }
}

/// Parses a port: a number in 1..=65535 or a service name from /etc/services.
pub fn parse_port(s: &str, proto: Proto) -> Result<u16, String> {
    if s.is_empty() {
        return Err("no port given".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            _ => Err(format!("port {s} out of range")),
        };
    }
    service_port(s, proto).ok_or_else(|| format!("unknown port or service '{s}'"))
}

fn service_port(name: &str, proto: Proto) -> Option<u16> {
    let cname = CString::new(name).ok()?;
    let cproto = match proto {
        Proto::Tcp => c"tcp",
        Proto::Udp => c"udp",
    };
    // SAFETY: valid C strings; the result points to static storage that we read at once.
    // These programs are single-threaded, so the static buffer cannot be overwritten.
    let ent = unsafe { libc::getservbyname(cname.as_ptr(), cproto.as_ptr()) };
    if ent.is_null() {
        return None;
    }
    // SAFETY: non-null servent from getservbyname.
    let port = unsafe { (*ent).s_port };
    Some(u16::from_be(port as u16))
}

/// Names looked up elsewhere (off an event loop) and what each gave: an address or the
/// problem, as [`lookup`] returns them.
pub type Answers = Vec<(String, Result<IpAddr, String>)>;

thread_local! {
    /// The answers [`resolve`] uses in this thread during [`with_answers`].
    static ANSWERS: RefCell<Answers> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `answers` standing in for looking up those names in this thread, so
/// that code which resolves as it goes can run without blocking on a name server.
pub fn with_answers<T>(answers: Answers, f: impl FnOnce() -> T) -> T {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            ANSWERS.with(|a| a.borrow_mut().clear());
        }
    }
    ANSWERS.with(|a| *a.borrow_mut() = answers);
    let _clear = Clear;
    f()
}

/// True when `host` needs a name lookup (it is neither an IP literal nor `0`).
pub fn is_name(host: &str) -> bool {
    host.parse::<IpAddr>().is_err() && host != "0"
}

/// Looks `host` up now, blocking, as [`resolve`] would: for a lookup thread.
pub fn lookup(host: &str) -> Result<IpAddr, String> {
    resolve(Some(host), 0)
        .map(|a| a.ip())
        .map_err(|e| e.problem)
}

/// Resolves `host` (an IP literal or a name; `None` = all IPv4 interfaces) with `port`,
/// taking the first result as the original did.
pub fn resolve(host: Option<&str>, port: u16) -> Result<SocketAddr, AddrError> {
    let Some(host) = host else {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host == "0" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    let answered = ANSWERS.with(|a| {
        a.borrow()
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, answer)| answer.clone())
    });
    if let Some(answer) = answered {
        return answer
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|problem| AddrError::new(host, problem));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| AddrError::new(host, format!("can't resolve: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| AddrError::new(host, "no address found"))
}

/// A listen (or control) address as written: a Unix path, or host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenSpec {
    Unix(PathBuf),
    Inet { host: Option<String>, port: u16 },
}

impl ListenSpec {
    /// Parses `port`, `host:port`, `:::port`, `[v6]:port` or a path containing `/`.
    pub fn parse(s: &str, proto: Proto) -> Result<ListenSpec, AddrError> {
        if s.contains('/') {
            return Ok(ListenSpec::Unix(PathBuf::from(s)));
        }
        let (host, port) = split_host_port(s)?;
        let port = parse_port(port, proto).map_err(|p| AddrError::new(s, p))?;
        Ok(ListenSpec::Inet {
            host: host.map(str::to_string),
            port,
        })
    }

    /// The port backends default to: the listen port, or none for a Unix listener.
    pub fn default_backend_port(&self) -> Option<u16> {
        match self {
            ListenSpec::Unix(_) => None,
            ListenSpec::Inet { port, .. } => Some(*port),
        }
    }

    /// Resolves the spec into something to bind.
    pub fn endpoint(&self) -> Result<Endpoint, AddrError> {
        match self {
            ListenSpec::Unix(p) => Ok(Endpoint::Unix(p.clone())),
            ListenSpec::Inet { host, port } => Ok(Endpoint::Inet(resolve(host.as_deref(), *port)?)),
        }
    }
}

/// Where a backend lives, before name resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl Target {
    /// Resolves the target (names are resolved once, as the original did).
    pub fn endpoint(&self) -> Result<Endpoint, AddrError> {
        match self {
            Target::Unix(p) => Ok(Endpoint::Unix(p.clone())),
            Target::Inet { host, port } => Ok(Endpoint::Inet(resolve(Some(host), *port)?)),
        }
    }
}

/// A backend spec `host[:port[:max[:hard[:weight[:prio]]]]]` or `[addr]:port:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub target: Target,
    pub max: u32,
    pub hard: u32,
    pub weight: u32,
    pub prio: i32,
}

impl ServerSpec {
    /// Parses a backend spec; a missing port is `default_port` (the listen port), and an
    /// error when that is `None` (a Unix listener has no port to default to).
    pub fn parse(
        s: &str,
        default_port: Option<u16>,
        proto: Proto,
    ) -> Result<ServerSpec, AddrError> {
        let err = |p: String| AddrError::new(s, p);
        if s.is_empty() {
            return Err(err("empty server spec".into()));
        }
        let (host, fields): (&str, Vec<&str>) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| err("missing ']'".into()))?;
            let fields = match after {
                "" => Vec::new(),
                _ => after
                    .strip_prefix(':')
                    .ok_or_else(|| err(format!("unexpected '{after}' after ']'")))?
                    .split(':')
                    .collect(),
            };
            (host, fields)
        } else {
            let mut it = s.split(':');
            let host = it.next().unwrap_or_default();
            (host, it.collect())
        };
        if host.is_empty() {
            let hint = if s.starts_with(':') {
                " (write IPv6 addresses as [addr]:port)"
            } else {
                ""
            };
            return Err(err(format!("no host{hint}")));
        }
        if fields.len() > 5 {
            return Err(err(
                "too many fields (host:port:max:hard:weight:prio)".into()
            ));
        }
        let num = |i: usize, name: &str| -> Result<Option<i64>, AddrError> {
            match fields.get(i) {
                None => Ok(None),
                Some(t) => t
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| err(format!("{name} '{t}' is not a number"))),
            }
        };
        let unsigned = |i: usize, name: &str| -> Result<u32, AddrError> {
            match num(i, name)? {
                None => Ok(0),
                Some(v) => u32::try_from(v).map_err(|_| err(format!("{name} {v} out of range"))),
            }
        };
        let max = unsigned(1, "max")?;
        let hard = unsigned(2, "hard")?;
        let weight = unsigned(3, "weight")?;
        let prio = match num(4, "prio")? {
            None => 0,
            Some(v) => i32::try_from(v).map_err(|_| err(format!("prio {v} out of range")))?,
        };
        let target = if host.contains('/') {
            Target::Unix(PathBuf::from(host))
        } else {
            let port = match fields.first() {
                Some(p) => parse_port(p, proto).map_err(err)?,
                None => default_port.ok_or_else(|| {
                    err(
                        "no port given (the listener is a Unix socket, so there is no default)"
                            .into(),
                    )
                })?,
            };
            Target::Inet {
                host: host.to_string(),
                port,
            }
        };
        Ok(ServerSpec {
            target,
            max,
            hard,
            weight,
            prio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(host: &str, port: u16) -> Target {
        Target::Inet {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn answers_stand_in_for_lookups_while_they_last() {
        let answers = vec![
            ("pen.invalid".to_string(), Ok("127.0.0.5".parse().unwrap())),
            (
                "gone.invalid".to_string(),
                Err("can't resolve: no such host".into()),
            ),
        ];
        let (found, failed) = with_answers(answers, || {
            (
                resolve(Some("pen.invalid"), 80),
                resolve(Some("gone.invalid"), 80),
            )
        });
        assert_eq!(found.unwrap(), "127.0.0.5:80".parse().unwrap());
        assert_eq!(
            failed.unwrap_err().to_string(),
            "bad address 'gone.invalid': can't resolve: no such host"
        );
        ANSWERS.with(|a| assert!(a.borrow().is_empty(), "answers outlive their scope"));
    }

    #[test]
    fn names_are_what_is_not_a_literal() {
        assert!(is_name("localhost"));
        assert!(is_name("www.example.com"));
        for literal in ["127.0.0.1", "::1", "0", "fe80::1"] {
            assert!(!is_name(literal), "{literal}");
        }
    }

    #[test]
    fn split_forms() {
        assert_eq!(split_host_port("80").unwrap(), (None, "80"));
        assert_eq!(
            split_host_port("127.0.0.1:80").unwrap(),
            (Some("127.0.0.1"), "80")
        );
        assert_eq!(split_host_port(":::80").unwrap(), (Some("::"), "80"));
        assert_eq!(split_host_port("::1:80").unwrap(), (Some("::1"), "80"));
        assert_eq!(split_host_port("[::1]:80").unwrap(), (Some("::1"), "80"));
        assert_eq!(split_host_port(":80").unwrap(), (None, "80"));
        assert!(split_host_port("[::1]").is_err());
        assert!(split_host_port("[::1:80").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080", Proto::Tcp), Ok(8080));
        assert!(parse_port("0", Proto::Tcp)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_port("70000", Proto::Tcp)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_port("", Proto::Tcp).is_err());
        assert!(parse_port("no-such-service-x", Proto::Tcp)
            .unwrap_err()
            .contains("unknown"));
    }

    #[test]
    fn listen_specs() {
        let p = |s| ListenSpec::parse(s, Proto::Tcp);
        assert_eq!(
            p("8080").unwrap(),
            ListenSpec::Inet {
                host: None,
                port: 8080
            }
        );
        assert_eq!(
            p("[::1]:8080").unwrap().endpoint().unwrap(),
            Endpoint::Inet("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            p(":::8080").unwrap().endpoint().unwrap(),
            Endpoint::Inet("[::]:8080".parse().unwrap())
        );
        assert_eq!(
            p("0:8080").unwrap().endpoint().unwrap(),
            Endpoint::Inet("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            p("/tmp/x.sock").unwrap(),
            ListenSpec::Unix("/tmp/x.sock".into())
        );
        assert_eq!(p("/tmp/x.sock").unwrap().default_backend_port(), None);
        assert!(p("127.0.0.1:70000").is_err());
        assert!(p("[::1]").is_err());
    }

    #[test]
    fn server_specs() {
        let p = |s| ServerSpec::parse(s, Some(80), Proto::Tcp);
        let s = p("10.0.0.1").unwrap();
        assert_eq!(
            (s.target, s.max, s.hard, s.weight, s.prio),
            (inet("10.0.0.1", 80), 0, 0, 0, 0)
        );
        let s = p("10.0.0.1:81:10:20:3:-4").unwrap();
        assert_eq!(
            (s.target, s.max, s.hard, s.weight, s.prio),
            (inet("10.0.0.1", 81), 10, 20, 3, -4)
        );
        let s = p("[::1]:8080:5").unwrap();
        assert_eq!((s.target, s.max), (inet("::1", 8080), 5));
        assert_eq!(p("[::1]").unwrap().target, inet("::1", 80));
        assert_eq!(p("[127.0.0.1]:9").unwrap().target, inet("127.0.0.1", 9));
        assert_eq!(
            p("/run/b.sock").unwrap().target,
            Target::Unix("/run/b.sock".into())
        );
        assert!(p("10.0.0.1:81:x:5")
            .unwrap_err()
            .problem
            .contains("max 'x'"));
        assert!(p("10.0.0.1:81:-1")
            .unwrap_err()
            .problem
            .contains("out of range"));
        assert!(p("::1").unwrap_err().problem.contains("[addr]"));
        assert!(p("").is_err());
        assert!(p("h:1:2:3:4:5:6").is_err());
        assert!(p("[::1]x").is_err());
        assert!(ServerSpec::parse("10.0.0.1", None, Proto::Tcp).is_err());
        assert!(p("10.0.0.1:0").is_err());
    }
}

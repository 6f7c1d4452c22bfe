//! The parser for one line of the control language (control.md §1.2, §3, §4, §6.1): text in,
//! a typed [`Command`] out, with no state and no I/O (a service name after `server N port`
//! is the one exception: it is looked up in /etc/services, as the original did).
//!
//! Lexing follows C pen's `do_cmd` exactly: the line is cut at the first `\r`, then at the
//! first `\n`; tokens are separated by the space character only (runs collapse, leading
//! spaces are skipped), so a TAB stays inside its token; names are case-sensitive. An empty
//! line, or a first token starting with `#`, is [`Command::Nothing`].
//!
//! Where the original read junk as 0 (`atoi`) or crashed, this parser returns a
//! [`ParseError`] naming the bad token and what was expected:
//! - numbers are an optional sign and ASCII digits, and must fit a C `int` as in the
//!   original; `12x` and `abc` are errors;
//! - ranges that do not depend on state are checked here (`timeout` ≥ 1, ACL numbers 0..=9,
//!   table sizes 1..=1000000, …); `blacklist` still accepts negatives (never blacklist);
//! - missing required arguments (`source`, `include`, `no acl`, `acl …`, `server`) are
//!   errors instead of crashes or silent no-ops;
//! - `server N` with an unknown key or a key without a value is an error naming it.
//!
//! Extra tokens after a command are ignored, as in the original, because scripts and old
//! config files may rely on it (`write` itself never emits any). The exception is `acl` and
//! `no acl`: an ACL decides who may connect, and a trailing token there is almost always a
//! mistake that would silently change its meaning (`acl 1 permit 10.0.0.0/8 255.0.0.0`,
//! `acl 1 permit ::1 ::2`, `no acl 1 2`), so it is rejected.
//!
//! The lexer and the number grammar are nom parsers over complete input; the command words
//! are then dispatched with a `match`, which reads better than a 60-way `alt`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::slice;

use nom::bytes::complete::{take_till1, take_while};
use nom::character::complete::{digit1, one_of};
use nom::combinator::{all_consuming, opt, recognize};
use nom::multi::many0;
use nom::sequence::preceded;
use nom::{IResult, Parser};

use common::addr::{parse_port, Proto};

use super::{
    AclAction, AclMatch, AclRule, Command, EventBackend, Fastclose, Flag, IntSetting, ServerSet,
};

/// Largest table size (`clients_max`, `conn_max`, `pending_max`, `multi_accept`) accepted.
pub const TABLE_MAX: i64 = 1_000_000;

/// Number of ACL lists; ACL numbers are `0..ACLS`.
const ACLS: i64 = 10;

/// A malformed command line. Its `Display` is one line naming the command, the bad token
/// and what was expected (`blacklist: expected a number, got 'abc'`); for an unknown
/// command it is the original's reply, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    command: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The first token is not a command.
    UnknownCommand,
    /// `tcp_fastclose` with no word: the original's own reply.
    NoArgument,
    /// A required argument is missing; the text says which.
    Missing(String),
    /// A token is not what was expected.
    Invalid { token: String, expected: String },
}

impl ParseError {
    fn unknown(command: &str) -> ParseError {
        ParseError {
            command: command.to_string(),
            problem: Problem::UnknownCommand,
        }
    }

    fn missing(command: &str, what: impl Into<String>) -> ParseError {
        ParseError {
            command: command.to_string(),
            problem: Problem::Missing(what.into()),
        }
    }

    fn invalid(command: &str, token: &str, expected: impl Into<String>) -> ParseError {
        ParseError {
            command: command.to_string(),
            problem: Problem::Invalid {
                token: token.to_string(),
                expected: expected.into(),
            },
        }
    }

    /// The command word the error is about (`no acl` for `no acl …`).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The offending token, if the error is about one (the command word itself when the
    /// command is unknown).
    pub fn token(&self) -> Option<&str> {
        match &self.problem {
            Problem::UnknownCommand => Some(&self.command),
            Problem::Invalid { token, .. } => Some(token),
            Problem::NoArgument | Problem::Missing(_) => None,
        }
    }

    /// True when the first token is not a command at all.
    pub fn is_unknown_command(&self) -> bool {
        self.problem == Problem::UnknownCommand
    }

    /// The message without the leading `command: ` (used by the command line, which names
    /// the option instead).
    pub(crate) fn detail(&self) -> String {
        match &self.problem {
            Problem::UnknownCommand => format!("unknown command '{}'", self.command),
            Problem::NoArgument => "missing argument".to_string(),
            Problem::Missing(what) => format!("missing {what}"),
            Problem::Invalid { token, expected } => format!("expected {expected}, got '{token}'"),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            // The original's replies, kept byte-compatible (control.md §3.2, §4).
            Problem::UnknownCommand => {
                write!(
                    f,
                    "do_cmd: ignoring command starting with '{}'",
                    self.command
                )
            }
            Problem::NoArgument => write!(f, "do_cmd: ignoring {} without argument", self.command),
            _ => write!(f, "{}: {}", self.command, self.detail()),
        }
    }
}

impl std::error::Error for ParseError {}

/// On/off settings by command name (control.md §3.2).
const FLAGS: [(&str, Flag); 13] = [
    ("hash", Flag::Hash),
    ("roundrobin", Flag::Roundrobin),
    ("stubborn", Flag::Stubborn),
    ("weight", Flag::Weight),
    ("prio", Flag::Prio),
    ("http", Flag::Http),
    ("ascii", Flag::Ascii),
    ("tcp_nodelay", Flag::TcpNodelay),
    ("keepalive", Flag::Keepalive),
    ("transparent", Flag::Transparent),
    ("peek", Flag::Peek),
    ("dummy", Flag::Dummy),
    ("abort_on_error", Flag::AbortOnError),
];

/// Integer settings by command name (control.md §3.1; `multi_accept`, for `-m`, and
/// `busy_poll` are ours).
const INTS: [(&str, IntSetting); 14] = [
    ("blacklist", IntSetting::Blacklist),
    ("timeout", IntSetting::Timeout),
    ("tracking", IntSetting::Tracking),
    ("debug", IntSetting::Debug),
    ("clients_max", IntSetting::ClientsMax),
    ("conn_max", IntSetting::ConnMax),
    ("client_acl", IntSetting::ClientAcl),
    ("control_acl", IntSetting::ControlAcl),
    ("tarpit_acl", IntSetting::TarpitAcl),
    ("idle_timeout", IntSetting::IdleTimeout),
    ("idlers", IntSetting::Idlers),
    ("pending_max", IntSetting::PendingMax),
    ("multi_accept", IntSetting::MultiAccept),
    ("busy_poll", IntSetting::BusyPoll),
];

/// Commands of features this build does not have (TLS settings, direct server return).
const UNSUPPORTED: [&str; 7] = [
    "ssl_ciphers",
    "ssl_option",
    "ssl_sni_path",
    "ssl_ocsp_response",
    "ssl_client_renegotiation_interval",
    "dsr_if",
    "dsr_ip",
];

/// Longest `busy_poll` window (10 ms): spinning through longer gaps costs far more than
/// the few microseconds a wake-up does.
const BUSY_POLL_MAX: i64 = 10_000;

const INT_MIN: i64 = i32::MIN as i64;
const INT_MAX: i64 = i32::MAX as i64;

/// Parses one command line.
pub fn parse_line(line: &str) -> Result<Command, ParseError> {
    let words = words(first_line(line));
    let Some((&name, rest)) = words.split_first() else {
        return Ok(Command::Nothing);
    };
    if name.starts_with('#') {
        return Ok(Command::Nothing);
    }
    let mut args = Args {
        command: name,
        rest: rest.iter(),
    };
    if let Some(flag) = lookup(&FLAGS, name) {
        return Ok(Command::Flag(flag, true));
    }
    if let Some(setting) = lookup(&INTS, name) {
        let value = args.next().map(|tok| int_value(setting, tok)).transpose()?;
        return Ok(Command::Int(setting, value));
    }
    if UNSUPPORTED.contains(&name) {
        return Ok(Command::Unsupported(name.to_string()));
    }
    let command = match name {
        "no" => no(args)?,
        "acl" => acl(args)?,
        "server" => server(args)?,
        "tcp_fastclose" => Command::TcpFastclose(fastclose(args)?),
        "epoll" => Command::EventBackend(EventBackend::Epoll),
        "poll" => Command::EventBackend(EventBackend::Poll),
        "select" => Command::EventBackend(EventBackend::Select),
        "kqueue" => Command::EventBackend(EventBackend::Kqueue),
        "listen" => Command::Listen(args.next_string()),
        "log" => Command::Log(args.next_string()),
        "web_stats" => Command::WebStats(args.next_string()),
        "prometheus" => Command::Prometheus(args.next_string()),
        "write" => Command::Write(args.next_string()),
        "source" => Command::Source(args.required("address")?.to_string()),
        "include" => Command::Include(args.required("file name")?.to_string()),
        "recent" => Command::Recent(args.opt_int("a number of seconds")?),
        "connection" => Command::Connection(args.opt_int("a connection number")?),
        "socket" => Command::Socket(args.opt_int("a file descriptor number")?),
        "close" => Command::Close(args.opt_int("a connection number")?),
        "servers" => Command::Servers,
        "mode" => Command::Mode,
        "stats" => Command::Stats,
        "status" => Command::Status,
        "pid" => Command::Pid,
        "control" => Command::Control,
        "exit" => Command::Exit,
        _ => return Err(ParseError::unknown(name)),
    };
    Ok(command)
}

/// Checks the value of an integer setting, exactly as `NAME VALUE` would (used by the
/// command line for `-b`, `-c`, `-t`, …).
pub(crate) fn int_value(setting: IntSetting, token: &str) -> Result<i64, ParseError> {
    let (lo, hi, expected) = int_range(setting);
    int_in(int_name(setting), token, lo, hi, expected)
}

/// Parses a strict integer: an optional sign and ASCII digits, nothing else.
pub(crate) fn number(token: &str) -> Option<i64> {
    let (_, text) = all_consuming(integer).parse(token).ok()?;
    text.parse().ok()
}

/// The command name of an integer setting.
fn int_name(setting: IntSetting) -> &'static str {
    INTS.iter()
        .find(|(_, s)| *s == setting)
        .map_or("?", |(name, _)| name)
}

/// The accepted range of each integer setting, and how to say it in an error.
fn int_range(setting: IntSetting) -> (i64, i64, &'static str) {
    use IntSetting::*;
    match setting {
        // Negative: never blacklist (control.md §3.1).
        Blacklist => (INT_MIN, INT_MAX, "a number"),
        // 0 would make every pending connect time out at once (control.md §3.1 defect).
        Timeout => (1, INT_MAX, "a number of seconds of at least 1"),
        Tracking | IdleTimeout => (0, INT_MAX, "a number of seconds of at least 0"),
        Debug | Idlers => (0, INT_MAX, "a number of at least 0"),
        ClientsMax | ConnMax | PendingMax | MultiAccept => {
            (1, TABLE_MAX, "a number from 1 to 1000000")
        }
        ClientAcl | ControlAcl => (0, ACLS - 1, "an ACL number from 0 to 9"),
        TarpitAcl => (-1, ACLS - 1, "an ACL number from -1 to 9"),
        BusyPoll => (0, BUSY_POLL_MAX, "a number of microseconds from 0 to 10000"),
    }
}

/// Cuts the line at the first `\r`, then at the first `\n` (control.md §1.2 step 3).
fn first_line(line: &str) -> &str {
    let line = line.split_once('\r').map_or(line, |(head, _)| head);
    line.split_once('\n').map_or(line, |(head, _)| head)
}

/// Splits on runs of spaces (only the space character: a TAB belongs to its token).
fn words(line: &str) -> Vec<&str> {
    fn word(input: &str) -> IResult<&str, &str> {
        preceded(take_while(|c| c == ' '), take_till1(|c| c == ' ')).parse(input)
    }
    // `many0` on complete input stops at the first failure, here the trailing spaces.
    many0(word)
        .parse(line)
        .map(|(_, words)| words)
        .unwrap_or_default()
}

/// `[+-]digits`.
fn integer(input: &str) -> IResult<&str, &str> {
    recognize((opt(one_of("+-")), digit1)).parse(input)
}

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Parses `token` as an integer in `lo..=hi`.
fn int_in(command: &str, token: &str, lo: i64, hi: i64, expected: &str) -> Result<i64, ParseError> {
    match number(token) {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(ParseError::invalid(command, token, expected)),
    }
}

/// An ACL number, 0..=9.
fn acl_index(command: &str, token: &str) -> Result<u8, ParseError> {
    let n = int_in(command, token, 0, ACLS - 1, "an ACL number from 0 to 9")?;
    u8::try_from(n).map_err(|_| ParseError::invalid(command, token, "an ACL number from 0 to 9"))
}

/// The arguments after the command word.
struct Args<'a> {
    command: &'a str,
    rest: slice::Iter<'a, &'a str>,
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a str> {
        self.rest.next().copied()
    }

    fn next_string(&mut self) -> Option<String> {
        self.next().map(str::to_string)
    }

    fn required(&mut self, what: &str) -> Result<&'a str, ParseError> {
        self.next()
            .ok_or_else(|| ParseError::missing(self.command, what))
    }

    /// An optional argument that must be a number when present (any C `int`).
    fn opt_int(&mut self, expected: &str) -> Result<Option<i64>, ParseError> {
        let command = self.command;
        self.next()
            .map(|tok| int_in(command, tok, INT_MIN, INT_MAX, expected))
            .transpose()
    }

    /// Rejects trailing tokens (only where ignoring them would be dangerous).
    fn finish(&mut self) -> Result<(), ParseError> {
        match self.next() {
            Some(tok) => Err(ParseError::invalid(self.command, tok, "end of line")),
            None => Ok(()),
        }
    }
}

/// `no X`: known flags and a few settings; anything else is silently ignored.
fn no(mut args: Args<'_>) -> Result<Command, ParseError> {
    let Some(what) = args.next() else {
        return Ok(Command::IgnoredNo);
    };
    if let Some(flag) = lookup(&FLAGS, what) {
        return Ok(Command::Flag(flag, false));
    }
    Ok(match what {
        "log" => Command::NoLog,
        "web_stats" => Command::NoWebStats,
        "prometheus" => Command::NoPrometheus,
        "source" => Command::NoSource,
        "acl" => {
            // The original dereferenced a missing N and crashed (control.md §3.5).
            let mut args = Args {
                command: "no acl",
                rest: args.rest,
            };
            let n = acl_index("no acl", args.required("ACL number")?)?;
            args.finish()?;
            Command::NoAcl(n)
        }
        _ => Command::IgnoredNo,
    })
}

/// `tcp_fastclose both|up|down|off`.
fn fastclose(mut args: Args<'_>) -> Result<Fastclose, ParseError> {
    let Some(word) = args.next() else {
        return Err(ParseError {
            command: args.command.to_string(),
            problem: Problem::NoArgument,
        });
    };
    match word {
        "both" => Ok(Fastclose::Both),
        "up" => Ok(Fastclose::Up),
        "down" => Ok(Fastclose::Down),
        "off" => Ok(Fastclose::Off),
        _ => Err(ParseError::invalid(
            args.command,
            word,
            "both, up, down or off",
        )),
    }
}

/// `server N [KEY VALUE]...`.
fn server(mut args: Args<'_>) -> Result<Command, ParseError> {
    let cmd = args.command;
    let tok = args.required("server number")?;
    let n = int_in(cmd, tok, 0, INT_MAX, "a server number of at least 0")?;
    let n = usize::try_from(n).map_err(|_| ParseError::invalid(cmd, tok, "a server number"))?;
    let mut sets = Vec::new();
    while let Some(key) = args.next() {
        let mut value = || args.required(&format!("value after '{key}'"));
        let count = |v: &str| -> Result<u32, ParseError> {
            let n = int_in(cmd, v, 0, INT_MAX, "a number of at least 0")?;
            u32::try_from(n).map_err(|_| ParseError::invalid(cmd, v, "a number of at least 0"))
        };
        let set = match key {
            "address" => ServerSet::Address(value()?.to_string()),
            "port" => {
                let v = value()?;
                let port = parse_port(v, Proto::Tcp).map_err(|_| {
                    ParseError::invalid(cmd, v, "a port from 1 to 65535 or a service name")
                })?;
                ServerSet::Port(port)
            }
            "max" => ServerSet::Max(count(value()?)?),
            "hard" => ServerSet::Hard(count(value()?)?),
            "weight" => ServerSet::Weight(count(value()?)?),
            "prio" => {
                let v = value()?;
                let p = int_in(cmd, v, INT_MIN, INT_MAX, "a number")?;
                ServerSet::Prio(
                    i32::try_from(p).map_err(|_| ParseError::invalid(cmd, v, "a number"))?,
                )
            }
            "blacklist" => {
                ServerSet::Blacklist(int_in(cmd, value()?, INT_MIN, INT_MAX, "a number")?)
            }
            "acl" => ServerSet::Acl(acl_index(cmd, value()?)?),
            _ => {
                return Err(ParseError::invalid(
                    cmd,
                    key,
                    "address, port, max, hard, weight, prio, blacklist or acl",
                ))
            }
        };
        sets.push(set);
    }
    Ok(Command::Server(n, sets))
}

/// `acl N permit|deny ADDR [MASK]`, `… ADDR/LEN`, `… IPV6[/LEN]`, `… country CC`.
fn acl(mut args: Args<'_>) -> Result<Command, ParseError> {
    let cmd = args.command;
    let n = acl_index(cmd, args.required("ACL number")?)?;
    let action = match args.required("permit or deny")? {
        "permit" => AclAction::Permit,
        "deny" => AclAction::Deny,
        other => return Err(ParseError::invalid(cmd, other, "permit or deny")),
    };
    let target = args.required("address")?;
    let matcher = if target == "country" {
        let cc = args.required("country code")?;
        if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ParseError::invalid(cmd, cc, "a two-letter country code"));
        }
        AclMatch::Country(cc.to_string())
    } else if target.contains(':') {
        // Anything with a colon is IPv6, as in the original.
        let (addr, len) = split_len(cmd, target, 128)?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| ParseError::invalid(cmd, target, "an IPv6 address"))?;
        AclMatch::V6 { addr, len }
    } else {
        let (addr, len) = split_len(cmd, target, 32)?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| ParseError::invalid(cmd, target, "an IPv4 address"))?;
        // With `/LEN` a MASK token would contradict it: `finish` below rejects it.
        let mask = if target.contains('/') {
            prefix_mask(len)
        } else if let Some(m) = args.next() {
            m.parse()
                .map_err(|_| ParseError::invalid(cmd, m, "a dotted-quad netmask"))?
        } else {
            Ipv4Addr::BROADCAST
        };
        AclMatch::V4 { addr, mask }
    };
    args.finish()?;
    Ok(Command::Acl(n, AclRule { action, matcher }))
}

/// Splits `ADDR[/LEN]`; LEN is 0..=`max` and defaults to `max`.
fn split_len<'a>(cmd: &str, token: &'a str, max: u8) -> Result<(&'a str, u8), ParseError> {
    let Some((addr, len)) = token.split_once('/') else {
        return Ok((token, max));
    };
    let expected = format!("a prefix length from 0 to {max}");
    // Digits only: `/+8` or `/-1` are not prefix lengths.
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::invalid(cmd, token, expected));
    }
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok((addr, n)),
        _ => Err(ParseError::invalid(cmd, token, expected)),
    }
}

/// The IPv4 netmask with `len` leading ones (`len` ≤ 32).
fn prefix_mask(len: u8) -> Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        match parse_line(line) {
            Ok(c) => c,
            Err(e) => panic!("{line:?}: unexpected error {e}"),
        }
    }

    fn err(line: &str) -> String {
        match parse_line(line) {
            Ok(c) => panic!("{line:?}: expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn v4(action: AclAction, addr: [u8; 4], mask: [u8; 4]) -> AclRule {
        AclRule {
            action,
            matcher: AclMatch::V4 {
                addr: addr.into(),
                mask: mask.into(),
            },
        }
    }

    #[test]
    fn nothing() {
        for line in [
            "",
            " ",
            "   ",
            "\n",
            "\r\n",
            "#",
            "# hello",
            "#x y",
            "  # indented",
            "\rmode",
        ] {
            assert_eq!(ok(line), Command::Nothing, "{line:?}");
        }
    }

    #[test]
    fn line_cutting_and_spaces() {
        assert_eq!(ok(" mode"), Command::Mode);
        assert_eq!(ok("mode\r\n"), Command::Mode);
        assert_eq!(ok("mode\n"), Command::Mode);
        assert_eq!(ok("pid\ndebug"), Command::Pid);
        assert_eq!(ok("pid\r\ndebug 5"), Command::Pid);
        assert_eq!(
            ok("blacklist    7   "),
            Command::Int(IntSetting::Blacklist, Some(7))
        );
        // \r cuts first, even after \n.
        assert_eq!(
            ok("blacklist 5\nx\r"),
            Command::Int(IntSetting::Blacklist, Some(5))
        );
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(
            err("frobnicate a b"),
            "do_cmd: ignoring command starting with 'frobnicate'"
        );
        assert_eq!(err("MODE"), "do_cmd: ignoring command starting with 'MODE'");
        assert_eq!(
            err("blacklist\t5"),
            "do_cmd: ignoring command starting with 'blacklist\t5'"
        );
        assert_eq!(
            err("\tmode"),
            "do_cmd: ignoring command starting with '\tmode'"
        );
        // The man page lists these, the code never accepted them.
        assert!(err("block").contains("'block'"));
        assert!(err("delayed_forward").contains("'delayed_forward'"));
        let e = parse_line("frob").unwrap_err();
        assert!(e.is_unknown_command());
        assert_eq!(e.token(), Some("frob"));
    }

    #[test]
    fn flags() {
        for (name, flag) in FLAGS {
            assert_eq!(ok(name), Command::Flag(flag, true));
            assert_eq!(ok(&format!("no {name}")), Command::Flag(flag, false));
            assert_eq!(
                ok(&format!("  no   {name}  extra")),
                Command::Flag(flag, false)
            );
        }
    }

    #[test]
    fn no_forms() {
        assert_eq!(ok("no"), Command::IgnoredNo);
        assert_eq!(ok("no frob"), Command::IgnoredNo);
        assert_eq!(ok("no block"), Command::IgnoredNo);
        assert_eq!(ok("no tcp_fastclose"), Command::IgnoredNo);
        assert_eq!(ok("no HASH"), Command::IgnoredNo);
        assert_eq!(ok("no log"), Command::NoLog);
        assert_eq!(ok("no web_stats"), Command::NoWebStats);
        assert_eq!(ok("no source"), Command::NoSource);
        assert_eq!(ok("no acl 0"), Command::NoAcl(0));
        assert_eq!(ok("no acl 9"), Command::NoAcl(9));
        assert_eq!(err("no acl"), "no acl: missing ACL number");
        assert_eq!(
            err("no acl 10"),
            "no acl: expected an ACL number from 0 to 9, got '10'"
        );
        assert_eq!(
            err("no acl x"),
            "no acl: expected an ACL number from 0 to 9, got 'x'"
        );
        assert_eq!(err("no acl 1 2"), "no acl: expected end of line, got '2'");
    }

    #[test]
    fn int_settings_query_and_set() {
        for (name, setting) in INTS {
            assert_eq!(ok(name), Command::Int(setting, None), "{name}");
            assert_eq!(
                ok(&format!("{name} 1")),
                Command::Int(setting, Some(1)),
                "{name}"
            );
            assert_eq!(
                ok(&format!("{name} +1 extra")),
                Command::Int(setting, Some(1))
            );
            let e = err(&format!("{name} abc"));
            assert!(e.starts_with(&format!("{name}: expected ")), "{e}");
            assert!(e.ends_with(", got 'abc'"), "{e}");
            assert!(err(&format!("{name} 12x")).ends_with("got '12x'"));
            assert!(err(&format!("{name} 1.5")).ends_with("got '1.5'"));
            assert!(err(&format!("{name} 99999999999")).ends_with("got '99999999999'"));
            assert!(err(&format!("{name} -")).ends_with("got '-'"));
        }
        assert_eq!(
            err("blacklist abc"),
            "blacklist: expected a number, got 'abc'"
        );
    }

    #[test]
    fn int_ranges() {
        use IntSetting::*;
        let i = |line| ok(line);
        assert_eq!(i("blacklist -5"), Command::Int(Blacklist, Some(-5)));
        assert_eq!(i("blacklist 0"), Command::Int(Blacklist, Some(0)));
        assert_eq!(i("timeout 3"), Command::Int(Timeout, Some(3)));
        assert_eq!(
            err("timeout 0"),
            "timeout: expected a number of seconds of at least 1, got '0'"
        );
        assert_eq!(i("tracking 0"), Command::Int(Tracking, Some(0)));
        assert!(err("tracking -1").ends_with("got '-1'"));
        assert!(err("idle_timeout -5").ends_with("got '-5'"));
        assert!(err("idlers -1").ends_with("got '-1'"));
        assert!(err("debug -1").ends_with("got '-1'"));
        assert_eq!(i("debug 0"), Command::Int(Debug, Some(0)));
        assert_eq!(i("busy_poll 0"), Command::Int(BusyPoll, Some(0)));
        assert_eq!(i("busy_poll 10000"), Command::Int(BusyPoll, Some(10_000)));
        assert_eq!(i("busy_poll"), Command::Int(BusyPoll, None));
        assert_eq!(
            err("busy_poll 10001"),
            "busy_poll: expected a number of microseconds from 0 to 10000, got '10001'"
        );
        assert!(err("busy_poll -1").ends_with("got '-1'"));
        for name in ["clients_max", "conn_max", "pending_max", "multi_accept"] {
            assert!(err(&format!("{name} 0")).contains("from 1 to 1000000"));
            assert!(err(&format!("{name} -1")).contains("from 1 to 1000000"));
            assert!(err(&format!("{name} 1000001")).contains("from 1 to 1000000"));
            assert!(matches!(
                ok(&format!("{name} 1000000")),
                Command::Int(_, Some(1_000_000))
            ));
        }
        for name in ["client_acl", "control_acl"] {
            assert!(matches!(ok(&format!("{name} 0")), Command::Int(_, Some(0))));
            assert!(matches!(ok(&format!("{name} 9")), Command::Int(_, Some(9))));
            assert_eq!(
                err(&format!("{name} 10")),
                format!("{name}: expected an ACL number from 0 to 9, got '10'")
            );
            assert!(err(&format!("{name} -1")).ends_with("got '-1'"));
        }
        assert_eq!(i("tarpit_acl -1"), Command::Int(TarpitAcl, Some(-1)));
        assert_eq!(i("tarpit_acl 9"), Command::Int(TarpitAcl, Some(9)));
        assert!(err("tarpit_acl 11").ends_with("got '11'"));
        assert!(err("tarpit_acl -2").ends_with("got '-2'"));
    }

    #[test]
    fn fastclose_and_backends() {
        assert_eq!(
            ok("tcp_fastclose both"),
            Command::TcpFastclose(Fastclose::Both)
        );
        assert_eq!(ok("tcp_fastclose up"), Command::TcpFastclose(Fastclose::Up));
        assert_eq!(
            ok("tcp_fastclose down"),
            Command::TcpFastclose(Fastclose::Down)
        );
        assert_eq!(
            ok("tcp_fastclose off"),
            Command::TcpFastclose(Fastclose::Off)
        );
        assert_eq!(
            err("tcp_fastclose"),
            "do_cmd: ignoring tcp_fastclose without argument"
        );
        assert_eq!(
            err("tcp_fastclose   "),
            "do_cmd: ignoring tcp_fastclose without argument"
        );
        assert_eq!(
            err("tcp_fastclose sideways"),
            "tcp_fastclose: expected both, up, down or off, got 'sideways'"
        );
        assert_eq!(ok("epoll"), Command::EventBackend(EventBackend::Epoll));
        assert_eq!(ok("poll"), Command::EventBackend(EventBackend::Poll));
        assert_eq!(ok("select"), Command::EventBackend(EventBackend::Select));
        assert_eq!(ok("kqueue"), Command::EventBackend(EventBackend::Kqueue));
    }

    #[test]
    fn text_arguments() {
        assert_eq!(ok("listen"), Command::Listen(None));
        assert_eq!(
            ok("listen 127.0.0.1:8080"),
            Command::Listen(Some("127.0.0.1:8080".into()))
        );
        assert_eq!(ok("log"), Command::Log(None));
        assert_eq!(ok("log host:1234"), Command::Log(Some("host:1234".into())));
        assert_eq!(ok("web_stats"), Command::WebStats(None));
        assert_eq!(
            ok("web_stats /tmp/w.html"),
            Command::WebStats(Some("/tmp/w.html".into()))
        );
        assert_eq!(ok("write"), Command::Write(None));
        assert_eq!(
            ok("write /tmp/x.cfg"),
            Command::Write(Some("/tmp/x.cfg".into()))
        );
        assert_eq!(ok("source 10.0.0.1"), Command::Source("10.0.0.1".into()));
        assert_eq!(err("source"), "source: missing address");
        assert_eq!(ok("include a.cfg"), Command::Include("a.cfg".into()));
        assert_eq!(err("include"), "include: missing file name");
    }

    #[test]
    fn views_and_actions() {
        assert_eq!(ok("servers"), Command::Servers);
        assert_eq!(ok("mode"), Command::Mode);
        assert_eq!(ok("status"), Command::Status);
        assert_eq!(ok("pid"), Command::Pid);
        assert_eq!(ok("control"), Command::Control);
        assert_eq!(ok("exit"), Command::Exit);
        assert_eq!(ok("recent"), Command::Recent(None));
        assert_eq!(ok("recent 60"), Command::Recent(Some(60)));
        assert_eq!(ok("connection"), Command::Connection(None));
        assert_eq!(ok("connection 500"), Command::Connection(Some(500)));
        assert_eq!(ok("connection -1"), Command::Connection(Some(-1)));
        assert_eq!(ok("socket 7"), Command::Socket(Some(7)));
        assert_eq!(ok("close 5"), Command::Close(Some(5)));
        assert_eq!(ok("close"), Command::Close(None));
        assert_eq!(
            err("recent x"),
            "recent: expected a number of seconds, got 'x'"
        );
        assert_eq!(
            err("close 5x"),
            "close: expected a connection number, got '5x'"
        );
        assert!(err("socket abc").starts_with("socket: expected"));
        assert!(err("connection abc").starts_with("connection: expected"));
    }

    #[test]
    fn unsupported() {
        for name in UNSUPPORTED {
            assert_eq!(ok(name), Command::Unsupported(name.into()));
            assert_eq!(
                ok(&format!("{name} arg")),
                Command::Unsupported(name.into())
            );
        }
    }

    #[test]
    fn server_keys() {
        assert_eq!(ok("server 3"), Command::Server(3, vec![]));
        assert_eq!(
            ok("server 1 address 127.0.0.1 port 41082 max 10 hard 20 weight 3 prio -4 blacklist 5 acl 9"),
            Command::Server(
                1,
                vec![
                    ServerSet::Address("127.0.0.1".into()),
                    ServerSet::Port(41082),
                    ServerSet::Max(10),
                    ServerSet::Hard(20),
                    ServerSet::Weight(3),
                    ServerSet::Prio(-4),
                    ServerSet::Blacklist(5),
                    ServerSet::Acl(9),
                ]
            )
        );
        assert_eq!(
            ok("server 0 address /run/pen/sock"),
            Command::Server(0, vec![ServerSet::Address("/run/pen/sock".into())])
        );
        assert_eq!(
            ok("server 0 blacklist -3"),
            Command::Server(0, vec![ServerSet::Blacklist(-3)])
        );
        // Service names come from /etc/services, which a minimal container may lack.
        if parse_port("http", Proto::Tcp) == Ok(80) {
            assert_eq!(
                ok("server 0 port http"),
                Command::Server(0, vec![ServerSet::Port(80)])
            );
        }
    }

    #[test]
    fn server_errors() {
        assert_eq!(err("server"), "server: missing server number");
        assert_eq!(
            err("server -1"),
            "server: expected a server number of at least 0, got '-1'"
        );
        assert_eq!(
            err("server x"),
            "server: expected a server number of at least 0, got 'x'"
        );
        assert_eq!(err("server 0 max"), "server: missing value after 'max'");
        assert_eq!(
            err("server 0 port 80 address"),
            "server: missing value after 'address'"
        );
        assert_eq!(
            err("server 0 colour red"),
            "server: expected address, port, max, hard, weight, prio, blacklist or acl, got 'colour'"
        );
        assert_eq!(
            err("server 0 port 0"),
            "server: expected a port from 1 to 65535 or a service name, got '0'"
        );
        assert!(err("server 0 port 65536").ends_with("got '65536'"));
        assert!(err("server 0 port no-such-service-x").ends_with("got 'no-such-service-x'"));
        assert_eq!(
            err("server 0 max -1"),
            "server: expected a number of at least 0, got '-1'"
        );
        assert!(err("server 0 hard x").ends_with("got 'x'"));
        assert!(err("server 0 weight 1x").ends_with("got '1x'"));
        assert!(err("server 0 prio p").ends_with("got 'p'"));
        assert!(err("server 0 blacklist b").ends_with("got 'b'"));
        assert_eq!(
            err("server 0 acl 10"),
            "server: expected an ACL number from 0 to 9, got '10'"
        );
        assert!(err("server 0 acl -1").ends_with("got '-1'"));
    }

    #[test]
    fn acl_ipv4() {
        use AclAction::*;
        assert_eq!(
            ok("acl 1 permit 127.0.0.1"),
            Command::Acl(1, v4(Permit, [127, 0, 0, 1], [255; 4]))
        );
        assert_eq!(
            ok("acl 1 deny 10.0.0.0 255.0.0.0"),
            Command::Acl(1, v4(Deny, [10, 0, 0, 0], [255, 0, 0, 0]))
        );
        assert_eq!(
            ok("acl 0 deny 0.0.0.0 0.0.0.0"),
            Command::Acl(0, v4(Deny, [0; 4], [0; 4]))
        );
        // CIDR, which the original rejected (control.md §6.4).
        assert_eq!(
            ok("acl 9 permit 10.0.0.0/8"),
            Command::Acl(9, v4(Permit, [10, 0, 0, 0], [255, 0, 0, 0]))
        );
        assert_eq!(
            ok("acl 2 deny 0.0.0.0/0"),
            Command::Acl(2, v4(Deny, [0; 4], [0; 4]))
        );
        assert_eq!(
            ok("acl 2 deny 1.2.3.4/32"),
            Command::Acl(2, v4(Deny, [1, 2, 3, 4], [255; 4]))
        );
        assert_eq!(
            ok("acl 2 deny 192.168.1.0/23"),
            Command::Acl(2, v4(Deny, [192, 168, 1, 0], [255, 255, 254, 0]))
        );
        // Not normalised here: Acls::add does that.
        assert_eq!(
            ok("acl 3 permit 127.0.0.2 255.0.0.0"),
            Command::Acl(3, v4(Permit, [127, 0, 0, 2], [255, 0, 0, 0]))
        );
    }

    #[test]
    fn acl_ipv6_and_country() {
        use AclAction::*;
        let v6 = |action, addr: &str, len| {
            let addr: Ipv6Addr = addr.parse().unwrap();
            AclRule {
                action,
                matcher: AclMatch::V6 { addr, len },
            }
        };
        assert_eq!(
            ok("acl 2 permit ::1"),
            Command::Acl(2, v6(Permit, "::1", 128))
        );
        assert_eq!(
            ok("acl 2 deny fd00::/8"),
            Command::Acl(2, v6(Deny, "fd00::", 8))
        );
        assert_eq!(ok("acl 2 deny ::/0"), Command::Acl(2, v6(Deny, "::", 0)));
        assert_eq!(
            ok("acl 2 permit ::1/64"),
            Command::Acl(2, v6(Permit, "::1", 64))
        );
        assert_eq!(
            ok("acl 2 permit ::ffff:1.2.3.4"),
            Command::Acl(2, v6(Permit, "::ffff:1.2.3.4", 128))
        );
        assert_eq!(
            ok("acl 3 permit country SE"),
            Command::Acl(
                3,
                AclRule {
                    action: Permit,
                    matcher: AclMatch::Country("SE".into())
                }
            )
        );
    }

    #[test]
    fn acl_errors() {
        assert_eq!(err("acl"), "acl: missing ACL number");
        assert_eq!(err("acl 1"), "acl: missing permit or deny");
        assert_eq!(err("acl 1 permit"), "acl: missing address");
        assert_eq!(
            err("acl 10 permit 1.2.3.4"),
            "acl: expected an ACL number from 0 to 9, got '10'"
        );
        assert_eq!(
            err("acl x permit 1.2.3.4"),
            "acl: expected an ACL number from 0 to 9, got 'x'"
        );
        assert_eq!(
            err("acl -1 permit 1.2.3.4"),
            "acl: expected an ACL number from 0 to 9, got '-1'"
        );
        assert_eq!(
            err("acl 1 allow 1.2.3.4"),
            "acl: expected permit or deny, got 'allow'"
        );
        assert_eq!(
            err("acl 1 permit 10.1"),
            "acl: expected an IPv4 address, got '10.1'"
        );
        assert_eq!(
            err("acl 1 permit localhost"),
            "acl: expected an IPv4 address, got 'localhost'"
        );
        assert_eq!(
            err("acl 1 permit 1.2.3.4 255.0"),
            "acl: expected a dotted-quad netmask, got '255.0'"
        );
        assert_eq!(
            err("acl 1 permit 10.0.0.0/33"),
            "acl: expected a prefix length from 0 to 32, got '10.0.0.0/33'"
        );
        assert!(err("acl 1 permit 10.0.0.0/").ends_with("got '10.0.0.0/'"));
        assert!(err("acl 1 permit 10.0.0.0/-1").ends_with("got '10.0.0.0/-1'"));
        assert!(err("acl 1 permit 10.0.0.0/x").ends_with("got '10.0.0.0/x'"));
        assert_eq!(
            err("acl 1 permit 10.0.0.0/8 255.0.0.0"),
            "acl: expected end of line, got '255.0.0.0'"
        );
        assert_eq!(
            err("acl 1 permit 1.2.3.4 255.0.0.0 x"),
            "acl: expected end of line, got 'x'"
        );
        assert_eq!(
            err("acl 1 permit ::1/129"),
            "acl: expected a prefix length from 0 to 128, got '::1/129'"
        );
        assert_eq!(
            err("acl 1 permit ::1/-1"),
            "acl: expected a prefix length from 0 to 128, got '::1/-1'"
        );
        assert_eq!(
            err("acl 1 permit :::1"),
            "acl: expected an IPv6 address, got ':::1'"
        );
        assert_eq!(
            err("acl 1 permit ::1 ffff::"),
            "acl: expected end of line, got 'ffff::'"
        );
        assert_eq!(err("acl 1 permit country"), "acl: missing country code");
        assert_eq!(
            err("acl 1 permit country Sweden"),
            "acl: expected a two-letter country code, got 'Sweden'"
        );
        assert_eq!(
            err("acl 1 permit country SE NO"),
            "acl: expected end of line, got 'NO'"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("-12"), Some(-12));
        assert_eq!(number("+12"), Some(12));
        assert_eq!(number("007"), Some(7));
        for bad in [
            "", "+", "-", "12x", "x12", " 1", "1 ", "--1", "1e3", "0x10", "١",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(prefix_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_mask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(int_value(IntSetting::ConnMax, "500"), Ok(500));
        assert_eq!(
            int_value(IntSetting::ConnMax, "0").unwrap_err().detail(),
            "expected a number from 1 to 1000000, got '0'"
        );
        for (name, setting) in INTS {
            assert_eq!(int_name(setting), name);
        }
    }
}

//! The command line. The clap struct mirrors the original's flags 1:1 (spec §3) plus the
//! new options, and is turned at once into a [`Config`]; it never leaves this file.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use common::addr::{parse_port, Proto};

use crate::nets::Net;
use crate::Error;

/// The default receive buffer: about 40,000 small datagrams, or 0.1 s at full loopback
/// speed, so that a scheduling hiccup loses nothing (the kernel default holds ~256).
pub const DEFAULT_RCVBUF: usize = 32 << 20;

/// The default window in seconds: a record older than this is never used.
pub const DEFAULT_WINDOW: u64 = 600;

/// How long a web line with no record yet waits for one, in milliseconds.
pub const DEFAULT_HOLD_MS: u64 = 200;

/// The longest `-H`: a minute; a longer wait delays every line that never matches.
pub const MAX_HOLD_MS: u64 = 60_000;

/// The largest `-w`/`--jitter`: ten years, far beyond any real use, and small enough that
/// every time computed from it fits an `i64` of milliseconds.
pub const MAX_WINDOW: u64 = 10 * 365 * 86400;

/// The options that only the daemon reads: refused with `--merge` rather than ignored.
const DAEMON_ONLY: [&str; 13] = [
    "foreground",
    "line_buffered",
    "chroot",
    "records",
    "pidfile",
    "user",
    "listen",
    "rcvbuf",
    "hold",
    "pen_from",
    "web_from",
    "rotate_size",
    "daily",
];

#[derive(Parser, Debug)]
#[command(
    name = "penlogd",
    version,
    about = "Join pen's client records with web server log lines into one access log",
    override_usage = "penlogd [-fdb] [-j DIR] [-l LOGFILE] [-n N] [-p PIDFILE] [-u USER] [OPTIONS] PORT\n       \
                      penlogd --merge PENLOG [-l OUTFILE] [--jitter SECS] [--offset SECS] SERVER:LOGFILE..."
)]
struct Args {
    /// Raise the debug level (repeatable).
    #[arg(short = 'd', action = ArgAction::Count)]
    debug: u8,
    /// Stay in the foreground; diagnostics go to stderr instead of syslog.
    #[arg(short = 'f')]
    foreground: bool,
    /// Write every line as soon as the socket queue is empty (default: within 10 ms).
    #[arg(short = 'b')]
    line_buffered: bool,
    /// chroot to DIR; -l and -p paths are then inside DIR.
    #[arg(short = 'j', value_name = "DIR")]
    chroot: Option<PathBuf>,
    /// Output file, opened in append mode (default: stdout).
    #[arg(short = 'l', value_name = "LOGFILE")]
    log: Option<PathBuf>,
    /// Number of pen records kept (1..=10000000).
    #[arg(short = 'n', value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    records: u32,
    /// Write the PID to PIDFILE; removed at exit.
    #[arg(short = 'p', value_name = "PIDFILE")]
    pidfile: Option<PathBuf>,
    /// Run as USER (with its groups) after opening the socket, log and pidfile.
    #[arg(short = 'u', value_name = "USER")]
    user: Option<String>,
    /// Address to listen on (default: :: for IPv6 and IPv4, else 0.0.0.0).
    #[arg(short = 'L', long = "listen", value_name = "ADDR")]
    listen: Option<IpAddr>,
    /// Socket receive buffer in bytes (K/M/G suffixes).
    #[arg(short = 'B', long = "rcvbuf", value_name = "SIZE", value_parser = parse_size)]
    rcvbuf: Option<u64>,
    /// Never use a pen record older than SECS seconds (0: no limit) [default: 600].
    /// In merge mode: the largest time difference accepted (mergelogs' jitter).
    #[arg(
        short = 'w',
        long = "window",
        visible_alias = "jitter",
        value_name = "SECS"
    )]
    window: Option<u64>,
    /// Let a web line that arrives before its pen record wait MS milliseconds for it
    /// (0: write it unchanged at once) [default: 200].
    #[arg(short = 'H', long = "hold", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(..=MAX_HOLD_MS))]
    hold: Option<u64>,
    /// Accept pen records only from NET (ADDR or ADDR/PREFIX; repeatable).
    #[arg(short = 'P', long = "pen-from", value_name = "NET", value_parser = Net::parse)]
    pen_from: Vec<Net>,
    /// Accept web log lines only from NET (ADDR or ADDR/PREFIX; repeatable).
    #[arg(short = 'S', long = "web-from", value_name = "NET", value_parser = Net::parse)]
    web_from: Vec<Net>,
    /// Rotate the -l file when it reaches SIZE bytes (K/M/G suffixes); rotated files are
    /// gzipped.
    #[arg(short = 'r', long = "rotate-size", value_name = "SIZE", value_parser = parse_size)]
    rotate_size: Option<u64>,
    /// Rotate the -l file at local midnight; rotated files are gzipped.
    #[arg(long = "daily")]
    daily: bool,
    /// Offline merge: join pen's local log PENLOG with SERVER:LOGFILE access logs.
    #[arg(short = 'm', long = "merge", value_name = "PENLOG",
          conflicts_with_all = DAEMON_ONLY)]
    merge: Option<PathBuf>,
    /// Merge mode: seconds subtracted from pen's epochs before comparing (mergelogs -t)
    /// [default: 0].
    #[arg(long = "offset", value_name = "SECS", allow_hyphen_values = true)]
    offset: Option<i64>,
    /// PORT to listen on; in merge mode, SERVER:LOGFILE pairs.
    #[arg(value_name = "PORT", required = true)]
    operands: Vec<String>,
}

/// What to do: run the daemon or merge files.
#[derive(Debug)]
pub enum Config {
    Daemon(DaemonConfig),
    Merge(MergeConfig),
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub debug: u8,
    pub foreground: bool,
    pub line_buffered: bool,
    pub chroot: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub records: usize,
    pub pidfile: Option<PathBuf>,
    pub user: Option<String>,
    pub listen: Option<IpAddr>,
    pub port: u16,
    pub rcvbuf: usize,
    /// Window in seconds; `None` = no limit.
    pub window: Option<u64>,
    /// Milliseconds an early web line waits for its record; 0 = none.
    pub hold_ms: u64,
    pub pen_from: Vec<Net>,
    pub web_from: Vec<Net>,
    pub rotate_size: Option<u64>,
    pub daily: bool,
}

/// The offline merge's settings.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    pub debug: u8,
    pub penlog: PathBuf,
    /// (server as written, log file).
    pub servers: Vec<(String, PathBuf)>,
    pub out: Option<PathBuf>,
    pub jitter: u64,
    pub offset: i64,
}

impl Config {
    /// Parses the command line (without the program name).
    pub fn parse<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let a = Args::try_parse_from(
            std::iter::once("penlogd".into()).chain(args.into_iter().map(Into::into)),
        )?;
        Config::from_args(a).map_err(|e| {
            let mut cmd = <Args as clap::CommandFactory>::command();
            cmd.error(clap::error::ErrorKind::ValueValidation, e.to_string())
        })
    }

    fn from_args(a: Args) -> Result<Config, Error> {
        let window = a.window.unwrap_or(DEFAULT_WINDOW);
        if window > MAX_WINDOW {
            return Err(Error::Usage(format!(
                "window/jitter '{window}' too large (at most {MAX_WINDOW} seconds, 10 years)"
            )));
        }
        if let Some(penlog) = a.merge {
            let servers = a
                .operands
                .iter()
                .map(|s| split_server(s))
                .collect::<Result<_, _>>()?;
            return Ok(Config::Merge(MergeConfig {
                debug: a.debug,
                penlog,
                servers,
                out: a.log,
                jitter: window,
                offset: a.offset.unwrap_or(0),
            }));
        }
        if a.offset.is_some() {
            return Err(Error::Usage("--offset only applies with --merge".into()));
        }
        let [port] = a.operands.as_slice() else {
            return Err(Error::Usage(
                "expected exactly one PORT (or --merge)".into(),
            ));
        };
        let port = parse_port(port, Proto::Udp)
            .map_err(|e| Error::Usage(format!("bad port '{port}': {e}")))?;
        if a.log.is_none() && (a.rotate_size.is_some() || a.daily) {
            return Err(Error::Usage("rotation needs an output file (-l)".into()));
        }
        let rcvbuf = a.rcvbuf.unwrap_or(DEFAULT_RCVBUF as u64);
        Ok(Config::Daemon(DaemonConfig {
            debug: a.debug,
            foreground: a.foreground,
            line_buffered: a.line_buffered,
            chroot: a.chroot,
            log: a.log,
            records: a.records as usize,
            pidfile: a.pidfile,
            user: a.user,
            listen: a.listen,
            port,
            rcvbuf: usize::try_from(rcvbuf)
                .unwrap_or(usize::MAX)
                .min(i32::MAX as usize),
            window: (window > 0).then_some(window),
            hold_ms: a.hold.unwrap_or(DEFAULT_HOLD_MS),
            pen_from: a.pen_from,
            web_from: a.web_from,
            rotate_size: a.rotate_size,
            daily: a.daily,
        }))
    }
}

impl DaemonConfig {
    /// The address to bind: `-L`, else `[::]` (dual-stack).
    pub fn bind_ip(&self) -> IpAddr {
        self.listen.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    }
}

/// `SERVER:LOGFILE`, split at the first colon, or `[V6ADDR]:LOGFILE`.
fn split_server(s: &str) -> Result<(String, PathBuf), Error> {
    let bad = || {
        Error::Usage(format!(
            "bad server '{s}': expected SERVER:LOGFILE or [ADDR]:LOGFILE"
        ))
    };
    let (server, file) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(bad)?,
        None => s.split_once(':').ok_or_else(bad)?,
    };
    if server.is_empty() || file.is_empty() {
        return Err(bad());
    }
    Ok((server.to_string(), PathBuf::from(file)))
}

/// A byte count with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    match num.parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(mult)
            .ok_or_else(|| format!("size '{s}' too large")),
        _ => Err(format!(
            "bad size '{s}' (expected a positive number with an optional K, M or G)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(args: &[&str]) -> DaemonConfig {
        match Config::parse(args.iter().copied()).unwrap() {
            Config::Daemon(d) => d,
            Config::Merge(_) => panic!("merge"),
        }
    }

    #[test]
    fn original_flags() {
        let d = daemon(&[
            "-fdb", "-d", "-j", "/j", "-l", "x.log", "-n", "50", "-p", "p", "-u", "nobody", "10000",
        ]);
        assert!(d.foreground && d.line_buffered);
        assert_eq!(d.debug, 2);
        assert_eq!((d.records, d.port), (50, 10000));
        assert_eq!(d.user.as_deref(), Some("nobody"));
        assert_eq!(d.window, Some(600));
        assert_eq!(d.rcvbuf, DEFAULT_RCVBUF);
        assert_eq!(d.bind_ip(), "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn new_options() {
        let d = daemon(&[
            "-L",
            "127.0.0.1",
            "-B",
            "1M",
            "-w",
            "0",
            "-P",
            "10.0.0.0/8",
            "-S",
            "::1",
            "-l",
            "o",
            "-r",
            "10K",
            "--daily",
            "9",
        ]);
        assert_eq!(d.rcvbuf, 1 << 20);
        assert_eq!(d.window, None);
        assert_eq!((d.pen_from.len(), d.web_from.len()), (1, 1));
        assert_eq!(d.rotate_size, Some(10240));
        assert!(d.daily);
    }

    #[test]
    fn rejected() {
        for bad in [
            &["0"][..],
            &["106536"],
            &["x"],
            &[],
            &["1", "2"],
            &["-n", "0", "9"],
            &["-n", "-3", "9"],
            &["-r", "1M", "9"],
            &["-q", "9"],
            &["-B", "0", "9"],
            &["-P", "10.0.0.0/33", "9"],
            &["-w", "99999999999999999", "9"],
            &["-w", "315360001", "9"],
            &["--merge", "p", "--jitter", "99999999999999999", "s:f"],
        ] {
            assert!(Config::parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn merge_mode() {
        let c = Config::parse([
            "--merge",
            "pen.log",
            "--jitter",
            "5",
            "--offset",
            "-3600",
            "192.168.0.2:web2.log",
            "[::1]:w:6.log",
        ])
        .unwrap();
        let Config::Merge(m) = c else {
            panic!("daemon")
        };
        assert_eq!((m.jitter, m.offset), (5, -3600));
        assert_eq!(daemon(&["-w", "315360000", "9"]).window, Some(MAX_WINDOW));
        assert_eq!(
            m.servers,
            vec![
                ("192.168.0.2".into(), "web2.log".into()),
                ("::1".into(), "w:6.log".into())
            ]
        );
        assert!(Config::parse(["--merge", "p", "nocolon"]).is_err());
        assert!(Config::parse(["--merge", "p"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert!(parse_size("").is_err() && parse_size("M").is_err() && parse_size("1T").is_err());
    }
}

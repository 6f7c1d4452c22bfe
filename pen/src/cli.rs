//! The command line (pen.md §2): the original's getopt string
//! `B:C:F:O:S:T:b:c:e:i:j:l:m:o:p:q:t:u:w:x:DHNPQWXUadfhnrsE:K:G:A:ZRL:`, parsed with clap
//! and translated at once into [`Startup`]: control-language [`Command`]s in argv order
//! (options with a command equivalent, and every `-O`/`-o`), plus the process options that
//! have none. The clap type never leaves this file; nothing here does I/O.
//!
//! GNU getopt behaviour is kept: combined flags (`-df`, `-hrs`), values attached or separate
//! (`-b5`, `-b 5`, and a value may start with `-`), options after positionals
//! (`pen 8080 -F file`), `--` ending the options, `-d` counting. Clap's own `-h`/`--help`
//! and `-V` are off: `-h` is hash.
//!
//! Deliberate differences (pen.md §13): an unknown option, a missing or non-numeric value,
//! `-t` < 1 and `-c`/`-x` ≤ 0 are errors (one line, exit 1) instead of usage and exit 0
//! or junk read as 0; a bad `-O` command is an error instead of a reply on stdout.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ArgMatches};

use crate::command::parse::{int_value, number};
use crate::command::{parse_line, Command, EventBackend, Flag, IntSetting};

/// Options that take a value, in getopt order.
const VALUE_OPTIONS: &str = "BCFOSTbcejilmopqtuwxEKGAL";
/// Options without a value.
const FLAG_OPTIONS: &str = "DHNPQWXUadfhnrsZR";

/// Default listen backlog (`-q`), and the smallest accepted.
const BACKLOG_DEFAULT: i32 = 500;
const BACKLOG_MIN: i32 = 50;

/// The usage text, printed on stdout for `pen` with no arguments and for `-N`.
pub const USAGE: &str = "\
usage:
  pen [-C addr:port] [-X] [-b sec] [-c N] [-e host[:port]] \\
      [-t sec] [-x N] [-w file] [-UHPWadfhrs] \\
      [-o option] \\
      [-E certfile] [-K keyfile] \\
      [-G cacertfile] [-A cacertdir] \\
      [-Z] [-R] [-L protocol] \\
      [host:]port h1[:p1[:maxc1[:hard1[:weight1[:prio1]]]]] [h2[:p2[:maxc2[:hard2[:weight2[:prio2]]]]]] ...

  -B host:port abuse server for naughty clients
  -C port   control port ([addr:]port or a path containing '/')
  -T sec    tracking time in seconds (0 = forever) [0]
  -H        add X-Forwarded-For header in http requests
  -U        use udp protocol support
  -N        print this text
  -O option use option in penctl format
  -P        use poll() (accepted; the event backend is chosen automatically)
  -Q        obsolete
  -W        use weight for server selection
  -X        enable 'exit' command for control port
  -a        debugging dumps in ascii format
  -b sec    blacklist time in seconds [30]
  -c N      max number of clients [2048]
  -d        debugging on (repeat -d for more)
  -e host:port emergency server of last resort
  -f        stay in foreground
  -h        use hash for initial server selection
  -i name   Windows only
  -j dir    run in chroot
  -F file   name of configuration file
  -l file   logging on (file or host:port)
  -m N      max accepts per listener event [100]
  -q N      listen queue length [500]
  -r        bypass client tracking in server selection
  -s        stubborn selection, i.e. don't fail over
  -t sec    connect timeout in seconds [3]
  -u user   run as alternative user
  -p file   write pid to file
  -x N      max number of simultaneous connections [500]
  -w file   save statistics in HTML format in a file
  -o option use option in penctl format
  -D, -n, -S N  obsolete
  -E certfile   use the given certificate in PEM format
  -K keyfile    use the given key in PEM format (may be contained in cert)
  -G cacertfile file containing the CA's certificate
  -A cacertdir  directory containing CA certificates in hashed format
  -Z            use SSL compatibility mode
  -R            require valid peer certificate
  -L protocol   ssl23 (default), ssl2, ssl3 or tls1

example:
  pen smtp mailhost1:smtp mailhost2:25 mailhost3
";

/// What the command line asks for.
// Built once per process and matched at once: boxing `Startup` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cli {
    /// Start pen.
    Run(Startup),
    /// Print [`USAGE`] on stdout and exit 0 (no arguments at all, or `-N`).
    Usage,
    /// `-i`: print `Windows only` and exit 0.
    WindowsOnly,
}

/// Everything the command line sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Startup {
    /// Options with a command equivalent and every `-O`/`-o`, in argv order (pen.md §2.1).
    pub commands: Vec<Command>,
    /// One entry per command: true for `-O`/`-o`, whose replies the original printed on
    /// stdout; false for translated options (`-b` …), which the original applied silently.
    pub echo: Vec<bool>,
    /// Positional argument 0, the listen spec, as written.
    pub listen: Option<String>,
    /// Positional arguments 1.., the backend specs, as written.
    pub servers: Vec<String>,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-F`: config file.
    pub config: Option<PathBuf>,
    /// `-C`: control socket spec.
    pub control: Option<String>,
    /// `-p`: pidfile.
    pub pidfile: Option<PathBuf>,
    /// `-u`: user to run as.
    pub user: Option<String>,
    /// `-j`: chroot directory.
    pub chroot: Option<PathBuf>,
    /// `-e`: emergency server spec.
    pub emergency: Option<String>,
    /// `-B`: abuse server spec.
    pub abuse: Option<String>,
    /// `-q`: listen backlog (default 500, at least 50).
    pub backlog: i32,
    /// `-X`: enable the `exit` command.
    pub exit_enabled: bool,
    /// `-U`: UDP mode.
    pub udp: bool,
    /// TLS options (`-E -K -G -A -R -L -Z`).
    pub tls: TlsOptions,
    /// Lines to print on stderr before starting (obsolete options, bumped values).
    pub notices: Vec<String>,
}

/// TLS options from the command line (pen.md §11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `-E`: certificate (PEM); turns TLS on.
    pub cert: Option<PathBuf>,
    /// `-K`: private key (PEM); defaults to the certificate file.
    pub key: Option<PathBuf>,
    /// `-G`: CA file for client certificates.
    pub ca_file: Option<PathBuf>,
    /// `-A`: CA directory (hashed) for client certificates.
    pub ca_dir: Option<PathBuf>,
    /// `-R`: require a valid client certificate.
    pub require_client_cert: bool,
    /// `-L`: `ssl23`, `ssl2`, `ssl3` or `tls1`.
    pub protocol: Option<String>,
    /// `-Z`: bug workarounds.
    pub bug_workarounds: bool,
}

impl Default for Startup {
    fn default() -> Startup {
        Startup {
            commands: Vec::new(),
            echo: Vec::new(),
            listen: None,
            servers: Vec::new(),
            foreground: false,
            config: None,
            control: None,
            pidfile: None,
            user: None,
            chroot: None,
            emergency: None,
            abuse: None,
            backlog: BACKLOG_DEFAULT,
            exit_enabled: false,
            udp: false,
            tls: TlsOptions::default(),
            notices: Vec::new(),
        }
    }
}

impl Startup {
    fn push(&mut self, command: Command, echo: bool) {
        self.commands.push(command);
        self.echo.push(echo);
    }
}

/// A bad command line; `Display` is one line naming the option or token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// Parses the arguments (without argv[0]).
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Cli, CliError> {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.is_empty() {
        return Ok(Cli::Usage);
    }
    let matches = clap_command()
        .try_get_matches_from(args)
        .map_err(clap_error);
    // Arguments may hold newlines or escapes (`-O $'frob\nx'`): keep the message one line.
    matches
        .and_then(|m| translate(&m))
        .map_err(|e| CliError(one_line(&e.0)))
}

/// Escapes control characters, so that a message stays on one line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The clap description: one short option per getopt letter, plus the positionals.
fn clap_command() -> clap::Command {
    let mut cmd = clap::Command::new("pen")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        .disable_colored_help(true);
    for (id, c) in letters(VALUE_OPTIONS) {
        cmd = cmd.arg(
            Arg::new(id)
                .short(c)
                .value_name("VALUE")
                .num_args(1)
                // getopt takes the next word whatever it looks like: `-b -5`.
                .allow_hyphen_values(true)
                .value_parser(clap::value_parser!(OsString))
                .action(ArgAction::Append),
        );
    }
    for (id, c) in letters(FLAG_OPTIONS) {
        // Append with no value (not Count, which keeps only one index) records the argv
        // index of every occurrence, so that `-h -b 5 -h` keeps its order.
        cmd = cmd.arg(
            Arg::new(id)
                .short(c)
                .num_args(0)
                .default_missing_value("")
                .action(ArgAction::Append),
        );
    }
    cmd.arg(
        Arg::new("args")
            .num_args(0..)
            .value_parser(clap::value_parser!(OsString))
            .action(ArgAction::Append),
    )
}

/// Each option letter with itself as a `&'static str`, for clap's argument ids.
fn letters(options: &'static str) -> impl Iterator<Item = (&'static str, char)> {
    options
        .char_indices()
        .map(move |(i, c)| (&options[i..i + c.len_utf8()], c))
}

/// Turns clap's multi-line errors into one line naming the option.
fn clap_error(e: clap::Error) -> CliError {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    match e.kind() {
        ErrorKind::UnknownArgument => CliError(format!("unknown option {arg}")),
        ErrorKind::InvalidValue | ErrorKind::NoEquals | ErrorKind::WrongNumberOfValues => {
            CliError(format!("option {arg}: missing value"))
        }
        ErrorKind::InvalidUtf8 => CliError("argument is not valid UTF-8".to_string()),
        _ => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            CliError(line.strip_prefix("error: ").unwrap_or(line).to_string())
        }
    }
}

/// One option occurrence, at its argv index.
enum Occurrence<'a> {
    Flag(char),
    Value(char, &'a OsStr),
}

/// Walks the options in argv order and builds the [`Startup`].
fn translate(m: &ArgMatches) -> Result<Cli, CliError> {
    let mut seen: Vec<(usize, Occurrence<'_>)> = Vec::new();
    for (id, c) in letters(VALUE_OPTIONS) {
        let (Some(indices), Some(values)) = (m.indices_of(id), m.get_raw(id)) else {
            continue;
        };
        seen.extend(
            indices
                .zip(values)
                .map(|(i, v)| (i, Occurrence::Value(c, v))),
        );
    }
    for (id, c) in letters(FLAG_OPTIONS) {
        if let Some(indices) = m.indices_of(id) {
            seen.extend(indices.map(|i| (i, Occurrence::Flag(c))));
        }
    }
    seen.sort_by_key(|(i, _)| *i);

    let mut s = Startup::default();
    let debug = seen
        .iter()
        .filter(|(_, o)| matches!(o, Occurrence::Flag('d')))
        .count();
    let mut debug_placed = false;
    for (_, occurrence) in seen {
        match occurrence {
            Occurrence::Flag(c) => match c {
                'd' if !debug_placed => {
                    debug_placed = true;
                    // `debug` takes an i64; a count of arguments always fits.
                    let level = i64::try_from(debug).unwrap_or(i64::MAX);
                    s.push(Command::Int(IntSetting::Debug, Some(level)), false);
                }
                'd' => {}
                'N' => return Ok(Cli::Usage),
                flag => apply_flag(&mut s, flag),
            },
            Occurrence::Value(c, raw) => {
                let v = raw
                    .to_str()
                    .ok_or_else(|| CliError(format!("option -{c}: argument is not valid UTF-8")))?;
                if c == 'i' {
                    return Ok(Cli::WindowsOnly);
                }
                apply_value(&mut s, c, v)?;
            }
        }
    }

    let mut positionals = Vec::new();
    for raw in m.get_raw("args").into_iter().flatten() {
        let text = raw.to_str().ok_or_else(|| {
            CliError(format!(
                "argument '{}' is not valid UTF-8",
                raw.to_string_lossy()
            ))
        })?;
        positionals.push(text.to_string());
    }
    let mut positionals = positionals.into_iter();
    s.listen = positionals.next();
    s.servers = positionals.collect();
    Ok(Cli::Run(s))
}

fn apply_flag(s: &mut Startup, c: char) {
    let flag = |f| Command::Flag(f, true);
    match c {
        'f' => s.foreground = true,
        'X' => s.exit_enabled = true,
        'U' => s.udp = true,
        'R' => s.tls.require_client_cert = true,
        'Z' => s.tls.bug_workarounds = true,
        'h' => s.push(flag(Flag::Hash), false),
        'r' => s.push(flag(Flag::Roundrobin), false),
        's' => s.push(flag(Flag::Stubborn), false),
        'W' => s.push(flag(Flag::Weight), false),
        'H' => s.push(flag(Flag::Http), false),
        'a' => s.push(flag(Flag::Ascii), false),
        'P' => s.push(Command::EventBackend(EventBackend::Poll), false),
        // The original's notices, word for word.
        'D' => s.notices.extend(obsolete(
            "Pen 0.26.0 removed the delayed forward feature,",
            'D',
        )),
        'n' => s.notices.extend(obsolete(
            "Pen 0.26.0 and up uses only nonblocking sockets,",
            'n',
        )),
        'Q' => s.notices.extend(obsolete(
            "Since Pen 0.26.0, kqueue is already the default on supported systems,",
            'Q',
        )),
        // 'd' and 'N' are handled by the caller; FLAG_OPTIONS holds nothing else.
        _ => {}
    }
}

fn obsolete(first: &str, c: char) -> [String; 2] {
    [
        first.to_string(),
        format!("making the -{c} option obsolete"),
    ]
}

fn apply_value(s: &mut Startup, c: char, v: &str) -> Result<(), CliError> {
    let int = |setting| {
        int_value(setting, v).map_err(|e| CliError(format!("option -{c}: {}", e.detail())))
    };
    let set =
        |setting| -> Result<Command, CliError> { Ok(Command::Int(setting, Some(int(setting)?))) };
    match c {
        'b' => s.push(set(IntSetting::Blacklist)?, false),
        'c' => s.push(set(IntSetting::ClientsMax)?, false),
        'x' => s.push(set(IntSetting::ConnMax)?, false),
        't' => s.push(set(IntSetting::Timeout)?, false),
        'T' => s.push(set(IntSetting::Tracking)?, false),
        'm' => {
            let mut n = number(v).ok_or_else(|| not_a_number(c, v))?;
            if n < 1 {
                s.notices.push("multi_accept bumped to 1".to_string());
                n = 1;
            }
            let n = int_value(IntSetting::MultiAccept, &n.to_string()).map_err(|_| {
                CliError(format!(
                    "option -m: expected a number from 1 to 1000000, got '{v}'"
                ))
            })?;
            s.push(Command::Int(IntSetting::MultiAccept, Some(n)), false);
        }
        'q' => {
            let n = number(v)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| not_a_number(c, v))?;
            if n < BACKLOG_MIN {
                s.notices
                    .push(format!("listen_queue bumped to {BACKLOG_MIN}"));
            }
            s.backlog = n.max(BACKLOG_MIN);
        }
        'O' | 'o' => match parse_line(v) {
            Ok(Command::Nothing) => {}
            Ok(command) => s.push(command, true),
            Err(e) => return Err(CliError(format!("-{c} '{v}': {e}"))),
        },
        'l' => s.push(Command::Log(Some(v.to_string())), false),
        'w' => s.push(Command::WebStats(Some(v.to_string())), false),
        'F' => s.config = Some(PathBuf::from(v)),
        'C' => s.control = Some(v.to_string()),
        'p' => s.pidfile = Some(PathBuf::from(v)),
        'u' => s.user = Some(v.to_string()),
        'j' => s.chroot = Some(PathBuf::from(v)),
        'e' => s.emergency = Some(v.to_string()),
        'B' => s.abuse = Some(v.to_string()),
        'S' => s.notices.extend(obsolete(
            "As of 0.28.1 the server table is expanded dynamically,",
            'S',
        )),
        'E' => s.tls.cert = Some(PathBuf::from(v)),
        'K' => s.tls.key = Some(PathBuf::from(v)),
        'G' => s.tls.ca_file = Some(PathBuf::from(v)),
        'A' => s.tls.ca_dir = Some(PathBuf::from(v)),
        'L' => match v {
            "ssl23" | "ssl2" | "ssl3" | "tls1" => s.tls.protocol = Some(v.to_string()),
            _ => return Err(CliError(format!("protocol version {v} not known"))),
        },
        // 'i' is handled by the caller; VALUE_OPTIONS holds nothing else.
        _ => {}
    }
    Ok(())
}

fn not_a_number(c: char, v: &str) -> CliError {
    CliError(format!("option -{c}: expected a number, got '{v}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Fastclose;

    fn run(args: &[&str]) -> Result<Cli, CliError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn startup(args: &[&str]) -> Startup {
        match run(args) {
            Ok(Cli::Run(s)) => s,
            other => panic!("{args:?}: expected a startup, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match run(args) {
            Err(e) => e.to_string(),
            other => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn no_arguments_is_usage() {
        assert_eq!(run(&[]), Ok(Cli::Usage));
        assert_eq!(run(&["-N"]), Ok(Cli::Usage));
        assert_eq!(run(&["-f", "-N", "8080"]), Ok(Cli::Usage));
        assert_eq!(run(&["-i", "svc", "8080"]), Ok(Cli::WindowsOnly));
    }

    #[test]
    fn positionals_only() {
        let s = startup(&["8080", "a:80", "b:81:10"]);
        assert_eq!(s.listen.as_deref(), Some("8080"));
        assert_eq!(s.servers, vec!["a:80", "b:81:10"]);
        assert_eq!(s.commands, vec![]);
        assert_eq!(s.backlog, 500);
        assert!(!s.foreground);
    }

    #[test]
    fn combined_flags() {
        let s = startup(&["-df", "-hrs", "-Ur", "8080"]);
        assert!(s.foreground);
        assert!(s.udp);
        assert_eq!(
            s.commands,
            vec![
                Command::Int(IntSetting::Debug, Some(1)),
                Command::Flag(Flag::Hash, true),
                Command::Flag(Flag::Roundrobin, true),
                Command::Flag(Flag::Stubborn, true),
                Command::Flag(Flag::Roundrobin, true),
            ]
        );
        assert_eq!(s.echo, vec![false; 5]);
    }

    #[test]
    fn debug_counts_at_first_position() {
        let s = startup(&["-b", "1", "-d", "-dd", "-b", "2", "-d", "x"]);
        assert_eq!(
            s.commands,
            vec![
                Command::Int(IntSetting::Blacklist, Some(1)),
                Command::Int(IntSetting::Debug, Some(4)),
                Command::Int(IntSetting::Blacklist, Some(2)),
            ]
        );
    }

    #[test]
    fn values_attached_or_separate() {
        let s = startup(&[
            "-b5", "-b", "6", "-fb7", "-b", "-8", "-c100", "-x", "600", "80",
        ]);
        assert_eq!(
            s.commands,
            vec![
                Command::Int(IntSetting::Blacklist, Some(5)),
                Command::Int(IntSetting::Blacklist, Some(6)),
                Command::Int(IntSetting::Blacklist, Some(7)),
                Command::Int(IntSetting::Blacklist, Some(-8)),
                Command::Int(IntSetting::ClientsMax, Some(100)),
                Command::Int(IntSetting::ConnMax, Some(600)),
            ]
        );
        assert!(s.foreground);
    }

    #[test]
    fn o_runs_in_argv_order() {
        let s = startup(&[
            "-O",
            "blacklist 9",
            "-b",
            "3",
            "-o",
            "tcp_fastclose both",
            "-h",
            "-Ono hash",
            "-O",
            "# comment",
            "-O",
            "",
            "8080",
        ]);
        assert_eq!(
            s.commands,
            vec![
                Command::Int(IntSetting::Blacklist, Some(9)),
                Command::Int(IntSetting::Blacklist, Some(3)),
                Command::TcpFastclose(Fastclose::Both),
                Command::Flag(Flag::Hash, true),
                Command::Flag(Flag::Hash, false),
            ]
        );
        assert_eq!(s.echo, vec![true, false, true, false, true]);
    }

    #[test]
    fn options_after_positionals() {
        let s = startup(&[
            "8080", "-F", "pen.cfg", "a:80", "-f", "b:80", "-C", "/run/ctl",
        ]);
        assert_eq!(s.listen.as_deref(), Some("8080"));
        assert_eq!(s.servers, vec!["a:80", "b:80"]);
        assert_eq!(s.config, Some(PathBuf::from("pen.cfg")));
        assert_eq!(s.control.as_deref(), Some("/run/ctl"));
        assert!(s.foreground);
    }

    #[test]
    fn double_dash_ends_options() {
        let s = startup(&["-f", "--", "-d", "/tmp/x"]);
        assert!(s.foreground);
        assert_eq!(s.listen.as_deref(), Some("-d"));
        assert_eq!(s.servers, vec!["/tmp/x"]);
        assert_eq!(s.commands, vec![]);
    }

    #[test]
    fn every_process_option() {
        let s = startup(&[
            "-F",
            "c.cfg",
            "-C",
            "127.0.0.1:10",
            "-p",
            "p.pid",
            "-u",
            "nobody",
            "-j",
            "/jail",
            "-e",
            "e:80",
            "-B",
            "b:80",
            "-q",
            "100",
            "-X",
            "-U",
            "-E",
            "c.pem",
            "-K",
            "k.pem",
            "-G",
            "ca.pem",
            "-A",
            "/ca",
            "-R",
            "-L",
            "tls1",
            "-Z",
            "-l",
            "log.txt",
            "-w",
            "w.html",
            "-T",
            "60",
            "-t",
            "5",
            "-m",
            "10",
            "-W",
            "-H",
            "-a",
            "-P",
            "8080",
        ]);
        assert_eq!(s.config, Some("c.cfg".into()));
        assert_eq!(s.control.as_deref(), Some("127.0.0.1:10"));
        assert_eq!(s.pidfile, Some("p.pid".into()));
        assert_eq!(s.user.as_deref(), Some("nobody"));
        assert_eq!(s.chroot, Some("/jail".into()));
        assert_eq!(s.emergency.as_deref(), Some("e:80"));
        assert_eq!(s.abuse.as_deref(), Some("b:80"));
        assert_eq!(s.backlog, 100);
        assert!(s.exit_enabled && s.udp);
        assert_eq!(
            s.tls,
            TlsOptions {
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
                ca_file: Some("ca.pem".into()),
                ca_dir: Some("/ca".into()),
                require_client_cert: true,
                protocol: Some("tls1".into()),
                bug_workarounds: true,
            }
        );
        assert_eq!(
            s.commands,
            vec![
                Command::Log(Some("log.txt".into())),
                Command::WebStats(Some("w.html".into())),
                Command::Int(IntSetting::Tracking, Some(60)),
                Command::Int(IntSetting::Timeout, Some(5)),
                Command::Int(IntSetting::MultiAccept, Some(10)),
                Command::Flag(Flag::Weight, true),
                Command::Flag(Flag::Http, true),
                Command::Flag(Flag::Ascii, true),
                Command::EventBackend(EventBackend::Poll),
            ]
        );
        assert_eq!(s.notices, Vec::<String>::new());
        assert_eq!(s.listen.as_deref(), Some("8080"));
    }

    #[test]
    fn last_value_wins() {
        let s = startup(&["-F", "a", "-F", "b", "-p", "x", "-p", "y", "1"]);
        assert_eq!(s.config, Some("b".into()));
        assert_eq!(s.pidfile, Some("y".into()));
    }

    #[test]
    fn notices() {
        let s = startup(&["-D", "-n", "-Q", "-S", "10", "-m", "0", "-q", "10", "80"]);
        assert_eq!(
            s.notices,
            vec![
                "Pen 0.26.0 removed the delayed forward feature,",
                "making the -D option obsolete",
                "Pen 0.26.0 and up uses only nonblocking sockets,",
                "making the -n option obsolete",
                "Since Pen 0.26.0, kqueue is already the default on supported systems,",
                "making the -Q option obsolete",
                "As of 0.28.1 the server table is expanded dynamically,",
                "making the -S option obsolete",
                "multi_accept bumped to 1",
                "listen_queue bumped to 50",
            ]
        );
        assert_eq!(s.backlog, 50);
        assert_eq!(
            s.commands,
            vec![Command::Int(IntSetting::MultiAccept, Some(1))]
        );
    }

    #[test]
    fn option_errors() {
        assert_eq!(error(&["-k", "80"]), "unknown option -k");
        assert_eq!(error(&["-fk", "80"]), "unknown option -k");
        assert_eq!(error(&["--help"]), "unknown option --help");
        assert_eq!(error(&["-V"]), "unknown option -V");
        assert_eq!(error(&["80", "-b"]), "option -b: missing value");
        assert_eq!(
            error(&["-b", "x", "80"]),
            "option -b: expected a number, got 'x'"
        );
        assert_eq!(
            error(&["-b12x", "80"]),
            "option -b: expected a number, got '12x'"
        );
        assert_eq!(
            error(&["-t", "0", "80"]),
            "option -t: expected a number of seconds of at least 1, got '0'"
        );
        assert_eq!(
            error(&["-c", "0", "80"]),
            "option -c: expected a number from 1 to 1000000, got '0'"
        );
        assert_eq!(
            error(&["-x", "-1", "80"]),
            "option -x: expected a number from 1 to 1000000, got '-1'"
        );
        assert!(error(&["-T", "-1", "80"]).starts_with("option -T: expected"));
        assert_eq!(
            error(&["-m", "x", "80"]),
            "option -m: expected a number, got 'x'"
        );
        assert_eq!(
            error(&["-m", "2000000", "80"]),
            "option -m: expected a number from 1 to 1000000, got '2000000'"
        );
        assert_eq!(
            error(&["-q", "x", "80"]),
            "option -q: expected a number, got 'x'"
        );
        assert_eq!(
            error(&["-q", "99999999999", "80"]),
            "option -q: expected a number, got '99999999999'"
        );
        assert_eq!(
            error(&["-L", "tls13", "80"]),
            "protocol version tls13 not known"
        );
        assert_eq!(
            error(&["-O", "frob", "80"]),
            "-O 'frob': do_cmd: ignoring command starting with 'frob'"
        );
        assert_eq!(
            error(&["-o", "blacklist x", "80"]),
            "-o 'blacklist x': blacklist: expected a number, got 'x'"
        );
    }

    #[test]
    fn non_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'a', 0xff]);
        let e = parse_args([OsString::from("-l"), bad(), "80".into()]).unwrap_err();
        assert_eq!(e.to_string(), "option -l: argument is not valid UTF-8");
        let e = parse_args([OsString::from("80"), bad()]).unwrap_err();
        assert_eq!(e.to_string(), "argument 'a\u{fffd}' is not valid UTF-8");
        let e = parse_args([OsString::from_vec(vec![b'-', 0xff]), "80".into()]);
        assert!(e.is_err());
        let e = parse_args([OsString::from_vec(vec![b'-', b'f', 0xff]), "80".into()]);
        assert!(e.is_err());
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(
            error(&["-O", "frob\tx\ny", "80"]),
            "-O 'frob\\tx\\ny': do_cmd: ignoring command starting with 'frob\\tx'"
        );
        assert_eq!(
            error(&["-b", "1\n2"]),
            "option -b: expected a number, got '1\\n2'"
        );
        for args in [
            &["-k"][..],
            &["-b"],
            &["-b", "x"],
            &["-O", "x"],
            &["--"],
            &["--x=1"],
        ] {
            if let Err(e) = run(args) {
                assert!(!e.0.contains('\n'), "{args:?}: {e}");
            }
        }
    }
}

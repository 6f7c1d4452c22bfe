//! pen: a TCP load balancer, compatible with the original C pen 0.35.
//!
//! `main.rs` only calls [`run`]. The modules each own one concept: the command language
//! (`command`, `cli`), selection (`servers`, `clients`, `acl`, `select`), the event loop
//! and connections (`event_loop`, `spin`, `conn`, `listener`), name lookups off the loop
//! (`lookup`), and the process shell (`signals`, `logsink`, `stats`).

pub mod acl;
pub mod atomic_file;
pub mod bufpool;
pub mod cli;
pub mod clients;
pub mod command;
pub mod conn;
pub mod control;
pub mod event_loop;
pub mod listener;
pub mod logsink;
pub mod lookup;
pub mod select;
pub mod servers;
pub mod signals;
pub mod spin;
pub mod state;
pub mod stats;

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use common::addr::{ListenSpec, Proto, ServerSpec};
use common::daemon::{self, Pidfile, Readiness, User};

use cli::{Cli, Startup};
use command::file::read_file;
use listener::Listener;
use servers::Server;
use state::State;

/// A startup failure: one line, printed as `pen: {error}` with exit status 1.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error(s)
    }
}

/// How [`run`] fails: the error, and whether `abort_on_error` was on when it happened.
#[derive(Debug)]
pub struct Fatal {
    pub error: Error,
    pub abort: bool,
}

impl From<Error> for Fatal {
    fn from(error: Error) -> Fatal {
        Fatal {
            error,
            abort: false,
        }
    }
}

impl Fatal {
    /// Prints `pen: {error}` on stderr and exits 1, or, under `abort_on_error`, aborts
    /// with a core dump as far as the hard RLIMIT_CORE allows (pen.md §10.3).
    pub fn report(self) -> ExitCode {
        eprintln!("pen: {}", self.error);
        if self.abort {
            daemon::allow_core_dump();
            std::process::abort();
        }
        ExitCode::FAILURE
    }
}

/// Runs pen with `args` (without argv\[0\]) until it is told to exit.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<(), Fatal> {
    let startup = match cli::parse_args(args).map_err(|e| Error(e.to_string()))? {
        Cli::Usage => {
            print!("{}", cli::USAGE);
            return Ok(());
        }
        Cli::WindowsOnly => {
            println!("Windows only");
            return Ok(());
        }
        Cli::Run(s) => s,
    };
    for n in &startup.notices {
        eprintln!("{n}");
    }
    refuse_unbuilt(&startup)?;
    let mut state = State::new();
    launch(&mut state, startup).map_err(|error| Fatal {
        error,
        abort: state.settings.abort_on_error,
    })
}

/// Everything from the configuration on: the errors that `abort_on_error` applies to.
fn launch(state: &mut State, startup: Startup) -> Result<(), Error> {
    configure(state, &startup)?;
    let Some(listen) = state.settings.listen.clone().or(startup.listen.clone()) else {
        print!("{}", cli::USAGE);
        return Ok(());
    };
    state.settings.listen = Some(listen.clone());
    add_servers(state, &startup, &listen)?;

    let ready = if startup.foreground {
        Readiness::foreground()
    } else {
        daemon::daemonize("pen").map_err(|e| Error(e.to_string()))?
    };
    match start(state, &startup, &listen) {
        Ok(parts) => {
            if !startup.foreground {
                common::diag::use_syslog(c"pen");
            }
            ready.ready();
            serve(state, startup, parts)
        }
        Err(e) => {
            ready.fail(&e.0);
            Err(e)
        }
    }
}

/// Options whose features are not built yet: refused with one line naming them.
fn refuse_unbuilt(s: &Startup) -> Result<(), Error> {
    let refuse = |what: &str| Err(Error(format!("{what} is not supported yet")));
    if s.udp {
        return refuse("option -U (UDP mode)");
    }
    if s.tls.cert.is_some() {
        return refuse("option -E (TLS termination)");
    }
    Ok(())
}

/// Applies the command-line options, `-O` commands and the `-F` file, in the original's
/// order (control.md §5.2).
fn configure(state: &mut State, s: &Startup) -> Result<(), Error> {
    state.launch = state::Launch {
        foreground: s.foreground,
        udp: s.udp,
        pidfile: s.pidfile.clone(),
        user: s.user.clone(),
        chroot: s.chroot.clone(),
        emergency: s.emergency.clone(),
        abuse: s.abuse.clone(),
        started: state.clock.wall,
    };
    let set = &mut state.settings;
    set.backlog = s.backlog;
    set.exit_enabled = s.exit_enabled;
    set.control = s.control.clone();
    set.config = s.config.clone();
    for (cmd, echo) in s
        .commands
        .iter()
        .zip(s.echo.iter().chain(std::iter::repeat(&false)))
    {
        let reply = state.apply(cmd.clone()).map_err(|e| Error(e.0))?;
        if *echo {
            print!("{reply}");
        }
    }
    if let Some(cfg) = &s.config {
        apply_file(state, cfg)?;
    }
    Ok(())
}

/// Reads and applies the `-F` file at startup; replies go to stdout and any error is
/// fatal. (HUP re-reads it with [`State::reload_config`].)
fn apply_file(state: &mut State, path: &Path) -> Result<(), Error> {
    let cmds = match read_file(path) {
        Ok(c) => c,
        Err(e) if e.is_open_error() => {
            // The original carried on without the file; keep that, but say so.
            common::diag!("{e}");
            return Ok(());
        }
        Err(e) => return Err(Error(e.to_string())),
    };
    for (lineno, cmd) in cmds {
        let reply = state
            .apply(cmd)
            .map_err(|e| Error(format!("{}:{lineno}: {e}", path.display())))?;
        print!("{reply}");
    }
    Ok(())
}

/// Builds the server table from the positional arguments (they overwrite slots set by
/// `-O`/`-F`, keeping only their ACL, as the original: pen.md §2.2), then `-e` and `-B`.
fn add_servers(state: &mut State, s: &Startup, listen: &str) -> Result<(), Error> {
    let spec = ListenSpec::parse(listen, Proto::Tcp).map_err(|e| Error(e.to_string()))?;
    // The default port is the listen port, never the control port (§13.2 #14).
    let default_port = spec.default_backend_port();
    let parse = |text: &str| -> Result<Server, Error> {
        let sp = ServerSpec::parse(text, default_port, Proto::Tcp)
            .map_err(|e| Error(format!("server {e}")))?;
        let ep = sp
            .target
            .endpoint()
            .map_err(|e| Error(format!("server {e}")))?;
        let mut srv = Server::new(Some(ep));
        (srv.max, srv.hard, srv.weight, srv.prio) = (sp.max, sp.hard, sp.weight, sp.prio);
        Ok(srv)
    };
    for (i, text) in s.servers.iter().enumerate() {
        let mut srv = parse(text)?;
        match state.servers.list.get_mut(i) {
            Some(old) => {
                srv.acl = old.acl;
                *old = srv;
            }
            None => state.servers.list.push(srv),
        }
    }
    if let Some(e) = &s.emergency {
        state.servers.emergency = Some(parse(e)?);
    }
    if let Some(b) = &s.abuse {
        state.servers.abuse = Some(parse(b)?);
    }
    if state.settings.policy.weight && state.servers.list.iter().all(|s| s.weight == 0) {
        // The original silently refused every connection (§13.2 #15).
        common::diag!("warning: weight mode is on but no server has a weight; every connection will be refused");
    }
    if common::diag::enabled(1) {
        common::diag!("pen {} starting", env!("CARGO_PKG_VERSION"));
        common::diag!("servers:");
        for (i, srv) in state.servers.list.iter().enumerate() {
            let addr = srv.endpoint.as_ref().map_or("-".into(), |e| e.to_string());
            common::diag!(
                "{i:2} {addr}:{}:{}:{}:{}",
                srv.max,
                srv.hard,
                srv.weight,
                srv.prio
            );
        }
    }
    Ok(())
}

/// What startup opened and the loop needs.
struct Parts {
    poll: mio::Poll,
    signals: signals::Signals,
    pidfile: Option<Pidfile>,
}

/// Binds, drops privileges, opens the log and writes the pidfile: every step whose failure
/// must reach the caller of a daemonising pen (§13.2 #6).
fn start(state: &mut State, s: &Startup, listen: &str) -> Result<Parts, Error> {
    let poll = mio::Poll::new().map_err(|e| Error(format!("can't create poll: {e}")))?;
    let signals = signals::Signals::install().map_err(|e| Error(format!("signals: {e}")))?;
    daemon::raise_fd_limit();
    let l = Listener::bind(listen, s.backlog, state.settings.tcp_nodelay)?;
    state.listener = Some(l);
    if let Some(spec) = &s.control {
        // As the original: no control port for root unless -u names a user to become.
        if daemon::running_as_root() && s.user.is_none() {
            common::diag!(
                "Won't open control port running as root; use -u to run as different user"
            );
        } else {
            let c = control::bind(spec, s.backlog)
                .map_err(|e| Error(format!("control socket: {e}")))?;
            state.control = Some(c);
        }
    }
    if let Some(spec) = state.settings.prometheus.clone() {
        let m = Listener::bind(&spec, s.backlog, false)
            .map_err(|e| Error(format!("prometheus listener: {e}")))?;
        state.metrics = Some(m);
    }
    let user = s
        .user
        .as_deref()
        .map(User::lookup)
        .transpose()
        .map_err(|e| Error(e.to_string()))?;
    daemon::drop_privileges(user.as_ref(), s.chroot.as_deref())
        .map_err(|e| Error(e.to_string()))?;
    if let Some(target) = state.settings.log_spec.clone() {
        state.log.open(&target).map_err(|e| Error(e.0))?;
    }
    let pidfile = s
        .pidfile
        .as_deref()
        .map(Pidfile::create)
        .transpose()
        .map_err(|e| Error(e.to_string()))?;
    Ok(Parts {
        poll,
        signals,
        pidfile,
    })
}

/// Runs the loop; HUP and USR1 come back here.
fn serve(state: &mut State, _s: Startup, mut parts: Parts) -> Result<(), Error> {
    struct Host;
    impl event_loop::Host for Host {
        fn reload(&mut self, state: &mut State) {
            if let Err(e) = state.log.reopen() {
                common::diag!("{e}");
            }
            if let Some(cfg) = state.settings.config.clone() {
                state.reload_config(&cfg);
            }
        }
        /// USR1: rewrite the web stats file if there is one, else print the text stats.
        fn stats(&mut self, state: &mut State) {
            if let Some(path) = state.settings.web_stats.clone() {
                if let Err(e) = stats::write_web_stats(state, &path) {
                    common::diag!("can't write web stats {}: {e}", path.display());
                }
                return;
            }
            for msg in stats::text(state) {
                common::diag!("{msg}");
            }
        }
    }
    let r = event_loop::run(state, &mut parts.poll, &mut parts.signals, &mut Host);
    drop(parts.pidfile);
    r.map_err(|e| {
        // Once daemonised stderr is /dev/null: make sure this reaches syslog.
        common::diag!("event loop: {e}");
        Error(format!("event loop: {e}"))
    })
}

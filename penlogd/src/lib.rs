//! penlogd (logging.md §3): joins pen's client records with the web servers' access log
//! lines into one access log whose every line carries the real client address; and the
//! offline merge of pen's local log with access log files (§4, the original mergelogs).

pub mod cli;
pub mod join;
pub mod matcher;
pub mod merge;
pub mod nets;
pub mod output;
pub mod recv;
pub mod serve;
pub mod signals;
pub mod stats;
pub mod webline;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use cli::Config;

/// A fatal error: a bad command line, or a startup or merge input failure.
#[derive(Debug)]
pub enum Error {
    Usage(String),
    Net(common::net::NetError),
    Daemon(common::daemon::DaemonError),
    Open(PathBuf, io::Error),
    Signals(io::Error),
    Read(PathBuf, io::Error),
    Write(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Net(e) => write!(f, "{e}"),
            Error::Daemon(e) => write!(f, "{e}"),
            Error::Open(p, e) => write!(f, "can't open '{}': {e}", p.display()),
            Error::Signals(e) => write!(f, "can't install signal handlers: {e}"),
            Error::Read(p, e) => write!(f, "can't read '{}': {e}", p.display()),
            Error::Write(e) => write!(f, "can't write output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Runs the daemon or the merge.
pub fn run(cfg: Config) -> Result<(), Error> {
    match cfg {
        Config::Daemon(d) => serve::run(d),
        Config::Merge(m) => merge::run(&m),
    }
}

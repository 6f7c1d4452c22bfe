//! penlogd: `penlogd [-fdb] [-j DIR] [-l LOGFILE] [-n N] [-p PIDFILE] [-u USER] PORT`, or
//! `penlogd --merge PENLOG SERVER:LOGFILE...`; all logic is in lib.rs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cfg = match penlogd::Config::parse(std::env::args_os().skip(1)) {
        Ok(cfg) => cfg,
        Err(e) => {
            // Usage goes to stderr with exit 1 (the original: stdout, exit 0); --help and
            // --version to stdout with exit 0.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match penlogd::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("penlogd: {err}");
            ExitCode::FAILURE
        }
    }
}

//! penctl: `penctl host:port|/path/to/socket command [args...]`; all logic is in lib.rs.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let timeout = std::env::var_os(penctl::TIMEOUT_VAR);
    let mut stdout = std::io::stdout().lock();
    match penctl::run(&args, timeout.as_deref(), &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Whatever part of the reply arrived goes out before the error line.
            let _ = stdout.flush();
            eprintln!("penctl: {err}");
            ExitCode::FAILURE
        }
    }
}

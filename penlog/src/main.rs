//! penlog: `penlog SERVER PORT [LOCAL_ADDR]`; all logic is in lib.rs.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match penlog::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Usage errors exit 1 as the original's did; --help and --version exit 0.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match penlog::run(&args, std::io::stdin().lock()) {
        Ok(summary) => {
            // Lost lines are reported, never fatal: Apache must keep its logger (spec §2).
            if let Some(report) = summary.report() {
                eprintln!("penlog: {report}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("penlog: {err}");
            ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

fn main() -> ExitCode {
    match pen::run(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => fatal.report(),
    }
}

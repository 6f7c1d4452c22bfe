use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("penlogd: not implemented yet");
    ExitCode::FAILURE
}

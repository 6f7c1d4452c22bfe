use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("penlog: not implemented yet");
    ExitCode::FAILURE
}

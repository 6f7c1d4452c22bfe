use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("penctl: not implemented yet");
    ExitCode::FAILURE
}

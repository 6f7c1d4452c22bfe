use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("pen: not implemented yet");
    ExitCode::FAILURE
}

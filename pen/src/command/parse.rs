//! (in progress)
use super::Command;

/// A malformed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

/// Parses one command line.
pub fn parse_line(_line: &str) -> Result<Command, ParseError> {
    Err(ParseError("not implemented".into()))
}

//! Code shared by pen, penctl, penlog and penlogd, and only that: the address grammar,
//! socket setup, daemon plumbing, diagnostics and the pen→penlogd record format.

pub mod addr;
pub mod daemon;
pub mod diag;
pub mod logrec;
pub mod net;

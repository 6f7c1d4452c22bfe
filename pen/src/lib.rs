//! pen: a TCP and UDP load balancer, compatible with the original C pen 0.35.
//!
//! `main.rs` only calls [`run`]. The modules each own one concept: the command language
//! (`command`), selection (`servers`, `clients`, `acl`, `select`), the event loop and
//! connections (`event_loop`, `conn`), and the process shell (`cli`, `signals`, `logsink`).

pub mod acl;
pub mod cli;
pub mod clients;
pub mod command;
pub mod select;
pub mod servers;

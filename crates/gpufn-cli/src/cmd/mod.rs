//! One module per group of subcommands.

pub mod cluster;
pub mod cost;
pub mod functions;
pub mod images;
pub mod invoke;
pub mod replay;
pub mod secrets;
pub mod serve;
pub mod simulate;
pub mod sleep_app;
pub mod tasks;
pub mod tokens;

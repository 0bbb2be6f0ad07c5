//! The process: the config file ([`config`]), the listeners and connection threads
//! ([`server`], [`tls`]), config reloads ([`reload`]), the admin endpoints ([`admin`]), the
//! command line ([`cli`]) and the zero-setup demo ([`demo`]).

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod reload;
pub mod server;
pub mod tls;

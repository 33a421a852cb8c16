//! Hrana over HTTP: the protocol's structures ([`proto`]), one statement ([`stmt`]), a batch
//! ([`batch`]) and a stream of requests ([`stream`]). No HTTP here: `crate::http` routes
//! requests to these and holds the streams between requests (`crate::batons`).

pub mod batch;
pub mod proto;
pub mod stmt;
pub mod stream;

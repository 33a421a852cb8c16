//! `libsql-wal serve`: many SQLite databases on libsql-wal behind one HTTP port, spoken to in
//! Hrana over HTTP as libSQL's server speaks it, so libSQL's official clients work unchanged.
//!
//! - [`server`]: configuration, start, the ordered shutdown.
//! - [`http`]: routes and the namespace of a request; the Hrana endpoints.
//! - [`hrana`]: the protocol (structures, statements, batches, streams), without HTTP.
//! - [`batons`]: streams kept between requests.
//! - [`databases`]: the namespaces' files and the pool of idle connections.
//! - [`limits`]: every bound, named by its flag.
//! - [`metrics`]: `GET /metrics` (Prometheus text) and the per-request span and counters.

pub mod batons;
pub mod databases;
pub mod hrana;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod server;

pub use limits::Limits;
pub use server::{Server, ServerConfig};

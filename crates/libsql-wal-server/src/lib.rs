//! `libsql-wal serve`: many SQLite databases on libsql-wal behind one HTTP port, spoken to in
//! Hrana over HTTP as libSQL's server speaks it, so libSQL's official clients work unchanged.
//!
//! - [`server`]: configuration, start, the ordered shutdown.
//! - [`http`]: routes and the namespace of a request; the Hrana endpoints.
//! - [`hrana`]: the protocol (structures, statements, batches, streams), without HTTP.
//! - [`auth`]: shared token or Ed25519 JWTs.
//! - [`batons`]: streams kept between requests.
//! - [`durable`]: `--ack durable`, group durability.
//! - [`databases`]: the namespaces' files, a connection per stream.
//! - [`limits`]: every bound, named by its flag.
//! - [`tls`]: HTTPS with rustls.
//! - [`read_your_writes`]: the frame_no a response was at, and waiting for one on a replica.
//! - [`catch_up`]: a replica's bootstrap from object storage.
//! - [`replica_acks`]: `--ack replicas=K`, the replicas' acknowledgements.
//! - [`replication`]: replicas of our own (`--replica-of`) and the stream they follow.
//! - [`sync`]: libSQL's embedded replicas (`syncUrl`): generations over the log.
//! - [`metrics`]: `GET /metrics` (Prometheus text) and the per-request span and counters.
//! - [`replication`]: a primary's replication routes and a replica's following of them;
//!   [`lag`]: how far behind each side is, for `GET /metrics`.

pub mod auth;
pub mod batons;
pub mod catch_up;
pub mod databases;
pub mod durable;
pub mod hrana;
pub mod http;
pub mod idle;
pub mod lag;
pub mod limits;
pub mod metrics;
pub mod read_your_writes;
pub mod replica_acks;
pub mod replication;
pub mod server;
pub mod sync;
pub mod tls;

pub use limits::Limits;
pub use server::{Ack, Server, ServerConfig, TlsFiles};

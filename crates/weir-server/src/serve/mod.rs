//! `weir serve`: HTTP routes, each a streaming pipeline built per request.

pub mod admission;
pub mod config;
pub mod console;
mod cors;
pub mod export;
mod http1;
pub(crate) mod metrics;
mod outcome;
mod pem;
pub mod proxy;
mod reply;
mod request_body;
pub mod send_queue;
mod server;
mod shutdown;
mod socket_buffer;
mod stall;
pub mod stream_stats;
pub mod tail;
mod tls;
pub mod topic;
mod window_stall;
pub(crate) mod ws;

pub use config::{
    ConfigError, DatabaseUrl, DatabaseUrlError, ExportFormat, FileTailRoute, InvalidConfig,
    LlmProxyRoute, Protocol, RouteConfig, ServeConfig, SqlExportRoute,
};
pub use pem::{PemError, PemKey};
pub use server::{RunningServer, Server, ServerError};
pub use tls::TlsError;

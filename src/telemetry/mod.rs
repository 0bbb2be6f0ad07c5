//! What the gateway tells operators: the access log and process log ([`logging`]), trace
//! context and OTLP spans ([`trace`]), Prometheus metrics ([`metrics`]).

pub mod logging;
pub mod metrics;
pub mod trace;

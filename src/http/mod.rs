//! The HTTP/1.1 layer: the codec both sides share, the server that reads clients' requests,
//! the client that exchanges requests with backends, and the pool of backend connections.
//! Nothing here knows about tenants.

pub mod client;
pub mod codec;
pub mod inbound;
pub mod pool;
pub mod server;
pub mod stream;
pub mod upstream;

//! The request pipeline: [`proxy`] strings the stages together on one screen — identify the
//! tenant ([`identify`]), check the browser origin ([`cors`]), take what the
//! request needs of the tenant's limits ([`limit`]: slot, quota, rate), forward ([`forward`]) — and [`error`] turns every refusal into
//! the contract's JSON; [`response`] is the body of every response the gateway sends.

pub mod cors;
pub mod error;
pub mod forward;
pub mod identify;
pub mod limit;
pub mod proxy;
pub mod response;

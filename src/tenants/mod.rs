//! Where tenants come from and what the gateway keeps of each: the document and its
//! validation ([`tenant`], [`origin`]), the stores ([`store`]: the JSON file and MongoDB), the
//! cache in front of them ([`directory`]), the audit log of document changes ([`audit`]),
//! each tenant's live counts ([`slots`]: concurrency, [`rate`], [`quota`], [`usage`]) and the
//! background that shares them between replicas ([`cluster`]) and writes usage down
//! ([`metering`]).
//! Depends on nothing of the request path but [`crate::http`] (a tenant's own backend URL).

pub mod audit;
pub mod cluster;
pub mod counter;
pub mod directory;
pub mod metering;
pub mod origin;
pub mod quota;
pub mod rate;
pub mod slots;
pub mod store;
pub mod tenant;
pub mod usage;

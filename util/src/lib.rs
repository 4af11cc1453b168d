//! What Aleph's binaries, the operator and the gateway, share: the shutdown
//! signal they stop on, and the bounded HTTP fetches they make (the
//! operator's scrapes of the gateways, the gateway's reads from its OIDC
//! issuer).

pub mod http;
pub mod signal;

//! The contract between a niks3 server and its clients: the JSON messages of the push API and what an
//! API token is. Serde types and token rules only, no HTTP stack: the server and the client each bring
//! their own, and neither can change a message without the other seeing it at compile time.

#![forbid(unsafe_code)]

pub mod protocol;
pub mod token;

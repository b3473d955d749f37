//! Starts the real things niks3's tests need, each in well under a second and each torn down on drop:
//! a throwaway PostgreSQL cluster ([`postgres`]), a single-node Garage S3 server ([`garage`]) and a private,
//! offline Nix configuration ([`nix`]). No mocks: these are the real programs.

pub mod garage;
pub mod nix;
pub mod postgres;

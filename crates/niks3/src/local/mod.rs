//! This machine: the local Nix store (through the nix-daemon worker protocol, Nix's log files and the
//! `nix` command line) and the environment of the children niks3 starts. Never the network.

pub mod build_log;
pub mod child_env;
pub mod daemon;
pub mod nix;
pub mod realisations;

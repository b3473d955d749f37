//! nix test support (to be written).

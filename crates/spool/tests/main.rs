//! The integration tests of this crate, in one binary: one module per subject (named as the files were
//! before: `e2e_*`, `gc_*`, …), sharing one [`support`] module. One binary links once instead of once per
//! file. Run one file's tests with `cargo test -p CRATE --test it MODULE::`.

mod drainer_vs_spool_owner;
mod entry;
mod hook_bin;
mod hook_vs_spool_owner;
mod requeue;
mod spool;
mod spool_hostile_entries;
mod support;

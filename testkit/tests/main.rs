//! The integration tests of the testkit, in one binary: one module per thing it starts, each checking that
//! the real servers behave as the fault tests built on them assume. Run one module's tests with
//! `cargo test -p niks3-testkit --test it MODULE::`.

mod garage_cluster;
mod postgres_pair;

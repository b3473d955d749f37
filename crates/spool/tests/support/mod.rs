//! What the tests share: starting the real programs and checking what they left behind.

pub mod hook;

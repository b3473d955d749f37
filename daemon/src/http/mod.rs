//! The HTTP face (warp): the read proxy (a Nix binary cache over HTTP), the push API, the landing page,
//! `/health` and `/metrics`. Never builds object keys from raw request strings: everything goes through
//! [`crate::store::ObjectKey::parse`] or validated store paths.

//! garage test support (to be written).

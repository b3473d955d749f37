//! postgres test support (to be written).

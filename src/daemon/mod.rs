//! The daemon (in progress).

//! courier-presence

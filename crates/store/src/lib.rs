//! courier-store

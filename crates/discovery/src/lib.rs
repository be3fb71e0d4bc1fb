//! courier-discovery

//! courier-connect

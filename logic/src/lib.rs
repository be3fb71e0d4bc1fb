//! courier-logic

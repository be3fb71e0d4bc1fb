//! courier-task

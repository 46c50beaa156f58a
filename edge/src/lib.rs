//! Santé Rurale clinic edge node.
pub mod store;

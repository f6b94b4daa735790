//! The fleetmesh edge agent.
//!
//! Today: durable file helpers, key files and the content-addressed chunk
//! store that the seed and nodes share. The mesh and the updater build on it.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod install;
pub mod keyfile;
pub mod mesh;
pub mod slots;
pub mod store;
pub mod updater;

#[cfg(test)]
mod testutil;

pub use store::{ChunkFiles, ChunkStore, ReleaseInfo, StoreError};

//! The integration tests, one binary: each module was its own test crate
//! (one link of the library per file); `cargo nextest run --test it MODULE::`
//! runs one module's tests.

mod common;
mod net;

mod blocks;
mod bundle;
mod cache;
mod canonical;
mod cli;
mod collections;
mod corruption;
mod crash;
mod crash_all;
mod db_cli;
mod db_hostile;
mod db_roundtrip;
mod dedup;
mod deploy;
mod dict;
mod diff_scale;
mod disk_full;
mod faults;
mod hostile;
mod hostile_fixtures;
mod integrity;
mod interrupts;
mod layers;
mod library;
mod load;
mod pg;
mod pg_hostile;
mod remote;
mod repack;
mod roundtrip;
mod safety;
mod server_hostile;
mod services_layout;
mod spec_examples;

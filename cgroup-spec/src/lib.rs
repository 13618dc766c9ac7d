//! The `pins.*` interface files, as specified in `cgroup-spec/SPEC.md`.
//!
//! This crate is pure logic: it knows the file names, the pin sources, the
//! exact text formats (parse and render) and the agent's configuration file,
//! and nothing about BPF or the agent's workings.

mod action;
mod bytes;
pub mod config;
mod files;
mod mode;
mod source;

pub use action::{parse_action, Action, ActionError};
pub use bytes::{format_human, parse_limit, Limit, LimitError};
pub use files::{render_current, render_events, render_stat, Events, InterfaceFile, DOUBLE_PINNED};
pub use mode::Mode;
pub use source::{PerSource, Source};

//! Names and renderings of the read-only interface files.

use crate::PerSource;

/// The interface files of each mirror directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceFile {
    /// Written by orchestrators: the hard limit.
    Max,
    /// Written by orchestrators: the alert threshold.
    High,
    /// Written by orchestrators: what an overrun no refusal point stopped does.
    MaxAction,
    Current,
    Peak,
    Events,
    EventsLocal,
    Stat,
}

impl InterfaceFile {
    /// Files written by the agent only.
    pub const READ_ONLY: [InterfaceFile; 5] = [
        InterfaceFile::Current,
        InterfaceFile::Peak,
        InterfaceFile::Events,
        InterfaceFile::EventsLocal,
        InterfaceFile::Stat,
    ];

    /// Files orchestrators write, with the content they start with.
    pub const WRITABLE: [(InterfaceFile, &'static str); 3] =
        [(InterfaceFile::Max, "max\n"), (InterfaceFile::High, "max\n"), (InterfaceFile::MaxAction, "alert\n")];

    pub fn name(self) -> &'static str {
        match self {
            InterfaceFile::Max => "pins.max",
            InterfaceFile::High => "pins.high",
            InterfaceFile::MaxAction => "pins.max.action",
            InterfaceFile::Current => "pins.current",
            InterfaceFile::Peak => "pins.peak",
            InterfaceFile::Events => "pins.events",
            InterfaceFile::EventsLocal => "pins.events.local",
            InterfaceFile::Stat => "pins.stat",
        }
    }
}

/// Counts of `pins.events` / `pins.events.local`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Events {
    /// Times usage crossed `pins.high` upwards.
    pub high: u64,
    /// Requests refused, or overruns acted on, at `pins.max`.
    pub max: u64,
}

impl Events {
    pub fn add(&mut self, other: &Events) {
        self.high += other.high;
        self.max += other.max;
    }
}

/// `pins.events`: flat keyed, `high N` then `max N`.
pub fn render_events(events: &Events) -> String {
    format!("high {}\nmax {}\n", events.high, events.max)
}

/// `pins.current`: one line, the byte count (as `misc.current`).
pub fn render_current(bytes: u64) -> String {
    format!("{bytes}\n")
}

/// The `pins.stat` key after the sources: bytes pinned again by another
/// source or object of the same process, so that the sources add up to
/// `pins.current` + `double_pinned`.
pub const DOUBLE_PINNED: &str = "double_pinned";

/// `pins.stat`: flat keyed, one `<source> <bytes>` line per source, every
/// source always present, in [`crate::Source::ALL`] order, then
/// [`DOUBLE_PINNED`].
pub fn render_stat(per_source: &PerSource, double_pinned: u64) -> String {
    let mut out = String::with_capacity(112);
    let keys = per_source.iter().map(|(source, bytes)| (source.key(), bytes));
    for (key, bytes) in keys.chain([(DOUBLE_PINNED, double_pinned)]) {
        out.push_str(key);
        out.push(' ');
        out.push_str(&bytes.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lists_every_source_in_order() {
        let stat = render_stat(&PerSource([134217728, 0, 0, 67108864, 0, 0]), 134217728);
        assert_eq!(
            stat,
            "vfio 134217728\niommufd 0\nrdma 0\nio_uring 67108864\nxdp 0\nother 0\ndouble_pinned 134217728\n"
        );
    }

    #[test]
    fn events_are_flat_keyed() {
        assert_eq!(render_events(&Events { high: 1, max: 3 }), "high 1\nmax 3\n");
    }

    #[test]
    fn current_is_one_line_of_bytes() {
        assert_eq!(render_current(33554432), "33554432\n");
    }
}

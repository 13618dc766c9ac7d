//! Names and renderings of the read-only interface files.

use crate::PerSource;

/// The interface files the agent maintains in each mirror directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceFile {
    Current,
    Stat,
}

impl InterfaceFile {
    pub fn name(self) -> &'static str {
        match self {
            InterfaceFile::Current => "pins.current",
            InterfaceFile::Stat => "pins.stat",
        }
    }
}

/// `pins.current`: one line, the byte count (as `misc.current`).
pub fn render_current(bytes: u64) -> String {
    format!("{bytes}\n")
}

/// `pins.stat`: flat keyed, one `<source> <bytes>` line per source, every
/// source always present, in [`crate::Source::ALL`] order.
pub fn render_stat(per_source: &PerSource) -> String {
    let mut out = String::with_capacity(96);
    for (source, bytes) in per_source.iter() {
        out.push_str(source.key());
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
        let stat = render_stat(&PerSource([0, 0, 0, 67108864, 0, 0]));
        assert_eq!(
            stat,
            "vfio 0\niommufd 0\nrdma 0\nio_uring 67108864\nxdp 0\nother 0\n"
        );
    }

    #[test]
    fn current_is_one_line_of_bytes() {
        assert_eq!(render_current(33554432), "33554432\n");
    }
}

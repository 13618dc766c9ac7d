//! Pin sources: the subsystems whose long-term pins are attributed.

use serde::Serialize;

/// Declares [`Source`] once: its variants, their `pins.stat` keys (also
/// the `source` metric label) and, in that order, their numeric ids, which
/// are the BPF side's `enum pincg_source` (bpf/build.rs generates that
/// enum from [`Source::ALL`] and [`Source::c_name`]).
macro_rules! sources {
    ($($variant:ident => $key:literal,)+) => {
        /// A subsystem that makes long-term (FOLL_LONGTERM) page pins.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u32)]
        pub enum Source {
            $($variant,)+
        }

        impl Source {
            /// How many sources there are (`PINCG_NR_SOURCES`).
            pub const COUNT: usize = [$($key),+].len();

            /// Every source, in the order `pins.stat` lists them (their ids).
            pub const ALL: [Source; Source::COUNT] = [$(Source::$variant,)+];

            /// The key used in `pins.stat` and in the `source` metric label.
            pub fn key(self) -> &'static str {
                match self {
                    $(Source::$variant => $key,)+
                }
            }
        }
    };
}

sources! {
    Vfio => "vfio",
    Iommufd => "iommufd",
    Rdma => "rdma",
    IoUring => "io_uring",
    Xdp => "xdp",
    Other => "other",
}

impl Source {
    /// The source with the given numeric id, as stored in BPF maps.
    pub fn from_id(id: u32) -> Option<Source> {
        Source::ALL.get(id as usize).copied()
    }

    /// The name of its `enum pincg_source` constant: `PINCG_SRC_IO_URING`.
    pub fn c_name(self) -> String {
        format!("PINCG_SRC_{}", self.key().to_uppercase())
    }
}

/// Bytes per source, indexed by [`Source`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerSource(pub [u64; Source::COUNT]);

impl PerSource {
    pub fn get(&self, source: Source) -> u64 {
        self.0[source as usize]
    }

    pub fn add(&mut self, other: &PerSource) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine = mine.saturating_add(theirs);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |acc, v| acc.saturating_add(*v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (Source, u64)> + '_ {
        Source::ALL.iter().map(|s| (*s, self.get(*s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_stat_order() {
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            assert_eq!(Source::from_id(i as u32), Some(*s));
        }
        assert_eq!(Source::from_id(6), None);
    }

    #[test]
    fn totals_saturate() {
        let mut a = PerSource([u64::MAX, 1, 0, 0, 0, 0]);
        a.add(&PerSource([1, 1, 0, 0, 0, 0]));
        assert_eq!(a.0[0], u64::MAX);
        assert_eq!(a.0[1], 2);
        assert_eq!(a.total(), u64::MAX);
    }
}

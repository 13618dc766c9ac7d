//! Pin sources: the subsystems whose long-term pins are attributed.

use serde::Serialize;

/// A subsystem that makes long-term (FOLL_LONGTERM) page pins.
///
/// The discriminants are the `enum pincg_source` values of
/// `bpf/include/pincg.h`; a test in the bpf crate keeps them in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum Source {
    Vfio = 0,
    Iommufd = 1,
    Rdma = 2,
    IoUring = 3,
    Xdp = 4,
    Other = 5,
}

impl Source {
    /// Every source, in the order `pins.stat` lists them.
    pub const ALL: [Source; 6] = [
        Source::Vfio,
        Source::Iommufd,
        Source::Rdma,
        Source::IoUring,
        Source::Xdp,
        Source::Other,
    ];

    /// The key used in `pins.stat` and in the `source` metric label.
    pub fn key(self) -> &'static str {
        match self {
            Source::Vfio => "vfio",
            Source::Iommufd => "iommufd",
            Source::Rdma => "rdma",
            Source::IoUring => "io_uring",
            Source::Xdp => "xdp",
            Source::Other => "other",
        }
    }

    /// The source with the given numeric id, as stored in BPF maps.
    pub fn from_id(id: u32) -> Option<Source> {
        Source::ALL.get(id as usize).copied()
    }
}

/// Bytes per source, indexed by [`Source`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerSource(pub [u64; 6]);

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

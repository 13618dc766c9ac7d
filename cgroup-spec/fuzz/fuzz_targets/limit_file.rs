//! Whatever bytes land in a pins.max / pins.high / pins.max.action file,
//! parsing never panics, and what it accepts renders back to a canonical
//! form that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pincg_cgroup_spec::{parse_action, parse_limit};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(limit) = parse_limit(text) {
        let canonical = limit.to_string();
        assert_eq!(parse_limit(&canonical), Ok(limit), "{text:?} -> {canonical:?}");
    }
    if let Ok(action) = parse_action(text) {
        assert_eq!(parse_action(&action.to_string()), Ok(action));
    }
});

//! The layout of a BPF map, from its BTF: what a program reads and writes
//! at each offset of a key and a value. An upgrade reuses a pinned map only
//! when its layout is exactly the one this build's programs expect, so a
//! changed struct (a field added, removed, reordered or retyped) is refused
//! by name rather than misread.
//!
//! The BTF is the map's own (the kernel keeps the BTF a map was created
//! with), so no layout version has to be bumped by hand: every change the
//! compiler sees is a change here.

use std::ffi::CStr;
use std::fmt::Write as _;
use std::ptr::NonNull;

use libbpf_rs::libbpf_sys;
use libbpf_rs::{AsRawLibbpf, MapCore, MapHandle, OpenMap};

/// Nested types deeper than this are described by their size only (BTF
/// of a map's key or value never nests this deep; a bound keeps a corrupt
/// or cyclic BTF from recursing forever).
const MAX_DEPTH: usize = 32;

/// A map's definition and the fields of its key and value, one line each
/// (`value.events_max u64 at 112`), in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub key: Vec<String>,
    pub value: Vec<String>,
}

impl MapLayout {
    /// The layout of a map this build's object will create.
    pub fn of_open(map: &OpenMap<'_>, btf: Option<&Btf>) -> MapLayout {
        let raw = map.as_libbpf_object();
        // SAFETY: `raw` is a live bpf_map of an open object.
        let (key_id, value_id) = unsafe {
            (libbpf_sys::bpf_map__btf_key_type_id(raw.as_ptr()), libbpf_sys::bpf_map__btf_value_type_id(raw.as_ptr()))
        };
        MapLayout {
            map_type: map.map_type() as u32,
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
            key: fields(btf, key_id, "key"),
            value: fields(btf, value_id, "value"),
        }
    }

    /// The layout of a map in the kernel (pinned, or used by a running
    /// program), from the BTF it was created with.
    pub fn of_kernel(map: &MapHandle) -> Result<MapLayout, libbpf_rs::Error> {
        let info = map.info()?.info;
        let btf = (info.btf_id != 0).then(|| Btf::from_kernel(info.btf_id)).transpose()?;
        Ok(MapLayout {
            map_type: info.type_,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            flags: info.map_flags,
            key: fields(btf.as_ref(), info.btf_key_type_id, "key"),
            value: fields(btf.as_ref(), info.btf_value_type_id, "value"),
        })
    }
}

/// What differs between the layout of a map already in the kernel and the
/// one this build needs, in words; `None` when they are the same.
pub fn difference(found: &MapLayout, wanted: &MapLayout) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut number = |what: &str, found: u32, wanted: u32, show: fn(u32) -> String| {
        if found != wanted {
            out.push(format!("{what} {} there, {} in this build", show(found), show(wanted)));
        }
    };
    number("type", found.map_type, wanted.map_type, map_type_name);
    number("key size", found.key_size, wanted.key_size, |n| n.to_string());
    number("value size", found.value_size, wanted.value_size, |n| n.to_string());
    number("max_entries", found.max_entries, wanted.max_entries, |n| n.to_string());
    number("flags", found.flags, wanted.flags, |n| format!("{n:#x}"));
    for (found, wanted) in [(&found.key, &wanted.key), (&found.value, &wanted.value)] {
        if let Some(i) = (0..found.len().max(wanted.len())).find(|&i| found.get(i) != wanted.get(i)) {
            let show = |f: Option<&String>| f.map_or("nothing".to_string(), |f| format!("`{f}`"));
            out.push(format!("{} there, {} in this build", show(found.get(i)), show(wanted.get(i))));
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

fn map_type_name(t: u32) -> String {
    // SAFETY: returns a static string or NULL for an unknown type.
    let name = unsafe { libbpf_sys::libbpf_bpf_map_type_str(t) };
    if name.is_null() {
        return format!("#{t}");
    }
    // SAFETY: a NUL-terminated static string.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

/// BTF owned here (loaded from the kernel) or borrowed from an open object.
pub struct Btf {
    ptr: NonNull<libbpf_sys::btf>,
    owned: bool,
}

impl Btf {
    /// The BTF object `id` the kernel holds.
    pub fn from_kernel(id: u32) -> Result<Btf, libbpf_rs::Error> {
        // SAFETY: returns a new btf or NULL with errno set.
        let ptr = unsafe { libbpf_sys::btf__load_from_kernel_by_id(id) };
        NonNull::new(ptr)
            .map(|ptr| Btf { ptr, owned: true })
            .ok_or_else(|| libbpf_rs::Error::from(std::io::Error::last_os_error()))
    }

    /// The BTF of an open object, which keeps owning it.
    pub fn of_object(object: NonNull<libbpf_sys::bpf_object>) -> Option<Btf> {
        // SAFETY: `object` is a live bpf_object; the btf lives as long.
        NonNull::new(unsafe { libbpf_sys::bpf_object__btf(object.as_ptr()) }).map(|ptr| Btf { ptr, owned: false })
    }

    /// BTF built in memory (tests).
    #[cfg(test)]
    fn empty() -> Btf {
        // SAFETY: returns a new btf or NULL.
        Btf { ptr: NonNull::new(unsafe { libbpf_sys::btf__new_empty() }).expect("btf__new_empty"), owned: true }
    }

    fn ty(&self, id: u32) -> Option<&libbpf_sys::btf_type> {
        // SAFETY: btf__type_by_id returns NULL or a type inside the btf.
        unsafe { libbpf_sys::btf__type_by_id(self.ptr.as_ptr(), id).as_ref() }
    }

    fn name(&self, offset: u32) -> String {
        // SAFETY: NULL or a NUL-terminated string inside the btf.
        let name = unsafe { libbpf_sys::btf__name_by_offset(self.ptr.as_ptr(), offset) };
        if name.is_null() {
            return String::new();
        }
        // SAFETY: as above.
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    }
}

impl Drop for Btf {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: owned here, freed once.
            unsafe { libbpf_sys::btf__free(self.ptr.as_ptr()) }
        }
    }
}

/// One line per scalar field of type `id` (`<path> <type> at <offset>`),
/// or a single line saying the map has no BTF for it.
fn fields(btf: Option<&Btf>, id: u32, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    match btf {
        Some(btf) if id != 0 => describe(btf, id, root, 0, 0, &mut out),
        _ => out.push(format!("{root} without BTF")),
    }
    out
}

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// The `n`-th record of `T` that follows a btf_type (members, enumerators…).
///
/// # Safety
/// `t` must be a type of a BTF whose kind has at least `n + 1` records of `T`.
unsafe fn record<T: Copy>(t: &libbpf_sys::btf_type, n: usize) -> T {
    let first = (t as *const libbpf_sys::btf_type).add(1).cast::<T>();
    first.add(n).read_unaligned()
}

fn describe(btf: &Btf, id: u32, path: &str, bits: u64, depth: usize, out: &mut Vec<String>) {
    let at = |bits: u64| if bits.is_multiple_of(8) { format!("at {}", bits / 8) } else { format!("at bit {bits}") };
    let Some(t) = btf.ty(id) else {
        out.push(format!("{path} unknown type #{id} {}", at(bits)));
        return;
    };
    let kind = (t.info >> 24) & 0x1f;
    let vlen = (t.info & 0xffff) as usize;
    let kflag = t.info >> 31 == 1;
    // SAFETY (all `record` calls): each reads the records its kind has, `vlen` of them.
    let size = unsafe { t.__bindgen_anon_1.size };
    let target = unsafe { t.__bindgen_anon_1.type_ };
    if depth > MAX_DEPTH {
        out.push(format!("{path} nested too deep {}", at(bits)));
        return;
    }
    match kind {
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG | KIND_VAR => {
            describe(btf, target, path, bits, depth + 1, out)
        }
        KIND_INT => {
            let encoding: u32 = unsafe { record(t, 0) };
            let width = encoding & 0xff;
            let name = match (encoding >> 24) & 0xf {
                4 => "bool".to_string(),
                e => format!("{}{width}", if e & 1 == 1 { "s" } else { "u" }),
            };
            out.push(format!("{path} {name} {}", at(bits + u64::from((encoding >> 16) & 0xff))));
        }
        KIND_PTR => out.push(format!("{path} pointer {}", at(bits))),
        KIND_FLOAT => out.push(format!("{path} float{} {}", size * 8, at(bits))),
        KIND_ENUM | KIND_ENUM64 => {
            let mut values = String::new();
            for n in 0..vlen {
                let (name, value) = if kind == KIND_ENUM {
                    let e: libbpf_sys::btf_enum = unsafe { record(t, n) };
                    (e.name_off, i64::from(e.val))
                } else {
                    let e: libbpf_sys::btf_enum64 = unsafe { record(t, n) };
                    (e.name_off, (u64::from(e.val_hi32) << 32 | u64::from(e.val_lo32)) as i64)
                };
                let _ = write!(values, "{}{}={value}", if n > 0 { "," } else { "" }, btf.name(name));
            }
            out.push(format!("{path} enum{} {{{values}}} {}", size * 8, at(bits)));
        }
        KIND_ARRAY => {
            let a: libbpf_sys::btf_array = unsafe { record(t, 0) };
            let mut element = Vec::new();
            describe(btf, a.type_, "", 0, depth + 1, &mut element);
            match element.as_slice() {
                // An array of scalars is one field.
                [one] => out.push(format!(
                    "{path} {}[{}] {}",
                    one.trim_start().rsplit_once(" at ").map_or(one.as_str(), |(t, _)| t),
                    a.nelems,
                    at(bits)
                )),
                _ => {
                    out.push(format!("{path} array of {} {}", a.nelems, at(bits)));
                    describe(btf, a.type_, &format!("{path}[]"), bits, depth + 1, out);
                }
            }
        }
        KIND_STRUCT | KIND_UNION => {
            let what = if kind == KIND_STRUCT { "struct" } else { "union" };
            out.push(format!("{path} {what} of {size} bytes {}", at(bits)));
            for n in 0..vlen {
                let m: libbpf_sys::btf_member = unsafe { record(t, n) };
                let (offset, bitfield) = if kflag { (m.offset & 0xff_ffff, m.offset >> 24) } else { (m.offset, 0) };
                let name = btf.name(m.name_off);
                let child = if name.is_empty() { path.to_string() } else { format!("{path}.{name}") };
                let before = out.len();
                describe(btf, m.type_, &child, bits + u64::from(offset), depth + 1, out);
                if bitfield != 0 && out.len() == before + 1 {
                    out[before].push_str(&format!(" ({bitfield} bits)"));
                }
            }
        }
        KIND_DATASEC => {
            out.push(format!("{path} section of {size} bytes"));
            for n in 0..vlen {
                let v: libbpf_sys::btf_var_secinfo = unsafe { record(t, n) };
                let name = btf.ty(v.type_).map(|var| btf.name(var.name_off)).unwrap_or_default();
                describe(btf, v.type_, &format!("{path}.{name}"), bits + u64::from(v.offset) * 8, depth + 1, out);
            }
        }
        other => out.push(format!("{path} kind {other} of {size} bytes {}", at(bits))),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    /// A BTF with `u64` and `struct source_actions`, its fields in `order`
    /// (an extra `u64` field `killed_again` when `extra`); returns the
    /// struct's layout as the value of an array map.
    fn actions_layout(order: &[&str], extra: bool) -> MapLayout {
        let btf = Btf::empty();
        let b = btf.ptr.as_ptr();
        let name = |s: &str| CString::new(s).unwrap();
        let fields: Vec<&str> = order.iter().copied().chain(extra.then_some("killed_again")).collect();
        let size = 8 * fields.len() as u32;
        // SAFETY: `b` is a live, writable btf; names are NUL-terminated.
        unsafe {
            let u64_id = libbpf_sys::btf__add_int(b, name("__u64").as_ptr(), 8, 0) as u32;
            let id = libbpf_sys::btf__add_struct(b, name("source_actions").as_ptr(), size) as u32;
            for (n, field) in fields.iter().enumerate() {
                libbpf_sys::btf__add_field(b, name(field).as_ptr(), u64_id as i32, 64 * n as u32, 0);
            }
            MapLayout {
                map_type: libbpf_sys::BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size: size,
                max_entries: 6,
                flags: 0,
                key: vec!["key u32 at 0".into()],
                value: fields_of(&btf, id),
            }
        }
    }

    fn fields_of(btf: &Btf, id: u32) -> Vec<String> {
        fields(Some(btf), id, "value")
    }

    const FIELDS: [&str; 4] = ["refused", "would_refuse", "overruns", "killed"];

    #[test]
    fn fields_are_named_typed_and_placed() {
        let layout = actions_layout(&FIELDS, false);
        assert_eq!(
            layout.value,
            [
                "value struct of 32 bytes at 0",
                "value.refused u64 at 0",
                "value.would_refuse u64 at 8",
                "value.overruns u64 at 16",
                "value.killed u64 at 24",
            ]
        );
    }

    #[test]
    fn the_same_layout_has_no_difference() {
        assert_eq!(difference(&actions_layout(&FIELDS, false), &actions_layout(&FIELDS, false)), None);
    }

    #[test]
    fn swapped_fields_of_the_same_size_differ() {
        let swapped = ["would_refuse", "refused", "overruns", "killed"];
        assert_eq!(
            difference(&actions_layout(&FIELDS, false), &actions_layout(&swapped, false)).as_deref(),
            Some("`value.refused u64 at 0` there, `value.would_refuse u64 at 0` in this build")
        );
    }

    #[test]
    fn an_added_field_differs_in_size_and_field() {
        assert_eq!(
            difference(&actions_layout(&FIELDS, false), &actions_layout(&FIELDS, true)).as_deref(),
            Some(
                "value size 32 there, 40 in this build; `value struct of 32 bytes at 0` there, \
                 `value struct of 40 bytes at 0` in this build"
            )
        );
    }

    #[test]
    fn a_removed_field_is_named() {
        let mut shorter = actions_layout(&FIELDS[..3], false);
        shorter.value_size = 32;
        shorter.value[0] = "value struct of 32 bytes at 0".into();
        assert_eq!(
            difference(&actions_layout(&FIELDS, false), &shorter).as_deref(),
            Some("`value.killed u64 at 24` there, nothing in this build")
        );
    }

    #[test]
    fn map_definitions_differ_by_name() {
        let found = actions_layout(&FIELDS, false);
        let wanted = MapLayout { map_type: libbpf_sys::BPF_MAP_TYPE_HASH, max_entries: 12, ..found.clone() };
        assert_eq!(
            difference(&found, &wanted).as_deref(),
            Some("type array there, hash in this build; max_entries 6 there, 12 in this build")
        );
    }

    #[test]
    fn arrays_of_scalars_are_one_field() {
        let btf = Btf::empty();
        let b = btf.ptr.as_ptr();
        let name = |s: &str| CString::new(s).unwrap();
        // SAFETY: as in actions_layout.
        let fields = unsafe {
            let u64_id = libbpf_sys::btf__add_int(b, name("__u64").as_ptr(), 8, 0);
            let u32_id = libbpf_sys::btf__add_int(b, name("__u32").as_ptr(), 4, 0);
            let array = libbpf_sys::btf__add_array(b, u32_id, u64_id, 16);
            let id = libbpf_sys::btf__add_struct(b, name("pin_object").as_ptr(), 136) as u32;
            libbpf_sys::btf__add_field(b, name("ancestors").as_ptr(), array, 0, 0);
            libbpf_sys::btf__add_field(b, name("depth").as_ptr(), u32_id, 1024, 0);
            fields_of(&btf, id)
        };
        assert_eq!(
            fields,
            ["value struct of 136 bytes at 0", "value.ancestors u64[16] at 0", "value.depth u32 at 128"]
        );
    }
}

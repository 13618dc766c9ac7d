//! Compiles every `src/bpf/<object>.bpf.c` with clang (CO-RE, against the
//! vendored x86_64 `include/vmlinux.h`) and generates its libbpf-rs skeleton
//! (for the shared types), and `objects.rs`: every object's bytes and their
//! hash, the identity an upgrade compares with the programs running. A new
//! object is a new file there (and its entry in `src/hooks.rs`, which a
//! unit test checks). `pincg_sources.h`, the C side's `enum pincg_source`,
//! is generated from cgroup-spec's `Source`, the one list of sources.
//!
//! The compiler is `$BPF_CLANG`, else `$CLANG`, else `clang` from PATH; a
//! change of either variable or of the compiler's binary rebuilds.
//!
//! `PINCG_BPF_DEFINES` (space-separated `NAME` or `NAME=VALUE`) adds `-D`
//! flags: the upgrade tests build other pincgs with it (see
//! `tests/src/builds.rs`); a release build leaves it unset.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

use pincg_cgroup_spec::Source;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let include = manifest.join("include");
    let bpf_dir = manifest.join("src").join("bpf");
    let clang = ["BPF_CLANG", "CLANG"].iter().find_map(|v| {
        println!("cargo:rerun-if-env-changed={v}");
        env::var_os(v)
    });
    let clang = PathBuf::from(clang.unwrap_or_else(|| "clang".into()));
    // A new compiler (an upgraded clang package) rebuilds the objects.
    if let Some(binary) = resolve(&clang) {
        println!("cargo:rerun-if-changed={}", binary.display());
    }
    write_sources_header(&out);

    // One BPF object per pin source (plus the refusal points), so each
    // loads when its hooks exist: every `*.bpf.c`, in name order. Every
    // file of the directory is an input.
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(&bpf_dir).unwrap_or_else(|e| panic!("listing {}: {e}", bpf_dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("listing {}: {e}", bpf_dir.display())).path();
        println!("cargo:rerun-if-changed={}", path.display());
        if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".bpf.c")) {
            names.push(name.to_string());
        }
    }
    names.sort();

    println!("cargo:rerun-if-env-changed=PINCG_BPF_DEFINES");
    let defines: Vec<std::ffi::OsString> =
        env::var("PINCG_BPF_DEFINES").unwrap_or_default().split_whitespace().map(|d| format!("-D{d}").into()).collect();
    let mut objects = String::from("/// Every BPF object: (name, ELF bytes, FNV-1a hash of the bytes).\npub const OBJECTS: &[(&str, &[u8], u64)] = &[\n");
    for name in &names {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        let skeleton = out.join(format!("{name}.skel.rs"));
        let object = out.join(format!("{name}.bpf.o"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "-I".into(),
            include.clone().into_os_string(),
            "-I".into(),
            bpf_dir.clone().into_os_string(),
            "-I".into(),
            out.clone().into_os_string(),
            // v3: atomic fetch-and-add (the span counts), kernels >= 5.12.
            "-mcpu=v3".into(),
            "-Wall".into(),
            "-Werror".into(),
        ];
        args.extend(defines.iter().cloned());
        SkeletonBuilder::new()
            .clang(&clang)
            .source(&source)
            .obj(&object)
            .clang_args(args)
            .build_and_generate(&skeleton)
            .unwrap_or_else(|e| panic!("building BPF object {}: {e:#}", source.display()));
        let bytes = fs::read(&object).unwrap_or_else(|e| panic!("reading {}: {e}", object.display()));
        let _ = writeln!(
            objects,
            "    ({name:?}, include_bytes!({:?}), {:#018x}),",
            object.display().to_string(),
            fnv1a(&bytes)
        );
    }
    objects.push_str("];\n");
    let generated = out.join("objects.rs");
    fs::write(&generated, objects).unwrap_or_else(|e| panic!("writing {}: {e}", generated.display()));
    for header in ["pincg.h", "vmlinux.h"] {
        println!("cargo:rerun-if-changed={}", include.join(header).display());
    }
}

/// Where `program` is: itself if it names a path, else the first match
/// on PATH (symbolic links followed, so a changed target is seen).
fn resolve(program: &std::path::Path) -> Option<PathBuf> {
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
    };
    found.and_then(|p| fs::canonicalize(p).ok())
}

/// `enum pincg_source` from [`Source`]: its constants in id order and
/// `PINCG_NR_SOURCES`.
fn write_sources_header(out: &std::path::Path) {
    let mut h = String::from("/* Generated by bpf/build.rs from cgroup-spec's `Source`. */\nenum pincg_source {\n");
    for s in Source::ALL {
        let _ = writeln!(h, "\t{} = {},", s.c_name(), s as u32);
    }
    let _ = writeln!(h, "\tPINCG_NR_SOURCES = {},\n}};", Source::COUNT);
    let path = out.join("pincg_sources.h");
    fs::write(&path, h).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// FNV-1a, 64 bits: an identity of a build's object, not a defence (who
/// can change the binary does not need to fool a hash).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

//! Compiles each `src/bpf/<source>.bpf.c` with clang (CO-RE, against the
//! vendored x86_64 `include/vmlinux.h`) and generates its libbpf-rs skeleton.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// One BPF object per pin source, so each loads when its hooks exist.
const OBJECTS: &[&str] = &["io_uring", "vfio", "iommufd", "rdma", "xdp", "vduse", "enforce", "enforce_syscall"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let include = manifest.join("include");
    let bpf_dir = manifest.join("src").join("bpf");

    for name in OBJECTS {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        let skeleton = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&source)
            .clang_args([
                "-I".into(),
                include.clone().into_os_string(),
                "-I".into(),
                bpf_dir.clone().into_os_string(),
                // v3: atomic fetch-and-add (the span counts), kernels >= 5.12.
                "-mcpu=v3".into(),
                "-Wall".into(),
                "-Werror".into(),
            ])
            .build_and_generate(&skeleton)
            .unwrap_or_else(|e| panic!("building BPF object {}: {e:#}", source.display()));
        println!("cargo:rerun-if-changed={}", source.display());
    }
    println!("cargo:rerun-if-changed={}", include.display());
    for header in ["ledger.bpf.h", "vduse_uapi.h"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(header).display());
    }
}

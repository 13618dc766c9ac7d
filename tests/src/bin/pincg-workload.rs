//! `pincg-workload [--user UID] io_uring|vfio|iommufd|rdma|xdp|vduse|vm`: a pinning process driven over
//! stdin (see `pincg_tests::workload`).
//!
//! Arguments after `--` are ignored (a QEMU-like command line: `-name
//! guest=…`, which the agent reads to name a KubeVirt pod's VM).
//!
//! `--user UID` raises RLIMIT_MEMLOCK to unlimited, then drops to UID
//! without capabilities, so the kernel's own accounting runs as it does for
//! an unprivileged tenant.

use pincg_tests::workload::{
    self, io_uring::Rings, iommufd::Iommufd, rdma::Rdma, vduse::Vduse, vfio::Vfio, vm::Vm, xdp::Xdp,
};

fn main() {
    // What follows `--` is ignored: a QEMU-like command line for the agent
    // to read (`-name guest=…`).
    let args: Vec<String> = std::env::args().skip(1).take_while(|a| a != "--").collect();
    let (user, kind) = match args.as_slice() {
        [flag, uid, kind] if flag == "--user" => (Some(uid.parse::<u32>().expect("--user takes a numeric uid")), kind),
        [kind] => (None, kind),
        _ => usage(),
    };
    if let Some(uid) = user {
        workload::drop_privileges(uid).unwrap_or_else(|e| panic!("--user {uid}: {e}"));
    }
    match kind.as_str() {
        "io_uring" => {
            workload::serve(&mut Rings::default());
        }
        "vfio" => {
            workload::serve(&mut Vfio::default());
        }
        "iommufd" => {
            workload::serve(&mut Iommufd::default());
        }
        "xdp" => {
            workload::serve(&mut Xdp::default());
        }
        "rdma" => {
            workload::serve(&mut Rdma::default());
        }
        "vduse" => {
            workload::serve(&mut Vduse::default());
        }
        "vm" => {
            workload::serve(&mut Vm::default());
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: pincg-workload [--user UID] io_uring|vfio|iommufd|rdma|xdp|vduse|vm");
    std::process::exit(2)
}

//! The unit's system call restrictions as one classic-BPF seccomp filter
//! (x86_64, as systemd builds them).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Result};

/// The system call restrictions of a unit, as one classic-BPF seccomp
/// filter installed before the first exec (x86_64, as systemd builds them).
#[derive(Default)]
pub(super) struct Seccomp {
    pub(super) address_families: Option<Vec<u32>>,
    pub(super) lock_personality: bool,
    pub(super) deny_write_execute: bool,
    pub(super) restrict_realtime: bool,
    pub(super) native_only: bool,
}

pub(super) fn address_families(words: &[String]) -> Result<Vec<u32>> {
    words
        .iter()
        .map(|w| match w.as_str() {
            "AF_UNIX" => Ok(libc::AF_UNIX as u32),
            "AF_INET" => Ok(libc::AF_INET as u32),
            "AF_INET6" => Ok(libc::AF_INET6 as u32),
            "AF_NETLINK" => Ok(libc::AF_NETLINK as u32),
            other => bail!("RestrictAddressFamilies: {other} is not known to the harness"),
        })
        .collect()
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE_K: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET_K: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const AND_K: u32 = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
const RET_K: u32 = libc::BPF_RET | libc::BPF_K;

/// Offset of the low 32 bits of argument `n` in `struct seccomp_data`.
fn arg(n: u32) -> u32 {
    16 + 8 * n
}

/// What a rule does with one system call's argument.
enum Test {
    /// Allowed only if the argument is one of these; else the errno.
    OneOf(Vec<u32>),
    /// Refused if the argument, masked, is one of these.
    MaskedIn(u32, Vec<u32>),
    /// Refused if any bit of the mask is set.
    AnyBit(u32),
}

impl Seccomp {
    fn rules(&self) -> Vec<(i64, u32, Test, i32)> {
        let mut rules = Vec::new();
        if let Some(families) = &self.address_families {
            rules.push((libc::SYS_socket, 0, Test::OneOf(families.clone()), libc::EAFNOSUPPORT));
        }
        if self.lock_personality {
            rules.push((libc::SYS_personality, 0, Test::OneOf(vec![0, 0xffff_ffff]), libc::EPERM));
        }
        if self.deny_write_execute {
            let (w, x) = ((libc::PROT_WRITE) as u32, libc::PROT_EXEC as u32);
            rules.push((libc::SYS_mmap, 2, Test::MaskedIn(w | x, vec![w | x]), libc::EPERM));
            rules.push((libc::SYS_mprotect, 2, Test::AnyBit(x), libc::EPERM));
            rules.push((libc::SYS_pkey_mprotect, 2, Test::AnyBit(x), libc::EPERM));
            rules.push((libc::SYS_shmat, 2, Test::AnyBit(libc::SHM_EXEC as u32), libc::EPERM));
        }
        if self.restrict_realtime {
            let realtime = vec![libc::SCHED_FIFO as u32, libc::SCHED_RR as u32, 6 /* SCHED_DEADLINE */];
            rules.push((
                libc::SYS_sched_setscheduler,
                1,
                Test::MaskedIn(!(libc::SCHED_RESET_ON_FORK as u32), realtime),
                libc::EPERM,
            ));
        }
        rules
    }

    fn program(&self) -> Vec<libc::sock_filter> {
        let mut p = Vec::new();
        if self.native_only {
            p.push(stmt(LD_W_ABS, 4));
            p.push(jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0));
            p.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
            p.push(stmt(LD_W_ABS, 0));
            p.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
            p.push(stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
        }
        for (nr, n, test, errno) in self.rules() {
            let deny = stmt(RET_K, SECCOMP_RET_ERRNO | errno as u32);
            let allow = stmt(RET_K, SECCOMP_RET_ALLOW);
            let mut body = vec![stmt(LD_W_ABS, arg(n))];
            match test {
                Test::OneOf(values) => {
                    let m = values.len();
                    for (i, v) in values.iter().enumerate() {
                        body.push(jump(JEQ_K, *v, (m - i) as u8, 0));
                    }
                    body.extend([deny, allow]);
                }
                Test::MaskedIn(mask, values) => {
                    body.push(stmt(AND_K, mask));
                    let m = values.len();
                    for (i, v) in values.iter().enumerate() {
                        body.push(jump(JEQ_K, *v, (m - i) as u8, 0));
                    }
                    body.extend([allow, deny]);
                }
                Test::AnyBit(mask) => body.extend([jump(JSET_K, mask, 1, 0), allow, deny]),
            }
            p.push(stmt(LD_W_ABS, 0));
            p.push(jump(JEQ_K, nr as u32, 0, body.len() as u8));
            p.extend(body);
        }
        p.push(stmt(RET_K, SECCOMP_RET_ALLOW));
        p
    }

    /// Install the filter in the child before it execs (it stays through
    /// every later exec, as systemd's does).
    pub(super) fn install_on(&self, cmd: &mut Command) {
        let program = self.program();
        if program.len() == 1 {
            return;
        }
        // SAFETY: prctl with a filter that lives until the exec; no
        // allocation in the child.
        unsafe {
            cmd.pre_exec(move || {
                let prog =
                    libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
                if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

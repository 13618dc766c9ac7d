//! The demo: the agent with real io_uring pinning workloads in two VMs'
//! cgroups, then the per-cgroup table and a metrics excerpt.

use anyhow::Result;

use crate::scenario::{http_get, pincg, step, Agent, Cgroup, Workload};

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    let vm1 = Cgroup::create("machine.slice/vm-web.scope")?;
    let vm2 = Cgroup::create("machine.slice/vm-db.scope")?;
    let _agent = Agent::start()?;

    step("vm-web registers a 64 MiB io_uring buffer; vm-db registers 2 x 16 MiB as an unprivileged user");
    let mut web = Workload::spawn("vm-web", &vm1, &["io_uring"])?;
    web.run("ring")?;
    web.run("register 64M")?;
    let mut db = Workload::spawn("vm-db", &vm2, &["--user", "65534", "io_uring"])?;
    db.run("ring")?;
    db.run("register2 16M,16M")?;
    vm1.expect_current(64 * MIB)?;
    vm2.expect_current(32 * MIB)?;

    step("pincg status");
    print!("{}", pincg(&["status"])?);

    step("cat /run/pincg/cgroup/machine.slice/vm-db.scope/pins.stat");
    print!("{}", std::fs::read_to_string(vm2.mirror("pins.stat"))?);

    step("curl http://127.0.0.1:9578/metrics | grep machine.slice.*io_uring");
    for line in http_get("/metrics")?.lines() {
        if line.contains("machine.slice") && line.contains("io_uring") {
            println!("{line}");
        }
    }
    Ok(())
}

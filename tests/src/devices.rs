//! In-guest device setup for the pinning workloads.
//!
//! VFIO: the guest of `tests/guest/run-guest.sh --vfio` has QEMU's `edu`
//! PCI device behind an emulated Intel IOMMU. Binding it to `vfio-pci`
//! gives its IOMMU group a node `/dev/vfio/<group>`, which
//! `pincg-workload vfio` opens (`open <group>`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
const PCI_DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";
/// QEMU's `edu` educational device.
const EDU_VENDOR: &str = "0x1234";
const EDU_DEVICE: &str = "0x11e8";
const VFIO_PCI: &str = "vfio-pci";

/// Bind the first `edu` device to `vfio-pci` and return its group's node,
/// `/dev/vfio/<group>`. Idempotent: a device already bound is left as it is.
pub fn vfio_edu_group() -> Result<PathBuf> {
    bind_vfio(&first_edu()?)
}

/// Bind every `edu` device to `vfio-pci`: their group nodes, in PCI order.
pub fn vfio_edu_groups() -> Result<Vec<PathBuf>> {
    let devices = find_pci_devices(EDU_VENDOR, EDU_DEVICE)?;
    devices.iter().map(|d| bind_vfio(d)).collect()
}

/// Bind one PCI device to `vfio-pci`; its group node.
fn bind_vfio(device: &Path) -> Result<PathBuf> {
    // `modprobe` from PATH: in the guest it is the wrapper that knows where
    // the guest kernel's modules are. vfio.ko pulls in vfio_iommu_type1 as
    // a soft dependency.
    let status = Command::new("modprobe").arg(VFIO_PCI).status().context("running modprobe vfio-pci")?;
    ensure!(status.success(), "modprobe vfio-pci: {status}");

    let bdf = device.file_name().and_then(|n| n.to_str()).context("PCI device name")?.to_string();
    if driver_of(device)?.as_deref() != Some(VFIO_PCI) {
        // driver_override makes vfio-pci the only driver that may claim the
        // device; the probe below then binds it.
        write(&device.join("driver_override"), VFIO_PCI)?;
        if device.join("driver").exists() {
            write(&device.join("driver/unbind"), &bdf)?;
        }
        write(Path::new(PCI_DRIVERS_PROBE), &bdf)?;
        let driver = driver_of(device)?;
        ensure!(
            driver.as_deref() == Some(VFIO_PCI),
            "{bdf} is bound to {driver:?} after writing it to {PCI_DRIVERS_PROBE}, not to {VFIO_PCI}"
        );
    }

    let link = device.join("iommu_group");
    let target = fs::read_link(&link)
        .with_context(|| format!("reading {} (is the IOMMU on? intel_iommu=on)", link.display()))?;
    let group = target.file_name().context("empty iommu_group link")?;
    let node = Path::new("/dev/vfio").join(group);
    ensure!(node.exists(), "{} is bound to {VFIO_PCI} but {} does not exist", bdf, node.display());
    Ok(node)
}

/// Bind the `edu` device to `vfio-pci` and return its VFIO device cdev,
/// `/dev/vfio/devices/vfioN` (kernels with VFIO_DEVICE_CDEV, for iommufd).
pub fn vfio_edu_cdev() -> Result<PathBuf> {
    vfio_edu_group()?;
    let device = first_edu()?;
    let dir = device.join("vfio-dev");
    let entry = fs::read_dir(&dir)
        .with_context(|| format!("reading {} (is the kernel built with VFIO_DEVICE_CDEV?)", dir.display()))?
        .flatten()
        .next()
        .with_context(|| format!("{} is empty", dir.display()))?;
    Ok(Path::new("/dev/vfio/devices").join(entry.file_name()))
}

/// Let `uid` open the group node: `pincg-workload --user UID` runs with
/// uid and gid UID, and the node is root's, mode 0600. (`/dev/vfio/vfio`
/// is world-accessible.)
pub fn allow_user(group: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::chown(group, Some(uid), Some(uid))
        .with_context(|| format!("chown {uid}:{uid} {}", group.display()))
}

/// The first `edu` device.
fn first_edu() -> Result<PathBuf> {
    let devices = find_pci_devices(EDU_VENDOR, EDU_DEVICE)?;
    devices.into_iter().next().context("no edu device")
}

/// The PCI device directories whose `vendor` and `device` files match, in
/// PCI address order; at least one.
fn find_pci_devices(vendor: &str, device: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(PCI_DEVICES).with_context(|| format!("listing {PCI_DEVICES}"))? {
        let path = entry.with_context(|| format!("listing {PCI_DEVICES}"))?.path();
        if read_id(&path.join("vendor"))? == vendor && read_id(&path.join("device"))? == device {
            found.push(path);
        }
    }
    ensure!(!found.is_empty(), "no PCI device {vendor}:{device} in {PCI_DEVICES} (run the guest with --vfio)");
    found.sort();
    Ok(found)
}

/// The name of the driver bound to a PCI device, if any.
fn driver_of(device: &Path) -> Result<Option<String>> {
    let link = device.join("driver");
    match fs::read_link(&link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", link.display())),
    }
}

fn read_id(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_string())
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

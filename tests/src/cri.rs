//! A real container runtime for the NRI scenarios, no cluster: Debian's
//! containerd (1.7, NRI enabled) and runc, unpacked on the host by
//! tests/guest/fetch-containerd.sh, and a CRI client that creates pod
//! sandboxes and containers the way the kubelet does (pod cgroup first,
//! cgroupfs driver, host network: no CNI). Images are built here as OCI
//! archives and imported with `ctr`; no registry is reached.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::scenario::tool;

/// Where fetch-containerd.sh leaves its pointer (the host's cache, read-only
/// in the guest).
const POINTER: &str = "/var/cache/pincg/containerd/current.env";
const DIR: &str = "/run/pincg-containerd";
pub const NRI_SOCKET: &str = "/var/run/nri/nri.sock";
/// The image every pod and container runs (a static busybox; the
/// workload comes from the host through a bind mount).
pub const IMAGE: &str = "pincg.test/busybox:1";

/// The unpacked containerd and runc, or why there are none.
pub fn root() -> std::result::Result<PathBuf, String> {
    let text = fs::read_to_string(POINTER)
        .map_err(|e| format!("{POINTER}: {e} (run tests/guest/fetch-containerd.sh on the host)"))?;
    let root = text.lines().find_map(|l| l.strip_prefix("ROOT=")).ok_or(format!("{POINTER}: no ROOT= line"))?;
    let root = PathBuf::from(root);
    for bin in ["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2", "usr/bin/ctr", "usr/sbin/runc"] {
        if !root.join(bin).exists() {
            return Err(format!("{} missing", root.join(bin).display()));
        }
    }
    Ok(root)
}

/// A running containerd with its CRI client.
pub struct Containerd {
    root: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
}

impl Containerd {
    /// Start containerd (NRI on), import the test image, connect CRI.
    pub fn start(root: &Path) -> Result<Containerd> {
        fs::create_dir_all(DIR)?;
        let config = Path::new(DIR).join("config.toml");
        fs::write(&config, config_text(root))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut c = Containerd { root: root.to_path_buf(), child: None, rt, client: None };
        c.restart()?;
        let image = Path::new(DIR).join("image.tar");
        if !image.exists() {
            build_image(&image)?;
        }
        c.ctr(&["images", "import", "--snapshotter", "native", &image.to_string_lossy()])?;
        Ok(c)
    }

    /// (Re)start the daemon on the same state and reconnect the client.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = fs::OpenOptions::new().create(true).append(true).open(Path::new(DIR).join("containerd.log"))?;
        let path = format!("{}:{}", self.root.join("usr/bin").display(), std::env::var("PATH").unwrap_or_default());
        let child = Command::new(self.root.join("usr/bin/containerd"))
            .args(["--config", &Path::new(DIR).join("config.toml").to_string_lossy()])
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        let socket = Path::new(DIR).join("containerd.sock");
        let started = Instant::now();
        loop {
            if socket.exists() {
                if let Ok(client) = self.rt.block_on(connect(socket.clone())) {
                    self.client = Some(client);
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("containerd did not answer on {} within 60 s:\n{}", socket.display(), self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The CRI plugin loads after the socket appears: wait until it answers.
        let mut client = self.client.clone().expect("connected");
        let started = Instant::now();
        while self.rt.block_on(client.version(cri::VersionRequest::default())).is_err() {
            ensure!(started.elapsed() < Duration::from_secs(60), "CRI not ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("   containerd ready in {} ms", started.elapsed().as_millis());
        Ok(())
    }

    /// SIGTERM and wait (pods and their containers keep running: shims).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.client = None;
    }

    pub fn log(&self) -> String {
        fs::read_to_string(Path::new(DIR).join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = Path::new(DIR).join("containerd.sock");
        let mut all = vec!["--address", socket.to_str().expect("utf-8"), "-n", "k8s.io"];
        all.extend_from_slice(args);
        tool(&self.root.join("usr/bin/ctr").to_string_lossy(), &all)
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("containerd is running")
    }

    /// RunPodSandbox of `pod` (the kubelet creates its cgroup first).
    pub fn run_pod(&self, pod: &Pod) -> Result<String> {
        let cgroup = Path::new("/sys/fs/cgroup").join(pod.cgroup_parent().trim_start_matches('/'));
        fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let req = cri::RunPodSandboxRequest { config: Some(pod.config()), runtime_handler: String::new() };
        let resp =
            self.rt.block_on(self.client().run_pod_sandbox(req)).map_err(|s| status_error("RunPodSandbox", s))?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// CreateContainer: `Err` carries the runtime's message (an NRI
    /// plugin's refusal among them).
    pub fn create_container(
        &self,
        pod: &Pod,
        sandbox: &str,
        name: &str,
        command: &[&str],
        mounts: &[(&str, &str, bool)],
        devices: &[&str],
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            mounts: mounts
                .iter()
                .map(|(host, container, readonly)| cri::Mount {
                    host_path: host.to_string(),
                    container_path: container.to_string(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            devices: devices
                .iter()
                .map(|d| cri::Device {
                    host_path: d.to_string(),
                    container_path: d.to_string(),
                    permissions: "rw".into(),
                })
                .collect(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: pod.memory_limit,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    // As KubeVirt's virt-launcher: io_uring's buffers are
                    // then held to pincg's budget, not RLIMIT_MEMLOCK.
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["IPC_LOCK".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.config()),
        };
        let resp =
            self.rt.block_on(self.client().create_container(req)).map_err(|s| status_error("CreateContainer", s))?;
        Ok(resp.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest { container_id: id.into() };
        self.rt.block_on(self.client().start_container(req)).map_err(|s| status_error("StartContainer", s))?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet deletes a pod.
    pub fn delete_pod(&self, sandbox: &str) -> Result<()> {
        let stop = cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.into() };
        self.rt.block_on(self.client().stop_pod_sandbox(stop)).map_err(|s| status_error("StopPodSandbox", s))?;
        let remove = cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.into() };
        self.rt.block_on(self.client().remove_pod_sandbox(remove)).map_err(|s| status_error("RemovePodSandbox", s))?;
        Ok(())
    }
}

impl Drop for Containerd {
    /// Stop the daemon; its warnings and NRI lines go to the output.
    fn drop(&mut self) {
        self.stop();
        let log = self.log();
        // The whole log beside the guest's output, when there is an out dir.
        let _ = fs::write("/mnt/out/containerd.log", &log);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("level=error")
                    || l.contains("level=warning")
                    || l.contains("plugin \"pincg\"")
                    || l.contains("NRI")
            })
            .collect();
        println!("--- containerd log: warnings, errors and NRI ({} lines) ---\n{}", lines.len(), lines.join("\n"));
    }
}

fn status_error(call: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("CRI {call}: {:?}: {}", s.code(), s.message())
}

async fn connect(socket: PathBuf) -> Result<RuntimeServiceClient<Channel>> {
    // Not a download: tonic wants a URI for every endpoint, and this one is
    // never dialled; the connector below opens the containerd unix socket.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() }
}

/// A pod as the kubelet describes it to the runtime.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    /// The pod's memory limit (sandbox resources; 0: none).
    pub memory_limit: i64,
}

impl Pod {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Pod {
        Pod { name: name.into(), namespace: namespace.into(), uid: uid.into(), ..Pod::default() }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Pod {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// The cgroupfs driver's pod cgroup of a guaranteed pod.
    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/pod{}", self.uid)
    }

    fn config(&self) -> cri::PodSandboxConfig {
        let pairs = |v: &[(String, String)]| v.iter().cloned().collect();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            log_directory: format!("{DIR}/pods/{}", self.uid),
            labels: pairs(&self.labels),
            annotations: pairs(&self.annotations),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                resources: (self.memory_limit > 0).then(|| cri::LinuxContainerResources {
                    memory_limit_in_bytes: self.memory_limit,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn config_text(root: &Path) -> String {
    format!(
        r#"version = 2
root = "{DIR}/root"
state = "{DIR}/state"
[grpc]
  address = "{DIR}/containerd.sock"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "{NRI_SOCKET}"
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "5s"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{DIR}/cni/net.d"
    bin_dir = "{DIR}/cni/bin"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{}"
        SystemdCgroup = false
"#,
        root.join("usr/sbin/runc").display()
    )
}

/// An OCI image archive with a static busybox (the pause container runs
/// `busybox sleep`) and symlinks so that the host's /usr, bind-mounted,
/// provides the dynamic loader and libraries of the workload binary.
fn build_image(out: &Path) -> Result<()> {
    let work = Path::new(DIR).join("image");
    let _ = fs::remove_dir_all(&work);
    let rootfs = work.join("rootfs");
    for d in ["bin", "usr", "proc", "sys", "dev", "etc", "tmp", "pincg", "pincg-out"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        std::os::unix::fs::symlink(to, rootfs.join(link))?;
    }
    let blobs = work.join("layout/blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer = work.join("layer.tar");
    tool("tar", &["-C", &rootfs.to_string_lossy(), "-cf", &layer.to_string_lossy(), "."])?;
    let put = |path: &Path| -> Result<(String, u64)> {
        let sum = tool("sha256sum", &[&path.to_string_lossy()])?;
        let digest = sum.split_whitespace().next().context("sha256sum output")?.to_string();
        fs::copy(path, blobs.join(&digest))?;
        Ok((format!("sha256:{digest}"), fs::metadata(path)?.len()))
    };
    let (layer_digest, layer_size) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config_file = work.join("config.json");
    fs::write(&config_file, config.to_string())?;
    let (config_digest, config_size) = put(&config_file)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let manifest_file = work.join("manifest.json");
    fs::write(&manifest_file, manifest.to_string())?;
    let (manifest_digest, manifest_size) = put(&manifest_file)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": manifest_size, "annotations": {"io.containerd.image.name": IMAGE}}],
    });
    fs::write(work.join("layout/index.json"), index.to_string())?;
    fs::write(work.join("layout/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tool("tar", &["-C", &work.join("layout").to_string_lossy(), "-cf", &out.to_string_lossy(), "."])?;
    Ok(())
}

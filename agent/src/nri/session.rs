//! One connection to the runtime's NRI socket: register, then answer the
//! runtime's calls until it goes away; and the loop that reconnects.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::api::{self, ttrpc, Event};
use super::plugin::{ApplyError, Plugin};
use super::wire::{self, Decoder, Message, WireError, PLUGIN_CONN, RUNTIME_CONN};

/// How often a missing or closed socket is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The plugin's name among the runtime's plugins.
const NAME: &str = "pincg";

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the runtime refused the registration: {0}")]
    Refused(String),
    #[error("the runtime closed the connection")]
    Closed,
}

/// Connect, serve, reconnect, forever. One log line per change of state,
/// not per attempt.
pub async fn run(mut plugin: Plugin, socket: PathBuf, index: u8) {
    let mut last_error = String::new();
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                last_error.clear();
                tracing::info!("NRI: connected to {}", socket.display());
                let result = serve(&mut plugin, stream, index).await;
                plugin.status.connected.store(false, Ordering::Relaxed);
                let why = match result {
                    Ok(()) => "the runtime shut the plugin down".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("NRI: disconnected from {} ({why}); reconnecting", socket.display());
            }
            Err(e) => {
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(
                        "NRI: {} not available ({error}); pods get no budgets from NRI until the runtime listens there",
                        socket.display()
                    );
                    last_error = error;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn serve(plugin: &mut Plugin, mut stream: UnixStream, index: u8) -> Result<(), SessionError> {
    let register = api::RegisterPluginRequest { plugin_name: NAME.into(), plugin_idx: format!("{index:02}") };
    let register = wire::request(1, api::RUNTIME_SERVICE, "RegisterPlugin", &register);
    stream.write_all(&wire::encode(RUNTIME_CONN, &register)).await?;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(SessionError::Closed);
        }
        for (conn, msg) in decoder.feed(&buf[..n])? {
            match (conn, msg.kind) {
                (RUNTIME_CONN, wire::TYPE_RESPONSE) => registered(plugin, &msg)?,
                (PLUGIN_CONN, wire::TYPE_REQUEST) => {
                    let (reply, shutdown) = call(plugin, &msg);
                    stream.write_all(&wire::encode(PLUGIN_CONN, &reply)).await?;
                    if shutdown {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }
}

fn registered(plugin: &Plugin, msg: &Message) -> Result<(), SessionError> {
    let resp: ttrpc::Response = wire::decode("response", &msg.payload)?;
    match resp.status {
        Some(s) if s.code != 0 => Err(SessionError::Refused(s.message)),
        _ => {
            plugin.status.connected.store(true, Ordering::Relaxed);
            tracing::info!("NRI: registered as plugin pincg");
            Ok(())
        }
    }
}

/// Answer one call of the runtime; and whether it was Shutdown.
fn call(plugin: &mut Plugin, msg: &Message) -> (Message, bool) {
    let req: ttrpc::Request = match wire::decode("request", &msg.payload) {
        Ok(r) => r,
        Err(e) => return (wire::response(msg.stream, Err((wire::INTERNAL, e.to_string()))), false),
    };
    let result = if req.service != api::PLUGIN_SERVICE {
        Err((wire::UNIMPLEMENTED, format!("pincg serves no {}", req.service)))
    } else {
        dispatch(plugin, &req.method, &req.payload)
    };
    (wire::response(msg.stream, result), req.method == "Shutdown")
}

type Reply = Result<Vec<u8>, (i32, String)>;

fn dispatch(plugin: &mut Plugin, method: &str, body: &[u8]) -> Reply {
    let bad = |e: WireError| (wire::INTERNAL, e.to_string());
    match method {
        "Configure" => {
            let req: api::ConfigureRequest = wire::decode("ConfigureRequest", body).map_err(bad)?;
            tracing::info!("NRI: configured by {} {}", req.runtime_name, req.runtime_version);
            let events = [Event::RunPodSandbox, Event::StopPodSandbox, Event::RemovePodSandbox, Event::CreateContainer];
            Ok(api::ConfigureResponse { events: api::event_mask(&events) }.encode_to_vec())
        }
        "Synchronize" => {
            let req: api::SynchronizeRequest = wire::decode("SynchronizeRequest", body).map_err(bad)?;
            tracing::info!("NRI: synchronizing {} pods, {} containers", req.pods.len(), req.containers.len());
            for pod in &req.pods {
                if let Err(e) = plugin.apply(pod) {
                    tracing::warn!("NRI: {}", crate::logging::chain(&e));
                }
            }
            Ok(api::SynchronizeResponse::default().encode_to_vec())
        }
        "CreateContainer" => {
            let req: api::CreateContainerRequest = wire::decode("CreateContainerRequest", body).map_err(bad)?;
            let pod = req.pod.unwrap_or_default();
            // No container may pin before its pod's budget applies: a
            // budget that cannot be put in force fails the creation.
            match plugin.apply(&pod) {
                Ok(_) => Ok(api::CreateContainerResponse::default().encode_to_vec()),
                Err(e) => {
                    tracing::warn!("NRI: {}; container creation refused", crate::logging::chain(&e));
                    Err((wire::FAILED_PRECONDITION, format!("pincg: {e}")))
                }
            }
        }
        "StateChange" => {
            let req: api::StateChangeEvent = wire::decode("StateChangeEvent", body).map_err(bad)?;
            let pod = req.pod.unwrap_or_default();
            let event =
                Event::try_from(req.event).map_or_else(|_| req.event.to_string(), |e| e.as_str_name().to_string());
            tracing::info!("NRI: {event} of pod {}/{} ({})", pod.namespace, pod.name, pod.id);
            match Event::try_from(req.event) {
                // The pod cgroup exists once the sandbox runs (kubelet
                // creates it first); if not, CreateContainer applies it.
                Ok(Event::RunPodSandbox) => match plugin.apply(&pod) {
                    Err(e @ ApplyError::Missing { .. }) => tracing::info!("NRI: {e}; applied at its first container"),
                    Err(e) => tracing::warn!("NRI: {}", crate::logging::chain(&e)),
                    Ok(_) => {}
                },
                Ok(Event::RemovePodSandbox) => plugin.remove(&pod.id),
                _ => {}
            }
            Ok(api::Empty::default().encode_to_vec())
        }
        "Shutdown" => Ok(api::Empty::default().encode_to_vec()),
        // Subscribed to none of the others; answer them harmlessly.
        "UpdateContainer" => Ok(api::UpdateContainerResponse::default().encode_to_vec()),
        "StopContainer" => Ok(api::StopContainerResponse::default().encode_to_vec()),
        other => Err((wire::UNIMPLEMENTED, format!("pincg does not implement {other}"))),
    }
}

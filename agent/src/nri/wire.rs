//! NRI's wire: one unix stream carrying several logical connections (the
//! mux of containerd/nri pkg/net/multiplex), each a ttrpc byte stream.
//!
//! Mux frame: connection id (u32, big endian), payload length (u32, big
//! endian), payload. Connection 1 carries the plugin's service (the runtime
//! calls the plugin), connection 2 the runtime's (the plugin calls the
//! runtime). A ttrpc message may be split over several mux frames, so each
//! connection's payloads are reassembled before ttrpc frames are cut.
//!
//! ttrpc frame: payload length (u32 BE), stream id (u32 BE), type (u8:
//! 1 request, 2 response), flags (u8), payload (a protobuf `Request` or
//! `Response`).

use std::collections::HashMap;

use prost::Message as _;

use super::api::ttrpc::{Request, Response, Status};

/// The mux connection the runtime calls the plugin's service on.
pub const PLUGIN_CONN: u32 = 1;
/// The mux connection the plugin calls the runtime's service on.
pub const RUNTIME_CONN: u32 = 2;

const MUX_HEADER: usize = 8;
const TTRPC_HEADER: usize = 10;
/// ttrpc's largest message (4 MiB, as in Go's ttrpc); the mux frame bound.
pub const MAX_MESSAGE: usize = 4 << 20;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;

/// A protocol violation by the peer: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("mux frame of {0} bytes on connection {1}: larger than any ttrpc message")]
    FrameTooLarge(usize, u32),
    #[error("ttrpc message of {0} bytes: larger than {MAX_MESSAGE}")]
    MessageTooLarge(usize),
    #[error("undecodable ttrpc {what}: {reason}")]
    Decode { what: &'static str, reason: String },
}

/// One ttrpc message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub stream: u32,
    pub kind: u8,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// The bytes of `msg` as one mux frame on `conn` (NRI's messages stay far
/// below the 4 MiB frame bound, so one frame is always enough).
pub fn encode(conn: u32, msg: &Message) -> Vec<u8> {
    let inner = TTRPC_HEADER + msg.payload.len();
    let mut out = Vec::with_capacity(MUX_HEADER + inner);
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(&(inner as u32).to_be_bytes());
    out.extend_from_slice(&(msg.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg.stream.to_be_bytes());
    out.push(msg.kind);
    out.push(msg.flags);
    out.extend_from_slice(&msg.payload);
    out
}

/// Bytes read off the unix stream in, ttrpc messages per connection out.
#[derive(Default)]
pub struct Decoder {
    trunk: Vec<u8>,
    conns: HashMap<u32, Vec<u8>>,
}

impl Decoder {
    /// Take `bytes` as read and return every message now complete, with
    /// the connection it came on, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(u32, Message)>, WireError> {
        self.trunk.extend_from_slice(bytes);
        let mut done = Vec::new();
        let mut at = 0;
        while self.trunk.len() - at >= MUX_HEADER {
            let conn = be32(&self.trunk[at..]);
            let len = be32(&self.trunk[at + 4..]) as usize;
            if len > TTRPC_HEADER + MAX_MESSAGE {
                return Err(WireError::FrameTooLarge(len, conn));
            }
            if self.trunk.len() - at - MUX_HEADER < len {
                break;
            }
            let payload = &self.trunk[at + MUX_HEADER..at + MUX_HEADER + len];
            let stream = self.conns.entry(conn).or_default();
            stream.extend_from_slice(payload);
            at += MUX_HEADER + len;
            while let Some(msg) = cut(stream)? {
                done.push((conn, msg));
            }
        }
        self.trunk.drain(..at);
        Ok(done)
    }
}

/// The first complete ttrpc message of `stream`, removed from it.
fn cut(stream: &mut Vec<u8>) -> Result<Option<Message>, WireError> {
    if stream.len() < TTRPC_HEADER {
        return Ok(None);
    }
    let len = be32(stream) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::MessageTooLarge(len));
    }
    if stream.len() < TTRPC_HEADER + len {
        return Ok(None);
    }
    let msg = Message {
        stream: be32(&stream[4..]),
        kind: stream[8],
        flags: stream[9],
        payload: stream[TTRPC_HEADER..TTRPC_HEADER + len].to_vec(),
    };
    stream.drain(..TTRPC_HEADER + len);
    Ok(Some(msg))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A unary call of `service`/`method` with `body`, as a request message.
pub fn request(stream: u32, service: &str, method: &str, body: &impl prost::Message) -> Message {
    let req = Request {
        service: service.into(),
        method: method.into(),
        payload: body.encode_to_vec(),
        timeout_nano: 0,
        metadata: Vec::new(),
    };
    Message { stream, kind: TYPE_REQUEST, flags: 0, payload: req.encode_to_vec() }
}

/// The answer to the request on `stream`: `Ok` with the reply, or a ttrpc
/// status (`code` as in gRPC) with a message.
pub fn response(stream: u32, result: Result<Vec<u8>, (i32, String)>) -> Message {
    let resp = match result {
        Ok(payload) => Response { status: Some(Status { code: 0, message: String::new() }), payload },
        Err((code, message)) => Response { status: Some(Status { code, message }), payload: Vec::new() },
    };
    Message { stream, kind: TYPE_RESPONSE, flags: 0, payload: resp.encode_to_vec() }
}

/// The protobuf payload of a message of `kind`.
pub fn decode<T: prost::Message + Default>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    T::decode(bytes).map_err(|e| WireError::Decode { what, reason: e.to_string() })
}

/// gRPC status codes pincg answers with.
pub const UNIMPLEMENTED: i32 = 12;
pub const INTERNAL: i32 = 13;
pub const FAILED_PRECONDITION: i32 = 9;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nri::api::RegisterPluginRequest;

    /// RegisterPlugin("pincg", "10") on stream 1 of the runtime connection,
    /// worked out by hand from the mux and ttrpc frame layouts and the
    /// protobuf encoding of ttrpc's Request (fields 1-3; no deadline, no
    /// metadata).
    const REGISTER: &[u8] = &[
        0, 0, 0, 2, 0, 0, 0, 69, // mux: connection 2, 69 bytes
        0, 0, 0, 59, 0, 0, 0, 1, 1, 0, // ttrpc: 59 bytes, stream 1, request, no flags
        0x0a, 0x1c, b'n', b'r', b'i', b'.', b'p', b'k', b'g', b'.', b'a', b'p', b'i', b'.', b'v', b'1', b'a', b'l',
        b'p', b'h', b'a', b'1', b'.', b'R', b'u', b'n', b't', b'i', b'm', b'e', // service
        0x12, 0x0e, b'R', b'e', b'g', b'i', b's', b't', b'e', b'r', b'P', b'l', b'u', b'g', b'i', b'n', // method
        0x1a, 0x0b, 0x0a, 0x05, b'p', b'i', b'n', b'c', b'g', 0x12, 0x02, b'1', b'0', // payload
    ];

    fn register() -> Message {
        let body = RegisterPluginRequest { plugin_name: "pincg".into(), plugin_idx: "10".into() };
        request(1, "nri.pkg.api.v1alpha1.Runtime", "RegisterPlugin", &body)
    }

    #[test]
    fn register_request_matches_golden_bytes() {
        assert_eq!(encode(RUNTIME_CONN, &register()), REGISTER);
    }

    #[test]
    fn ok_response_golden_bytes() {
        // Status{code 0} encodes as an empty submessage; payload Empty{}.
        assert_eq!(
            encode(PLUGIN_CONN, &response(3, Ok(Vec::new()))),
            [0, 0, 0, 1, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 3, 2, 0, 0x0a, 0]
        );
    }

    #[test]
    fn decodes_byte_by_byte_and_split_over_frames() {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in REGISTER {
            got.extend(d.feed(&[*b]).unwrap());
        }
        assert_eq!(got, vec![(RUNTIME_CONN, register())]);
        // The same ttrpc message in two mux frames (Go's bufio writes a
        // large message in pieces), behind a frame of another connection.
        let ttrpc = &REGISTER[8..];
        let mut bytes = encode(PLUGIN_CONN, &response(7, Ok(vec![1, 2])));
        for part in [&ttrpc[..20], &ttrpc[20..]] {
            bytes.extend_from_slice(&RUNTIME_CONN.to_be_bytes());
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        let got = d.feed(&bytes).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (PLUGIN_CONN, response(7, Ok(vec![1, 2]))));
        assert_eq!(got[1], (RUNTIME_CONN, register()));
        let req: Request = decode("request", &got[1].1.payload).unwrap();
        assert_eq!((req.service.as_str(), req.method.as_str()), ("nri.pkg.api.v1alpha1.Runtime", "RegisterPlugin"));
    }

    #[test]
    fn refuses_oversized_frames_and_messages() {
        let mut d = Decoder::default();
        let huge = (MAX_MESSAGE + 11) as u32;
        let frame = [&1u32.to_be_bytes()[..], &huge.to_be_bytes()].concat();
        assert_eq!(d.feed(&frame), Err(WireError::FrameTooLarge(MAX_MESSAGE + 11, 1)));
        let mut d = Decoder::default();
        let msg = [&1u32.to_be_bytes()[..], &10u32.to_be_bytes(), &((MAX_MESSAGE + 1) as u32).to_be_bytes(), &[0; 6]]
            .concat();
        assert_eq!(d.feed(&msg), Err(WireError::MessageTooLarge(MAX_MESSAGE + 1)));
    }
}

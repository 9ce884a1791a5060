//! The Jupyter wire protocol (v5.3): framing, HMAC-SHA256 signing and parsing.
//!
//! A message on the wire is `[routing ids…, "<IDS|MSG>", hmac, header,
//! parent_header, metadata, content, buffers…]`; the signature covers the four
//! JSON frames. Messages with a bad signature are refused, so only a holder of
//! the per-worker key can speak for the kernel.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::random;

pub(crate) const DELIMITER: &[u8] = b"<IDS|MSG>";
const PROTOCOL_VERSION: &str = "5.3";
/// Largest header or parent header accepted (ours are about 200 bytes).
const MAX_HEADER: usize = 64 * 1024;

/// A decoded protocol message: the header fields the gateway routes on, and
/// the content still as JSON bytes (parsed later into the type its
/// `msg_type` calls for, never into a generic tree).
#[derive(Debug, Clone)]
pub struct Message {
    pub msg_type: String,
    /// The `msg_id` of the request this message answers ("" if none).
    pub parent_id: String,
    pub content: Bytes,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    msg_type: String,
}

#[derive(Deserialize)]
struct ParentHeader {
    #[serde(default)]
    msg_id: String,
}

/// Signs and checks messages for one kernel, and names our client session.
pub struct Codec {
    key: Vec<u8>,
    session: String,
}

impl Codec {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.as_bytes().to_vec(),
            session: random::hex(16),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }

    /// Builds a signed request; returns its `msg_id` and the frames to send.
    pub fn request(&self, msg_type: &str, content: Value) -> (String, Vec<Bytes>) {
        let msg_id = random::hex(16);
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "code-interpreter",
            "date": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
        });
        (msg_id, self.sign(&header, &json!({}), &content))
    }

    /// The frames of a message: delimiter, signature, then header, parent
    /// header, empty metadata and content (the fake kernel answers with it too).
    pub(crate) fn sign(&self, header: &Value, parent: &Value, content: &Value) -> Vec<Bytes> {
        let parts: [Bytes; 4] = [
            Bytes::from(header.to_string()),
            Bytes::from(parent.to_string()),
            Bytes::from_static(b"{}"),
            Bytes::from(content.to_string()),
        ];
        let mut mac = self.mac();
        for part in &parts {
            mac.update(part);
        }
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut frames = vec![Bytes::from_static(DELIMITER), Bytes::from(signature)];
        frames.extend(parts);
        frames
    }

    /// Parses and verifies a message received on any channel. Every error
    /// means the worker broke the protocol (only the kernel holds the key).
    pub fn decode(&self, frames: Vec<Bytes>) -> Result<Message> {
        let at = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or_else(|| anyhow!("a message without the <IDS|MSG> delimiter"))?;
        let rest = &frames[at + 1..];
        if rest.len() < 5 {
            return Err(anyhow!(
                "a message with {} frames after the delimiter",
                rest.len()
            ));
        }
        if rest[1].len() > MAX_HEADER || rest[2].len() > MAX_HEADER {
            return Err(anyhow!("a message header over {MAX_HEADER} bytes"));
        }
        let mut mac = self.mac();
        for part in &rest[1..5] {
            mac.update(part);
        }
        let expected = hex::decode(&rest[0]).map_err(|_| anyhow!("a signature that is not hex"))?;
        mac.verify_slice(&expected)
            .map_err(|_| anyhow!("a message with a bad signature"))?;
        let header: Header = serde_json::from_slice(&rest[1])
            .map_err(|e| anyhow!("a header that is not a JSON object: {e}"))?;
        let parent: ParentHeader = serde_json::from_slice(&rest[2])
            .map_err(|e| anyhow!("a parent header that is not a JSON object: {e}"))?;
        Ok(Message {
            msg_type: header.msg_type,
            parent_id: parent.msg_id,
            content: rest[4].clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_decodes_with_the_same_key() {
        let codec = Codec::new("k3y");
        let (id, message) = codec.request("kernel_info_request", json!({}));
        let decoded = codec.decode(message).unwrap();
        assert_eq!(decoded.msg_type, "kernel_info_request");
        assert_eq!(decoded.parent_id, "");
        assert!(!id.is_empty());
    }

    #[test]
    fn a_wrong_key_or_tampered_frame_is_refused() {
        let (_, message) = Codec::new("k3y").request("execute_request", json!({"code": "1"}));
        assert!(Codec::new("other").decode(message.clone()).is_err());
        let mut frames = message;
        frames[5] = Bytes::from_static(b"{\"code\": \"2\"}");
        assert!(Codec::new("k3y").decode(frames).is_err());
    }
}

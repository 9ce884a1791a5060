//! The Jupyter wire protocol (v5.3): framing, HMAC-SHA256 signing and parsing.
//!
//! A message on the wire is `[routing ids…, "<IDS|MSG>", hmac, header,
//! parent_header, metadata, content, buffers…]`; the signature covers the four
//! JSON frames. Messages with a bad signature are refused, so only a holder of
//! the per-worker key can speak for the kernel.

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use zeromq::ZmqMessage;

use crate::random;

const DELIMITER: &[u8] = b"<IDS|MSG>";
const PROTOCOL_VERSION: &str = "5.3";

/// A decoded protocol message.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: Value,
    pub parent_header: Value,
    pub content: Value,
}

impl Message {
    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }

    /// The `msg_id` of the request this message answers, if any.
    pub fn parent_id(&self) -> &str {
        self.parent_header["msg_id"].as_str().unwrap_or("")
    }
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
    pub fn request(&self, msg_type: &str, content: Value) -> (String, ZmqMessage) {
        let msg_id = random::hex(16);
        let header = json!({
            "msg_id": msg_id,
            "session": self.session,
            "username": "code-interpreter",
            "date": now_iso8601(),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
        });
        let parts: [Bytes; 4] = [
            Bytes::from(header.to_string()),
            Bytes::from_static(b"{}"),
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
        let message = ZmqMessage::try_from(frames).expect("a request has frames");
        (msg_id, message)
    }

    /// Parses and verifies a message received on any channel.
    pub fn decode(&self, message: ZmqMessage) -> Result<Message> {
        let frames = message.into_vec();
        let at = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or_else(|| anyhow!("kernel message without <IDS|MSG> delimiter"))?;
        let rest = &frames[at + 1..];
        if rest.len() < 5 {
            bail!(
                "kernel message with {} frames after the delimiter",
                rest.len()
            );
        }
        let mut mac = self.mac();
        for part in &rest[1..5] {
            mac.update(part);
        }
        let expected = hex::decode(&rest[0]).map_err(|_| anyhow!("kernel signature is not hex"))?;
        mac.verify_slice(&expected)
            .map_err(|_| anyhow!("kernel message with a bad signature"))?;
        let parse = |frame: &Bytes, what: &str| -> Result<Value> {
            serde_json::from_slice(frame).map_err(|e| anyhow!("kernel {what} is not JSON: {e}"))
        };
        Ok(Message {
            header: parse(&rest[1], "header")?,
            parent_header: parse(&rest[2], "parent header")?,
            content: parse(&rest[4], "content")?,
        })
    }
}

/// Current UTC time as ISO 8601 with microseconds, as Jupyter headers carry it.
fn now_iso8601() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant), valid for the whole proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_decodes_with_the_same_key() {
        let codec = Codec::new("k3y");
        let (id, message) = codec.request("kernel_info_request", json!({}));
        let decoded = codec.decode(message).unwrap();
        assert_eq!(decoded.header["msg_id"], id);
        assert_eq!(decoded.msg_type(), "kernel_info_request");
    }

    #[test]
    fn a_wrong_key_or_tampered_frame_is_refused() {
        let (_, message) = Codec::new("k3y").request("execute_request", json!({"code": "1"}));
        assert!(Codec::new("other").decode(message.clone()).is_err());
        let mut frames = message.into_vec();
        frames[5] = Bytes::from_static(b"{\"code\": \"2\"}");
        assert!(Codec::new("k3y")
            .decode(ZmqMessage::try_from(frames).unwrap())
            .is_err());
    }

    #[test]
    fn dates_look_like_iso8601() {
        let date = now_iso8601();
        assert_eq!(date.len(), 27, "{date}");
        assert!(date.starts_with("20") && date.ends_with('Z'));
    }
}

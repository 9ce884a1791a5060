//! Collects what one execution produced, in order, and derives the original
//! API's `result_text` and `result_base64` from it.
//!
//! Output is capped: past `max_bytes` further output is dropped and a marker
//! says so, which bounds the gateway's memory whatever the user's code prints.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a streaming execution's outputs go as they arrive.
pub type OutputSink = tokio::sync::mpsc::UnboundedSender<Output>;

/// A MIME bundle: each type's data exactly as the kernel sent it (never
/// parsed into a tree, so a hostile bundle costs what its bytes cost).
pub type MimeBundle = BTreeMap<String, Box<RawValue>>;

/// Most outputs one execution keeps; further ones are dropped (truncated).
pub const MAX_OUTPUTS: usize = 10_000;
/// Part of the cap kept back for the response's other fields and the marker.
const ENVELOPE: usize = 4096;

/// What one execution may send back and make the gateway read.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    /// Bytes of the response body (and, streaming, of its events too).
    pub max_output_bytes: usize,
    /// Bytes past the cap the worker may still send, read and thrown away;
    /// beyond it the worker is destroyed for flooding.
    pub max_flood_bytes: u64,
}

/// One output of an execution, in the order the kernel produced it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    /// Text written to stdout or stderr.
    Stream { name: String, text: String },
    /// The value of the last expression, in every MIME type the kernel sent.
    ExecuteResult {
        execution_count: Option<i64>,
        data: MimeBundle,
        metadata: Box<RawValue>,
    },
    /// Something displayed (a plot, an HTML table…), in every MIME type sent.
    DisplayData {
        data: MimeBundle,
        metadata: Box<RawValue>,
    },
    /// An uncaught exception.
    Error(ErrorInfo),
}

impl Output {
    /// The output's `type` (also the name of its server-sent event).
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Stream { .. } => "stream",
            Output::ExecuteResult { .. } => "execute_result",
            Output::DisplayData { .. } => "display_data",
            Output::Error(_) => "error",
        }
    }
}

/// An uncaught Python exception.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    #[serde(default)]
    pub ename: String,
    #[serde(default)]
    pub evalue: String,
    #[serde(default)]
    pub traceback: Vec<String>,
}

#[derive(Deserialize)]
struct StreamContent {
    #[serde(default)]
    name: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct RichContent {
    #[serde(default)]
    execution_count: Option<i64>,
    #[serde(default)]
    data: MimeBundle,
    #[serde(default = "empty_object")]
    metadata: Box<RawValue>,
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".into()).expect("{} is JSON")
}

/// Everything one execution produced, and what it cost against the cap.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outputs: Vec<Output>,
    /// `execute_reply`'s status: "ok", "error" or "aborted".
    pub status: String,
    pub execution_count: Option<i64>,
    /// Bytes counted against the cap so far (see [`charge`]).
    charged: usize,
    /// Bytes of output dropped because of the cap.
    dropped_bytes: u64,
    /// Outputs dropped because of the cap or the output count.
    dropped_outputs: u64,
    max_bytes: usize,
    /// Each kept output is also sent as an event: it counts twice.
    streaming: bool,
}

impl Execution {
    pub fn new(max_bytes: usize, streaming: bool) -> Self {
        Self {
            outputs: Vec::new(),
            status: String::new(),
            execution_count: None,
            charged: 0,
            dropped_bytes: 0,
            dropped_outputs: 0,
            max_bytes,
            streaming,
        }
    }

    /// Bytes the cap still allows.
    pub fn room(&self) -> usize {
        self.max_bytes
            .saturating_sub(ENVELOPE)
            .saturating_sub(self.charged)
    }

    /// Takes one IOPub message of this execution (its content as JSON bytes);
    /// ignores types that are not output. What is kept is also sent to
    /// `sink`, if any. Content that does not parse as its type is an error
    /// (the worker broke the protocol).
    pub fn absorb(
        &mut self,
        msg_type: &str,
        content: &[u8],
        sink: Option<&OutputSink>,
    ) -> Result<()> {
        let what = || format!("a {msg_type} message whose content is malformed");
        let output = match msg_type {
            "stream" => {
                let c: StreamContent = serde_json::from_slice(content).with_context(what)?;
                Output::Stream {
                    name: c.name,
                    text: c.text,
                }
            }
            "execute_result" => {
                let c: RichContent = serde_json::from_slice(content).with_context(what)?;
                Output::ExecuteResult {
                    execution_count: c.execution_count,
                    data: c.data,
                    metadata: c.metadata,
                }
            }
            "display_data" | "update_display_data" => {
                let c: RichContent = serde_json::from_slice(content).with_context(what)?;
                Output::DisplayData {
                    data: c.data,
                    metadata: c.metadata,
                }
            }
            "error" => Output::Error(serde_json::from_slice(content).with_context(what)?),
            "clear_output" => {
                // What was charged stays charged: it may have been streamed already.
                self.outputs.clear();
                return Ok(());
            }
            _ => return Ok(()),
        };
        if let Some(kept) = self.push(output, sink.is_some()) {
            if let Some(sink) = sink {
                let _ = sink.send(kept);
            }
        }
        Ok(())
    }

    /// Counts a message that was too large to hold and was thrown away unread.
    pub fn discarded(&mut self, bytes: u64) {
        self.dropped_bytes += bytes;
        self.dropped_outputs += 1;
    }

    /// Keeps `output` within the cap; returns a copy of what was kept when asked.
    fn push(&mut self, mut output: Output, copy: bool) -> Option<Output> {
        let cost = charge(&output, self.streaming);
        let room = self.room();
        if self.outputs.len() >= MAX_OUTPUTS && !self.merges(&output) {
            self.dropped_bytes += cost as u64;
            self.dropped_outputs += 1;
            return None;
        }
        let cost = if cost <= room {
            cost
        } else {
            // Keep the head of an oversized stream; drop anything else whole.
            match &mut output {
                Output::Stream { name, text } => {
                    let full = text.len();
                    let per_byte = if self.streaming { 3 } else { 2 };
                    let mut cut = room / per_byte;
                    loop {
                        cut = cut.min(text.len());
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                        let cost = charge(&stream_of(name, text), self.streaming);
                        if cost <= room || cut == 0 {
                            break;
                        }
                        // Escapes made it longer than guessed: shrink in proportion.
                        cut = cut * room / cost;
                    }
                    if cut == 0 {
                        self.dropped_bytes += cost as u64;
                        self.dropped_outputs += 1;
                        return None;
                    }
                    self.dropped_bytes += (full - cut) as u64;
                    self.dropped_outputs += 1;
                    charge(&output, self.streaming)
                }
                _ => {
                    self.dropped_bytes += cost as u64;
                    self.dropped_outputs += 1;
                    return None;
                }
            }
        };
        self.charged += cost;
        let copied = copy.then(|| output.clone());
        // Kernels flush streams in chunks: merge consecutive chunks of one stream.
        if let (
            Some(Output::Stream {
                name: last,
                text: merged,
            }),
            Output::Stream { name, text },
        ) = (self.outputs.last_mut(), &output)
        {
            if last == name {
                merged.push_str(text);
                return copied;
            }
        }
        self.outputs.push(output);
        copied
    }

    /// True when `output` would be merged into the last output, not added.
    fn merges(&self, output: &Output) -> bool {
        matches!(
            (self.outputs.last(), output),
            (Some(Output::Stream { name: a, .. }), Output::Stream { name: b, .. }) if a == b
        )
    }

    /// Adds the truncation marker, if anything was dropped (also to `sink`).
    /// Call once, at the end.
    pub fn finish(&mut self, sink: Option<&OutputSink>) {
        if self.truncated() {
            let marker = Output::Stream {
                name: "stderr".into(),
                text: format!(
                    "\n[code-interpreter: output truncated, {} bytes in {} outputs dropped (limit {} bytes)]\n",
                    self.dropped_bytes, self.dropped_outputs, self.max_bytes
                ),
            };
            if let Some(sink) = sink {
                let _ = sink.send(marker.clone());
            }
            self.outputs.push(marker);
        }
    }

    pub fn truncated(&self) -> bool {
        self.dropped_bytes > 0 || self.dropped_outputs > 0
    }

    /// The exception, if the code raised one.
    pub fn error(&self) -> Option<&ErrorInfo> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::Error(e) => Some(e),
            _ => None,
        })
    }

    /// The original API's text: streams and `text/plain` results in order,
    /// ending with the traceback's `ename: evalue` for an exception.
    pub fn result_text(&self) -> String {
        let mut text = String::new();
        for output in &self.outputs {
            match output {
                Output::Stream { text: t, .. } => text.push_str(t),
                Output::ExecuteResult { data, .. } => {
                    if let Some(plain) = mime_str(data, "text/plain") {
                        push_line(&mut text, &plain);
                    }
                }
                Output::DisplayData { .. } => {}
                Output::Error(e) => {
                    let traceback = strip_ansi(&e.traceback.join("\n"));
                    let last = format!("{}: {}", e.ename, e.evalue);
                    if !traceback.trim().is_empty() {
                        push_line(&mut text, traceback.trim_end());
                    }
                    if traceback.trim_end().lines().last().map(str::trim) != Some(last.trim()) {
                        push_line(&mut text, &last);
                    }
                }
            }
        }
        text
    }

    /// The last PNG the code displayed, base64 as the kernel sent it.
    pub fn result_base64(&self) -> Option<String> {
        self.outputs.iter().rev().find_map(|o| match o {
            Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => {
                mime_str(data, "image/png").map(|b64| b64.split_whitespace().collect())
            }
            _ => None,
        })
    }
}

/// A copy of a stream output, to price a cut before making it (the name
/// counts too: a worker chooses it, and it may be long).
fn stream_of(name: &str, text: &str) -> Output {
    Output::Stream {
        name: name.to_string(),
        text: text.to_string(),
    }
}

/// A MIME type's data as a string, if it is one.
pub fn mime_str(data: &MimeBundle, mime: &str) -> Option<String> {
    serde_json::from_str::<String>(data.get(mime)?.get()).ok()
}

/// What an output costs against the cap: every byte it adds to the response
/// body. Its JSON in `outputs`; again in `result_text` (streams, `text/plain`),
/// `result_base64` (a PNG) and `error` + `result_text` (an error); and once
/// more as its own event when streaming. Raw JSON strings are at least as long
/// as their re-serialised form, so this never undercounts.
fn charge(output: &Output, streaming: bool) -> usize {
    let own = json_len(output);
    let derived = match output {
        Output::Stream { text, .. } => json_len(text),
        Output::ExecuteResult { data, .. } => {
            raw_len(data, "text/plain") + raw_len(data, "image/png")
        }
        Output::DisplayData { data, .. } => raw_len(data, "image/png"),
        Output::Error(_) => 2 * own,
    };
    own + derived + if streaming { own + 32 } else { 0 }
}

fn raw_len(data: &MimeBundle, mime: &str) -> usize {
    data.get(mime).map_or(0, |v| v.get().len())
}

/// Length of `value` serialised as JSON, without building the string.
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("outputs serialise");
    count.0
}

/// Appends `line` on a line of its own.
fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

/// Removes ANSI colour escapes (`ESC [ … letter`) that IPython puts in tracebacks.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn absorb(ex: &mut Execution, msg_type: &str, content: Value) {
        ex.absorb(msg_type, content.to_string().as_bytes(), None)
            .unwrap();
    }

    #[test]
    fn streams_merge_and_results_follow_in_order() {
        let mut ex = Execution::new(1 << 20, false);
        absorb(&mut ex, "stream", json!({"name": "stdout", "text": "a\n"}));
        absorb(&mut ex, "stream", json!({"name": "stdout", "text": "b\n"}));
        absorb(
            &mut ex,
            "execute_result",
            json!({"execution_count": 3, "data": {"text/plain": "42"}, "metadata": {}}),
        );
        absorb(&mut ex, "status", json!({"execution_state": "idle"}));
        assert_eq!(ex.outputs.len(), 2);
        assert_eq!(ex.result_text(), "a\nb\n42\n");
    }

    #[test]
    fn errors_end_with_ename_and_evalue() {
        let mut ex = Execution::new(1 << 20, false);
        absorb(
            &mut ex,
            "error",
            json!({"ename": "ZeroDivisionError", "evalue": "division by zero",
            "traceback": ["\u{1b}[0;31mTraceback\u{1b}[0m", "\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero"]}),
        );
        let text = ex.result_text();
        assert!(
            text.ends_with("ZeroDivisionError: division by zero\n"),
            "{text:?}"
        );
        assert!(!text.contains('\u{1b}'));
        assert_eq!(ex.error().unwrap().ename, "ZeroDivisionError");
    }

    #[test]
    fn the_last_png_is_the_result_image() {
        let mut ex = Execution::new(1 << 20, false);
        absorb(
            &mut ex,
            "display_data",
            json!({"data": {"image/png": "AAAA\n", "text/plain": "<Figure>"}, "metadata": {}}),
        );
        absorb(
            &mut ex,
            "display_data",
            json!({"data": {"image/png": "BBBB"}, "metadata": {}}),
        );
        assert_eq!(ex.result_base64().as_deref(), Some("BBBB"));
        assert_eq!(ex.result_text(), "");
    }

    #[test]
    fn output_past_the_cap_is_cut_with_a_marker() {
        let mut ex = Execution::new(ENVELOPE + 100, false);
        absorb(
            &mut ex,
            "stream",
            json!({"name": "stdout", "text": "0123456789".repeat(10)}),
        );
        absorb(
            &mut ex,
            "display_data",
            json!({"data": {"image/png": "BBBB"}, "metadata": {}}),
        );
        ex.finish(None);
        assert!(ex.truncated());
        assert_eq!(ex.outputs.len(), 2);
        let text = ex.result_text();
        assert!(text.starts_with("0123456789"), "{text}");
        assert!(
            text.contains("[code-interpreter: output truncated"),
            "{text}"
        );
        assert!(ex.charged <= 100, "{}", ex.charged);
    }

    #[test]
    fn metadata_names_and_tracebacks_count_against_the_cap() {
        let cap = ENVELOPE + 64 * 1024;
        let mut ex = Execution::new(cap, false);
        let pad = "A".repeat(20 * 1024);
        for _ in 0..10 {
            absorb(
                &mut ex,
                "display_data",
                json!({"data": {"text/plain": "1"}, "metadata": {"pad": pad}}),
            );
        }
        assert_eq!(ex.outputs.len(), 3, "three 20 KiB outputs fit in 64 KiB");
        absorb(
            &mut ex,
            "error",
            json!({"ename": "E", "evalue": "v", "traceback": [pad]}),
        );
        absorb(&mut ex, "stream", json!({"name": pad, "text": ""}));
        assert!(ex.truncated());
        assert!(ex.charged <= cap - ENVELOPE);
    }

    #[test]
    fn a_body_stays_within_the_cap_whatever_is_sent() {
        let cap = ENVELOPE + 256 * 1024;
        for streaming in [false, true] {
            let mut ex = Execution::new(cap, streaming);
            for i in 0..400 {
                let text = format!("{i}\u{1}\"\\").repeat(300);
                absorb(&mut ex, "stream", json!({"name": "stdout", "text": text}));
                absorb(
                    &mut ex,
                    "execute_result",
                    json!({"data": {"text/plain": text, "image/png": text}, "metadata": {"m": text}}),
                );
                absorb(
                    &mut ex,
                    "error",
                    json!({"ename": text, "evalue": "", "traceback": [text]}),
                );
            }
            ex.finish(None);
            let body = json!({
                "result_text": ex.result_text(),
                "result_base64": ex.result_base64(),
                "outputs": ex.outputs,
                "error": ex.error(),
            });
            let size = body.to_string().len();
            assert!(
                size <= cap,
                "streaming {streaming}: body {size} > cap {cap}"
            );
            assert!(ex.truncated());
        }
    }

    #[test]
    fn a_cut_stream_with_a_long_name_stays_within_the_cap() {
        let cap = ENVELOPE + 64 * 1024;
        for streaming in [false, true] {
            let mut ex = Execution::new(cap, streaming);
            let name = "n".repeat(16 * 1024);
            let text = "t".repeat(256 * 1024);
            absorb(&mut ex, "stream", json!({"name": name, "text": text}));
            assert!(ex.truncated());
            assert_eq!(ex.outputs.len(), 1, "the head is kept");
            assert!(
                ex.charged <= cap - ENVELOPE,
                "streaming {streaming}: {}",
                ex.charged
            );
        }
    }

    #[test]
    fn the_number_of_outputs_is_capped() {
        let mut ex = Execution::new(64 << 20, false);
        for _ in 0..MAX_OUTPUTS + 5 {
            absorb(&mut ex, "display_data", json!({"data": {}, "metadata": {}}));
        }
        assert_eq!(ex.outputs.len(), MAX_OUTPUTS);
        assert!(ex.truncated());
    }

    #[test]
    fn malformed_content_is_an_error() {
        let mut ex = Execution::new(1 << 20, false);
        assert!(ex.absorb("stream", b"{\"text\": 5}", None).is_err());
        assert!(ex.absorb("display_data", b"[1,2]", None).is_err());
        assert!(ex.absorb("error", b"not json", None).is_err());
        assert!(
            ex.absorb("status", b"not json", None).is_ok(),
            "not output: ignored"
        );
    }
}

//! Collects what one execution produced, in order, and derives the original
//! API's `result_text` and `result_base64` from it.
//!
//! Output is capped: past `max_bytes` further output is dropped and a marker
//! says so, which bounds the gateway's memory whatever the user's code prints.

use serde::Serialize;
use serde_json::{Map, Value};

use super::client::OutputSink;

/// One output of an execution, in the order the kernel produced it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    /// Text written to stdout or stderr.
    Stream { name: String, text: String },
    /// The value of the last expression, in every MIME type the kernel sent.
    ExecuteResult {
        execution_count: Option<i64>,
        data: Map<String, Value>,
        metadata: Value,
    },
    /// Something displayed (a plot, an HTML table…), in every MIME type sent.
    DisplayData {
        data: Map<String, Value>,
        metadata: Value,
    },
    /// An uncaught exception.
    Error(ErrorInfo),
}

/// An uncaught Python exception.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorInfo {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

/// Everything one execution produced.
#[derive(Debug, Clone, Default)]
pub struct Execution {
    pub outputs: Vec<Output>,
    /// `execute_reply`'s status: "ok", "error" or "aborted".
    pub status: String,
    pub execution_count: Option<i64>,
    /// Bytes of output kept so far.
    kept_bytes: usize,
    /// Bytes dropped because of the cap.
    dropped_bytes: usize,
    max_bytes: usize,
}

impl Execution {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }

    /// Takes one IOPub message of this execution; ignores types that are not
    /// output. What is kept is also sent to `sink`, if any.
    pub fn absorb(&mut self, msg_type: &str, content: &Value, sink: Option<&OutputSink>) {
        let output = match msg_type {
            "stream" => Output::Stream {
                name: str_field(content, "name"),
                text: str_field(content, "text"),
            },
            "execute_result" => Output::ExecuteResult {
                execution_count: content["execution_count"].as_i64(),
                data: object_field(content, "data"),
                metadata: content["metadata"].clone(),
            },
            "display_data" | "update_display_data" => Output::DisplayData {
                data: object_field(content, "data"),
                metadata: content["metadata"].clone(),
            },
            "error" => Output::Error(ErrorInfo {
                ename: str_field(content, "ename"),
                evalue: str_field(content, "evalue"),
                traceback: content["traceback"]
                    .as_array()
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| l.as_str())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            "clear_output" => {
                self.outputs.clear();
                return;
            }
            _ => return,
        };
        if let Some(kept) = self.push(output, sink.is_some()) {
            if let Some(sink) = sink {
                let _ = sink.send(kept);
            }
        }
    }

    /// Keeps `output` within the cap; returns a copy of what was kept when asked.
    fn push(&mut self, mut output: Output, copy: bool) -> Option<Output> {
        let size = output_size(&output);
        let room = self.max_bytes.saturating_sub(self.kept_bytes);
        if size > room {
            // Keep the head of an oversized stream; drop anything else whole.
            match &mut output {
                Output::Stream { text, .. } if room > 0 => {
                    let mut cut = room.min(text.len());
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.dropped_bytes += text.len() - cut;
                    text.truncate(cut);
                }
                _ => {
                    self.dropped_bytes += size;
                    return None;
                }
            }
        }
        self.kept_bytes += output_size(&output);
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

    /// Adds the truncation marker, if anything was dropped (also to `sink`).
    /// Call once, at the end.
    pub fn finish(&mut self, sink: Option<&OutputSink>) {
        if self.dropped_bytes > 0 {
            let marker = Output::Stream {
                name: "stderr".into(),
                text: format!(
                    "\n[code-interpreter: output truncated, {} bytes dropped (limit {} bytes)]\n",
                    self.dropped_bytes, self.max_bytes
                ),
            };
            if let Some(sink) = sink {
                let _ = sink.send(marker.clone());
            }
            self.outputs.push(marker);
        }
    }

    pub fn truncated(&self) -> bool {
        self.dropped_bytes > 0
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
                    if let Some(plain) = data.get("text/plain").and_then(Value::as_str) {
                        push_line(&mut text, plain);
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
            Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => data
                .get("image/png")
                .and_then(Value::as_str)
                .map(|b64| b64.split_whitespace().collect()),
            _ => None,
        })
    }
}

/// Appends `line` on a line of its own.
fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

fn str_field(content: &Value, key: &str) -> String {
    content[key].as_str().unwrap_or_default().to_string()
}

fn object_field(content: &Value, key: &str) -> Map<String, Value> {
    content[key].as_object().cloned().unwrap_or_default()
}

/// Approximate bytes an output holds (its text and MIME payloads).
fn output_size(output: &Output) -> usize {
    match output {
        Output::Stream { text, .. } => text.len(),
        Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => {
            data.values().map(|v| v.to_string().len()).sum()
        }
        Output::Error(e) => {
            e.ename.len() + e.evalue.len() + e.traceback.iter().map(String::len).sum::<usize>()
        }
    }
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
    use serde_json::json;

    #[test]
    fn streams_merge_and_results_follow_in_order() {
        let mut ex = Execution::new(1 << 20);
        ex.absorb("stream", &json!({"name": "stdout", "text": "a\n"}), None);
        ex.absorb("stream", &json!({"name": "stdout", "text": "b\n"}), None);
        ex.absorb(
            "execute_result",
            &json!({"execution_count": 3, "data": {"text/plain": "42"}, "metadata": {}}),
            None,
        );
        ex.absorb("status", &json!({"execution_state": "idle"}), None);
        assert_eq!(ex.outputs.len(), 2);
        assert_eq!(ex.result_text(), "a\nb\n42\n");
    }

    #[test]
    fn errors_end_with_ename_and_evalue() {
        let mut ex = Execution::new(1 << 20);
        ex.absorb("error", &json!({"ename": "ZeroDivisionError", "evalue": "division by zero",
            "traceback": ["\u{1b}[0;31mTraceback\u{1b}[0m", "\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero"]}), None);
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
        let mut ex = Execution::new(1 << 20);
        ex.absorb(
            "display_data",
            &json!({"data": {"image/png": "AAAA\n", "text/plain": "<Figure>"}, "metadata": {}}),
            None,
        );
        ex.absorb(
            "display_data",
            &json!({"data": {"image/png": "BBBB"}, "metadata": {}}),
            None,
        );
        assert_eq!(ex.result_base64().as_deref(), Some("BBBB"));
        assert_eq!(ex.result_text(), "");
    }

    #[test]
    fn output_past_the_cap_is_cut_with_a_marker() {
        let mut ex = Execution::new(10);
        ex.absorb(
            "stream",
            &json!({"name": "stdout", "text": "0123456789abcdef"}),
            None,
        );
        ex.absorb(
            "display_data",
            &json!({"data": {"image/png": "BBBB"}, "metadata": {}}),
            None,
        );
        ex.finish(None);
        assert!(ex.truncated());
        assert_eq!(ex.outputs.len(), 2);
        assert!(ex
            .result_text()
            .starts_with("0123456789\n[code-interpreter: output truncated"));
    }
}

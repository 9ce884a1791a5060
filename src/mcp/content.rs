//! What an execution becomes in MCP: every output, in order, as tool content.
//!
//! Text (stdout, stderr, `text/plain` results) becomes text content, PNG and
//! JPEG images become image content, and an exception becomes its traceback
//! with `isError` set. A failure of the session (timeout, dead kernel,
//! capacity) is an `isError` result too, whose text says what happened and
//! what the next call will find, so that an agent can act on it.

use rmcp::model::{CallToolResult, ContentBlock};

use crate::api::ApiError;
use crate::kernel::outputs::{mime_str, strip_ansi, Execution, MimeBundle, Output};
use crate::sessions::SessionError;

/// Image types sent as MCP image content, most preferred first.
const IMAGE_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

/// The tool result of a finished execution. `fresh_note` prepends a line
/// saying that earlier state is gone (the call started a new session after
/// the MCP session had already run code).
pub fn executed(execution: &Execution, fresh_note: bool) -> CallToolResult {
    let mut content = Vec::new();
    if fresh_note {
        content.push(ContentBlock::text(
            "[note: this call started a fresh Python session (the previous one was reset, \
             released or idled out): earlier variables, imports and files are gone]",
        ));
    }
    for output in &execution.outputs {
        content.extend(output_content(output));
    }
    let failed = execution.status != "ok";
    if content.is_empty() {
        content.push(ContentBlock::text(if failed {
            format!("(no output; status {})", execution.status)
        } else {
            "(no output)".to_string()
        }));
    }
    if failed {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    }
}

/// One output as MCP content: nothing for a bundle with neither an image nor text.
pub fn output_content(output: &Output) -> Option<ContentBlock> {
    match output {
        Output::Stream { name, text } if name == "stderr" => {
            Some(ContentBlock::text(format!("[stderr]\n{text}")))
        }
        Output::Stream { text, .. } => Some(ContentBlock::text(text.clone())),
        Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => bundle(data),
        Output::Error(error) => {
            let traceback = strip_ansi(&error.traceback.join("\n"));
            let last = format!("{}: {}", error.ename, error.evalue);
            let text = if traceback.trim().is_empty() {
                last
            } else if traceback.trim_end().ends_with(last.trim()) {
                traceback.trim_end().to_string()
            } else {
                format!("{}\n{last}", traceback.trim_end())
            };
            Some(ContentBlock::text(text))
        }
    }
}

/// A MIME bundle's image, else its `text/plain`.
fn bundle(data: &MimeBundle) -> Option<ContentBlock> {
    for mime in IMAGE_TYPES {
        if let Some(b64) = mime_str(data, mime) {
            // Kernels may wrap base64 in lines; MCP wants it plain.
            let b64: String = b64.split_whitespace().collect();
            return Some(ContentBlock::image(b64, mime));
        }
    }
    mime_str(data, "text/plain").map(ContentBlock::text)
}

/// A short line for a progress notification: the text of a stream, else
/// what kind of output arrived.
pub fn progress_message(output: &Output) -> String {
    match output {
        Output::Stream { text, .. } => text.clone(),
        Output::Error(error) => format!("{}: {}", error.ename, error.evalue),
        Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => {
            match IMAGE_TYPES.iter().find(|mime| data.contains_key(**mime)) {
                Some(mime) => format!("[{mime} image]"),
                None => mime_str(data, "text/plain").unwrap_or_else(|| "[display]".into()),
            }
        }
    }
}

/// The `isError` result of a failure, with the API's wording and, when the
/// session was reset, what that means for the next call.
pub fn failure(error: ApiError) -> CallToolResult {
    let mut text = error.detail;
    if !text.ends_with('.') {
        text.push('.');
    }
    if error.session_reset {
        text.push_str(
            " The next call starts a fresh Python session: variables, imports and files \
             of the old one are gone.",
        );
    }
    if let Some(seconds) = error.retry_after {
        text.push_str(&format!(" Retry in about {seconds} s."));
    }
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// [`failure`] of a session error.
pub fn session_failure(error: SessionError) -> CallToolResult {
    failure(ApiError::from(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn absorbed(messages: &[(&str, Value)], status: &str) -> Execution {
        let mut execution = Execution::new(1 << 20, false);
        for (kind, content) in messages {
            execution
                .absorb(kind, content.to_string().as_bytes(), None)
                .unwrap();
        }
        execution.status = status.into();
        execution
    }

    fn json_of(result: &CallToolResult) -> Value {
        serde_json::to_value(result).unwrap()
    }

    #[test]
    fn outputs_become_content_in_order() {
        let execution = absorbed(
            &[
                ("stream", json!({"name": "stdout", "text": "hi\n"})),
                ("stream", json!({"name": "stderr", "text": "careful\n"})),
                (
                    "display_data",
                    json!({"data": {"image/png": "iVBO\nRw==", "text/plain": "<Figure>"}, "metadata": {}}),
                ),
                (
                    "execute_result",
                    json!({"execution_count": 1, "data": {"text/plain": "2"}, "metadata": {}}),
                ),
            ],
            "ok",
        );
        let result = json_of(&executed(&execution, false));
        assert_eq!(result["isError"], false);
        let content = result["content"].as_array().unwrap();
        assert_eq!(content[0], json!({"type": "text", "text": "hi\n"}));
        assert_eq!(
            content[1],
            json!({"type": "text", "text": "[stderr]\ncareful\n"})
        );
        assert_eq!(
            content[2],
            json!({"type": "image", "data": "iVBORw==", "mimeType": "image/png"})
        );
        assert_eq!(content[3], json!({"type": "text", "text": "2"}));
    }

    #[test]
    fn an_exception_is_an_error_result_with_its_traceback() {
        let execution = absorbed(
            &[(
                "error",
                json!({"ename": "ZeroDivisionError", "evalue": "division by zero",
                       "traceback": ["\u{1b}[0;31mTraceback\u{1b}[0m", "ZeroDivisionError: division by zero"]}),
            )],
            "error",
        );
        let result = json_of(&executed(&execution, true));
        assert_eq!(result["isError"], true);
        let content = result["content"].as_array().unwrap();
        assert!(content[0]["text"].as_str().unwrap().contains("fresh"));
        assert_eq!(
            content[1]["text"],
            "Traceback\nZeroDivisionError: division by zero"
        );
    }

    #[test]
    fn silence_still_says_something() {
        let result = json_of(&executed(&absorbed(&[], "ok"), false));
        assert_eq!(result["content"][0]["text"], "(no output)");
    }

    #[test]
    fn a_timeout_says_the_session_was_reset() {
        let result = json_of(&session_failure(SessionError::Timeout(
            std::time::Duration::from_secs(2),
        )));
        assert_eq!(result["isError"], true);
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("2.0 s timeout; the session was reset"),
            "{text}"
        );
        assert!(text.contains("fresh Python session"), "{text}");
        let full = json_of(&session_failure(SessionError::Full));
        assert!(full["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Retry in about 5 s"));
    }
}

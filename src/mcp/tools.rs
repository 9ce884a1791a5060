//! The tools an agent sees, and the handler rmcp runs for each MCP session.
//!
//! One [`Sandbox`] is made per MCP session. Its tools act on one sandbox
//! session of the same session table the REST API uses: by default the one
//! named after the `Mcp-Session-Id` (`mcp-<id>`), released when the MCP
//! session ends; or, when the client passes `user_uuid` (as an argument or
//! the `X-User-UUID` header), that user's, shared with the REST API and left
//! to its own lifecycle.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::content;
use crate::api::files::{fetch, listing, store, work_relative};
use crate::api::models::{validate_user, ExecuteRequest};
use crate::api::{ApiError, AppState};
use crate::kernel::outputs::Output;
use crate::sessions::SessionError;

/// The header that names a sandbox session explicitly (shared with the REST API).
pub const USER_HEADER: &str = "x-user-uuid";
/// Prefix of the sandbox user an MCP session gets by default.
const USER_PREFIX: &str = "mcp-";

/// Protocol revisions offered: the ones with the `initialize` handshake and
/// `Mcp-Session-Id`. 2026-07-28 removed sessions (SEP-2567), and a stateful
/// kernel per MCP session needs them; clients of that revision fall back to
/// the handshake when the server does not list it.
pub fn protocol_versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25)
}

const INSTRUCTIONS: &str = "A stateful Python sandbox (IPython kernel with numpy, pandas, \
    matplotlib, scipy, scikit-learn…). Variables, imports and files persist between calls \
    of this MCP session. Files live in the work directory /sandbox, which is also the code's \
    current directory. There is no network access.";

const EXECUTE: &str = "Run Python code in this session's IPython kernel and return every \
    output in order: stdout and stderr text, the value of the last expression, and images \
    (matplotlib figures are returned as PNG images; call plt.show() or end with the figure). \
    State persists between calls: variables, imports and functions defined earlier are still \
    there. An exception is returned as an error result with its traceback; the session stays \
    intact. If the code runs past its timeout the session is reset (all state lost). \
    The working directory is /sandbox, where list_files, read_file and write_file act.";
const LIST: &str = "List the files in the session's work directory /sandbox (recursively; \
    hidden files left out), with their size in bytes and modification time.";
const READ: &str = "Read a file from the session's work directory /sandbox. Text (UTF-8) \
    comes back as text, anything else as base64 (or ask for encoding \"base64\").";
const WRITE: &str = "Write a file into the session's work directory /sandbox (created or \
    replaced; parent directories are created). The code can then open it by its path, e.g. \
    pd.read_csv(\"data.csv\"). Pass encoding \"base64\" for binary content.";
const RESET: &str = "End this Python session: its kernel and files are discarded, and the \
    next call starts a fresh one. Use it to start over from a clean state.";

/// Arguments of `execute_python`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ExecuteArgs {
    /// The Python code to run (several lines are fine; the value of the last line is returned).
    pub code: String,
    /// Seconds the code may run (lowers the server's limit, never raises it).
    /// Past it the session is reset.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Only to share a session with the REST API: its user_uuid. Leave it out otherwise.
    #[serde(default)]
    pub user_uuid: Option<String>,
}

/// Arguments of `list_files` and `reset_session`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// Only to share a session with the REST API: its user_uuid. Leave it out otherwise.
    #[serde(default)]
    pub user_uuid: Option<String>,
}

/// How file content is written in a tool's arguments or result.
#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[schemars(crate = "rmcp::schemars")]
pub enum Encoding {
    /// Text, stored as UTF-8.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Bytes, as standard base64.
    #[serde(rename = "base64")]
    Base64,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// Path relative to /sandbox (e.g. "data.csv", "out/plot.png") or absolute under /sandbox.
    pub path: String,
    /// "utf-8" or "base64"; by default text when the file is UTF-8, else base64.
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// Only to share a session with the REST API: its user_uuid. Leave it out otherwise.
    #[serde(default)]
    pub user_uuid: Option<String>,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// Path relative to /sandbox (e.g. "data.csv") or absolute under /sandbox.
    pub path: String,
    /// The file's content: text, or base64 when encoding is "base64".
    pub content: String,
    /// "utf-8" (the default) or "base64".
    #[serde(default)]
    pub encoding: Option<Encoding>,
    /// Only to share a session with the REST API: its user_uuid. Leave it out otherwise.
    #[serde(default)]
    pub user_uuid: Option<String>,
}

/// Every tool, with its schema and annotations.
pub fn tools() -> Vec<Tool> {
    let annotations = |read_only: bool, destructive: bool, idempotent: bool| {
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(destructive)
            .idempotent(idempotent)
            .open_world(false)
    };
    vec![
        Tool::new("execute_python", EXECUTE, input::<ExecuteArgs>())
            .with_title("Run Python")
            .annotate(annotations(false, false, false)),
        Tool::new("list_files", LIST, input::<SessionArgs>())
            .with_title("List files")
            .annotate(annotations(true, false, true)),
        Tool::new("read_file", READ, input::<ReadArgs>())
            .with_title("Read a file")
            .annotate(annotations(true, false, true)),
        Tool::new("write_file", WRITE, input::<WriteArgs>())
            .with_title("Write a file")
            .annotate(annotations(false, true, true)),
        Tool::new("reset_session", RESET, input::<SessionArgs>())
            .with_title("Reset the session")
            .annotate(annotations(false, true, true)),
    ]
}

fn input<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::common::schema_for_type::<T>()
}

/// The handler of one MCP session.
pub struct Sandbox {
    state: Arc<AppState>,
    /// The sandbox session this MCP session owns; released when it ends.
    own: Arc<Owned>,
    /// Set once `execute_python` ran in this MCP session (for the "fresh session" note).
    ran: AtomicBool,
}

/// The MCP session's own sandbox user, known from its first tool call.
struct Owned {
    state: Arc<AppState>,
    user: Mutex<Option<String>>,
    /// Cancelled when the gateway shuts down: sessions are then kept for the next start.
    stopping: CancellationToken,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let user = self.user.lock().unwrap().take();
        if let Some(user) = user {
            if !self.stopping.is_cancelled() && self.state.sessions.release(&user) {
                tracing::info!("MCP session ended; its sandbox session was released");
            }
        }
    }
}

impl Sandbox {
    pub fn new(state: Arc<AppState>, stopping: CancellationToken) -> Self {
        Self {
            own: Arc::new(Owned {
                state: Arc::clone(&state),
                user: Mutex::new(None),
                stopping,
            }),
            state,
            ran: AtomicBool::new(false),
        }
    }

    /// The sandbox user of a call: the argument, else the header, else the
    /// MCP session's own (`mcp-<Mcp-Session-Id>`, or random without one).
    fn user(
        &self,
        argument: Option<String>,
        context: &RequestContext<RoleServer>,
    ) -> Result<String, CallToolResult> {
        let parts = context.extensions.get::<http::request::Parts>();
        let header = |name: &str| {
            parts
                .and_then(|p| p.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(user) = argument.or_else(|| header(USER_HEADER)) {
            validate_user(&user).map_err(|e| content::failure(ApiError::bad_request(e)))?;
            return Ok(user);
        }
        let mut own = self.own.user.lock().unwrap();
        let user = own.get_or_insert_with(|| {
            let id = header("mcp-session-id").unwrap_or_else(|| crate::random::hex(16));
            format!("{USER_PREFIX}{id}")
        });
        Ok(user.clone())
    }

    async fn execute(
        &self,
        args: ExecuteArgs,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, CallToolResult> {
        let user = self.user(args.user_uuid, &context)?;
        let request = ExecuteRequest {
            user_uuid: Some(user),
            code: args.code,
            timeout: args.timeout,
        };
        let (user, timeout) =
            crate::api::execute::prepare(&self.state, None, &request).map_err(content::failure)?;
        let (sink, outputs) = mpsc::unbounded_channel::<Output>();
        let state = Arc::clone(&self.state);
        // Detached, as /execute does: the kernel is never left half-read.
        let execution = tokio::spawn(async move {
            state
                .sessions
                .execute(&user, &request.code, timeout, Some(sink))
                .await
        });
        let cancelled = relay(outputs, &context).await;
        let outcome = execution.await.unwrap_or_else(|e| {
            Err(SessionError::KernelFailed(format!(
                "execution task failed: {e}"
            )))
        });
        let ran_before = self.ran.swap(true, Ordering::SeqCst);
        let outcome = outcome.map_err(content::session_failure)?;
        let mut result =
            content::executed(&outcome.execution, outcome.session_created && ran_before);
        if cancelled {
            result.content.insert(
                0,
                ContentBlock::text("[cancelled: the code was interrupted; the session is kept]"),
            );
        }
        Ok(result)
    }

    async fn list(
        &self,
        args: SessionArgs,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, CallToolResult> {
        let user = self.user(args.user_uuid, &context)?;
        let files = match listing(&self.state, &user).await {
            Ok(files) => files,
            Err(e) if e.status == http::StatusCode::NOT_FOUND => serde_json::json!([]),
            Err(e) => return Err(content::failure(e)),
        };
        let count = files.as_array().map_or(0, Vec::len);
        let text = if count == 0 {
            "No files in /sandbox.".to_string()
        } else {
            serde_json::to_string_pretty(&files).expect("JSON serialises")
        };
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(serde_json::json!({ "files": files }));
        Ok(result)
    }

    async fn read(
        &self,
        args: ReadArgs,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, CallToolResult> {
        let user = self.user(args.user_uuid, &context)?;
        let path = relative(&args.path)?;
        let bytes = fetch(&self.state, &user, &path).await.map_err(|e| {
            if e.status == http::StatusCode::NOT_FOUND {
                content::failure(ApiError::new(
                    e.status,
                    format!("{}: no such file in /sandbox ({})", args.path, e.detail),
                ))
            } else {
                content::failure(e)
            }
        })?;
        let size = bytes.len();
        let (encoding, text) = match (args.encoding, String::from_utf8(bytes)) {
            (Some(Encoding::Base64), Ok(text)) => ("base64", b64(text.as_bytes())),
            (_, Ok(text)) => ("utf-8", text),
            (Some(Encoding::Utf8), Err(_)) => {
                return Err(content::failure(ApiError::bad_request(format!(
                    "{}: the file is not UTF-8 text; read it with encoding \"base64\"",
                    args.path
                ))))
            }
            (_, Err(e)) => ("base64", b64(e.as_bytes())),
        };
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(serde_json::json!({
            "path": format!("/sandbox/{path}"),
            "size": size,
            "encoding": encoding,
        }));
        Ok(result)
    }

    async fn write(
        &self,
        args: WriteArgs,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, CallToolResult> {
        let user = self.user(args.user_uuid, &context)?;
        let path = relative(&args.path)?;
        let bytes = match args.encoding.unwrap_or(Encoding::Utf8) {
            Encoding::Utf8 => args.content.into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(args.content.trim())
                .map_err(|e| {
                    content::failure(ApiError::bad_request(format!(
                        "content is not valid base64: {e}"
                    )))
                })?,
        };
        let body =
            futures_util::stream::once(
                async move { Ok::<_, warp::Error>(bytes::Bytes::from(bytes)) },
            );
        let size = store(&self.state, &user, &path, body)
            .await
            .map_err(content::failure)?;
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "wrote {size} bytes to /sandbox/{path}"
        ))]))
    }

    fn reset(
        &self,
        args: SessionArgs,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, CallToolResult> {
        let user = self.user(args.user_uuid, &context)?;
        let text = if self.state.sessions.release(&user) {
            "The session was released: its kernel and files are gone. The next call starts a \
             fresh session."
        } else {
            "There was no running session; the next call starts a fresh one."
        };
        // The next session is fresh by request: no note for it.
        self.ran.store(false, Ordering::SeqCst);
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }
}

/// Sends each output as a progress notification (when the client asked for
/// progress) until the execution ends, or until the request is cancelled:
/// then the outputs' receiver is dropped, which interrupts the kernel as a
/// hang-up does on `/execute/stream`. Returns whether it was cancelled.
async fn relay(
    mut outputs: mpsc::UnboundedReceiver<Output>,
    context: &RequestContext<RoleServer>,
) -> bool {
    let token = context.meta.get_progress_token();
    let mut progress = 0.0;
    loop {
        tokio::select! {
            output = outputs.recv() => {
                let Some(output) = output else { return false };
                if let Some(token) = &token {
                    progress += 1.0;
                    let note = ProgressNotificationParam::new(token.clone(), progress)
                        .with_message(content::progress_message(&output));
                    // A client that went away is not an error of the execution.
                    let _ = context.peer.notify_progress(note).await;
                }
            }
            () = context.ct.cancelled() => {
                drop(outputs);
                return true;
            }
        }
    }
}

/// A checked path relative to the work directory.
fn relative(path: &str) -> Result<String, CallToolResult> {
    work_relative(path)
        .map(str::to_string)
        .map_err(|e| content::failure(ApiError::bad_request(format!("{path}: {e}"))))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A tool's arguments, or an MCP invalid-params error saying what is wrong.
fn arguments<T: DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, ErrorData> {
    let value = serde_json::Value::Object(arguments.unwrap_or_default());
    serde_json::from_value(value)
        .map_err(|e| ErrorData::invalid_params(format!("{tool}: {e}"), None))
}

impl ServerHandler for Sandbox {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("code-interpreter", env!("CARGO_PKG_VERSION"))
                    .with_title("Python sandbox"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(protocol_versions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let given = request.arguments;
        let result = match name {
            "execute_python" => self.execute(arguments(name, given)?, context).await,
            "list_files" => self.list(arguments(name, given)?, context).await,
            "read_file" => self.read(arguments(name, given)?, context).await,
            "write_file" => self.write(arguments(name, given)?, context).await,
            "reset_session" => self.reset(arguments(name, given)?, context),
            _ => {
                return Err(ErrorData::invalid_params(
                    format!("no tool named {name:?}"),
                    None,
                ))
            }
        };
        Ok(result.unwrap_or_else(|failure| failure).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema_and_a_description() {
        let tools = tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "execute_python",
                "list_files",
                "read_file",
                "write_file",
                "reset_session"
            ]
        );
        for tool in &tools {
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            assert!(tool.description.as_ref().unwrap().len() > 40);
        }
        let execute = serde_json::Value::Object((*tools[0].input_schema).clone());
        assert_eq!(execute["required"], serde_json::json!(["code"]));
        assert!(execute["properties"]["timeout"]["description"]
            .as_str()
            .unwrap()
            .contains("Seconds"));
    }

    #[test]
    fn bad_arguments_are_invalid_params() {
        let missing: Result<ExecuteArgs, _> = arguments("execute_python", None);
        assert!(missing.unwrap_err().message.contains("code"));
        let mut extra = JsonObject::new();
        extra.insert("code".into(), "1".into());
        extra.insert("cod".into(), "1".into());
        assert!(arguments::<ExecuteArgs>("execute_python", Some(extra)).is_err());
        let mut encoding = JsonObject::new();
        encoding.insert("path".into(), "a".into());
        encoding.insert("content".into(), "a".into());
        encoding.insert("encoding".into(), "latin-1".into());
        assert!(arguments::<WriteArgs>("write_file", Some(encoding)).is_err());
    }

    #[test]
    fn only_handshake_revisions_are_offered() {
        let versions = protocol_versions();
        assert!(versions.contains(&ProtocolVersion::V_2025_11_25));
        assert!(!versions.contains(&ProtocolVersion::V_2026_07_28));
    }
}

//! Request and response bodies of the HTTP API (serde types only).

use serde::{Deserialize, Serialize};

use crate::kernel::outputs::{ErrorInfo, Output};
use crate::sessions::Outcome;

/// Longest accepted `user_uuid`, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// `POST /execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// May be given in the query string instead (see [`resolve_user`]).
    pub user_uuid: Option<String>,
    pub code: String,
    /// Seconds; may lower the configured hard timeout, never raise it.
    pub timeout: Option<f64>,
}

/// `POST /release`; an empty body is an empty object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// May be given in the query string instead (see [`resolve_user`]).
    pub user_uuid: Option<String>,
}

/// The query string of `/execute` and `/release`: the original's later
/// clients send `user_uuid` there. Other parameters are ignored.
#[derive(Debug, Deserialize)]
pub struct UserQuery {
    pub user_uuid: Option<String>,
}

/// The answer to a completed execution (also when the code raised).
#[derive(Debug, Serialize)]
pub struct ExecuteResponse {
    /// Streams and `text/plain` results in order, as the original API returned.
    pub result_text: String,
    /// The last PNG displayed, base64; null when none.
    pub result_base64: Option<String>,
    /// "ok", or "error" when the code raised (the session is intact).
    pub status: String,
    pub outputs: Vec<Output>,
    pub error: Option<ErrorInfo>,
    pub execution_count: Option<i64>,
    pub duration_ms: u64,
    /// True when this request ran in a fresh kernel.
    pub session_created: bool,
    /// True when output past the configured cap was dropped.
    pub output_truncated: bool,
}

impl From<Outcome> for ExecuteResponse {
    fn from(outcome: Outcome) -> Self {
        let execution = outcome.execution;
        Self {
            result_text: execution.result_text(),
            result_base64: execution.result_base64(),
            status: if execution.status == "ok" {
                "ok"
            } else {
                "error"
            }
            .into(),
            error: execution.error().cloned(),
            execution_count: execution.execution_count,
            duration_ms: outcome.duration.as_millis() as u64,
            session_created: outcome.session_created,
            output_truncated: execution.truncated(),
            outputs: execution.outputs,
        }
    }
}

/// `POST /release`'s answer.
#[derive(Debug, Serialize)]
pub struct ReleaseResponse {
    pub status: &'static str,
    pub detail: String,
}

/// The user from the body or the query string (both may be given if equal),
/// checked with [`validate_user`].
pub fn resolve_user(body: Option<String>, query: Option<String>) -> Result<String, String> {
    let user = match (body, query) {
        (Some(body), Some(query)) if body != query => {
            return Err("user_uuid differs between the body and the query string".into())
        }
        (Some(user), _) | (None, Some(user)) => user,
        (None, None) => {
            return Err("user_uuid is required (in the JSON body or the query string)".into())
        }
    };
    validate_user(&user)?;
    Ok(user)
}

/// Checks a `user_uuid`: non-empty, bounded, printable. It is only ever a map key.
pub fn validate_user(user: &str) -> Result<(), String> {
    if user.trim().is_empty() {
        return Err("user_uuid must not be empty".into());
    }
    if user.len() > MAX_USER_ID_BYTES {
        return Err(format!(
            "user_uuid must be at most {MAX_USER_ID_BYTES} bytes"
        ));
    }
    if user.chars().any(char::is_control) {
        return Err("user_uuid must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(validate_user("9b2c1a8e-6c1f-4d5e-8f00-0123456789ab").is_ok());
        assert!(
            validate_user("../../etc/passwd").is_ok(),
            "odd but harmless: only a map key"
        );
        assert!(validate_user("").is_err());
        assert!(validate_user("  ").is_err());
        assert!(validate_user("a\nb").is_err());
        assert!(validate_user(&"x".repeat(300)).is_err());
    }

    #[test]
    fn user_from_body_or_query() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(resolve_user(some("a"), None).unwrap(), "a");
        assert_eq!(resolve_user(None, some("b")).unwrap(), "b");
        assert_eq!(resolve_user(some("c"), some("c")).unwrap(), "c");
        assert!(resolve_user(some("a"), some("b")).is_err());
        assert!(resolve_user(None, None).is_err());
        assert!(resolve_user(None, some("")).is_err());
    }
}

//! `POST /execute/stream`: run code and stream each output as a server-sent
//! event while it runs, then a final `done` (what `/execute` would answer)
//! or `failed` (status code, detail, session_reset) event.
//!
//! When the client disconnects, the event stream is dropped, which closes the
//! execution's output sink: the kernel is interrupted, and destroyed if it
//! does not stop within 2 s.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use warp::reply::Response;
use warp::sse::Event;
use warp::Reply;

use super::errors::ApiError;
use super::execute::prepare;
use super::models::{ExecuteRequest, ExecuteResponse};
use super::AppState;
use crate::kernel::outputs::Output;
use crate::sessions::{Outcome, SessionError};

pub async fn handle(
    state: Arc<AppState>,
    query_user: Option<String>,
    request: ExecuteRequest,
) -> Result<Response, ApiError> {
    let (user, timeout) = prepare(&state, query_user, &request)?;
    let (sink, outputs) = mpsc::unbounded_channel::<Output>();
    let execution = tokio::spawn(async move {
        state
            .sessions
            .execute(&user, &request.code, timeout, Some(sink))
            .await
    });
    let events = output_events(outputs).chain(stream::once(async move {
        let outcome = execution.await.unwrap_or_else(|e| {
            Err(SessionError::KernelFailed(format!(
                "execution task failed: {e}"
            )))
        });
        Ok(final_event(outcome))
    }));
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response())
}

/// One event per output, named by its type, until the execution ends.
fn output_events(
    outputs: mpsc::UnboundedReceiver<Output>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(outputs, |mut outputs| async move {
        let output = outputs.recv().await?;
        let data = serde_json::to_string(&output).expect("outputs serialise");
        Some((
            Ok(Event::default().event(output.kind()).data(data)),
            outputs,
        ))
    })
}

fn final_event(outcome: Result<Outcome, SessionError>) -> Event {
    match outcome {
        Ok(outcome) => {
            let body = serde_json::to_string(&ExecuteResponse::from(outcome))
                .expect("responses serialise");
            Event::default().event("done").data(body)
        }
        Err(error) => {
            let error = ApiError::from(error);
            let body = json!({
                "status_code": error.status.as_u16(),
                "detail": error.detail,
                "session_reset": error.session_reset,
            });
            Event::default().event("failed").data(body.to_string())
        }
    }
}

//! Read-your-writes across a primary and its replicas (`--replica-of`). A pipeline's response
//! says where its namespace's log was once it ran (`x-libsql-wal-frame-no`: on a primary
//! its last commit, at or past the request's own writes; on a replica the primary's frame it
//! has applied up to). A request that names a frame (`x-libsql-wal-wait-frame-no`) runs on a
//! replica only once the replica has applied the primary's transactions up to it, waiting
//! up to `--max-request-duration` (then 503 `REPLICA_BEHIND`); a primary runs it at once (it
//! holds every commit it acknowledged).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::http::HttpError;
use crate::server::Shared;

/// Response header: the frame_no the namespace was at once the request ran.
pub const FRAME_NO: &str = "x-libsql-wal-frame-no";
/// Request header: run only once at or past this frame_no of the primary.
pub const WAIT_FRAME_NO: &str = "x-libsql-wal-wait-frame-no";

/// The frame_no a request asks to be served at or past, if any.
pub fn wanted(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(value) = headers.get(WAIT_FRAME_NO) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default();
    text.trim().parse().map(Some).map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "FRAME_NO_INVALID",
            format!("{WAIT_FRAME_NO}: expected a frame number (a decimal u64), got {text:?}"),
        )
    })
}

/// Where `namespace` is, in its primary's frame numbers (`None` if it cannot tell: no
/// database yet).
pub fn frame_no_now(shared: &Shared, namespace: &str) -> Option<u64> {
    let db = shared.dbs.path_of(namespace);
    if !db.exists() {
        return None;
    }
    let manager = shared.dbs.manager();
    let position = match shared.dbs.primary() {
        Some(_) => libsql_wal::replica_position(&db, manager).map(|p| p.frame_no),
        None => libsql_wal::last_commit_frame_no(&db, manager),
    };
    position.ok()
}

/// Waits (on a replica) until `namespace` has applied the primary's frames up to `frame_no`.
/// Asked every [`POLL`], holding nothing of the log between: a wait that held the log open
/// would keep the replica from starting again from an image (`replace_with_image` needs it
/// closed), and so from ever reaching the frame it waits for.
pub async fn wait(shared: &std::sync::Arc<Shared>, namespace: &str, frame_no: u64) -> Result<(), HttpError> {
    if shared.dbs.primary().is_none() {
        return Ok(());
    }
    let started = Instant::now();
    let limit = shared.limits.request_duration_max;
    loop {
        let (s, ns) = (shared.clone(), namespace.to_string());
        let now = tokio::task::spawn_blocking(move || frame_no_now(&s, &ns)).await.ok().flatten();
        if now.is_some_and(|now| now >= frame_no) {
            return Ok(());
        }
        let Some(left) = limit.checked_sub(started.elapsed()) else {
            return Err(behind(shared, now, frame_no, limit));
        };
        tokio::time::sleep(left.min(POLL)).await;
    }
}

/// How often a waiting request asks where the replica is.
const POLL: Duration = Duration::from_millis(2);

fn behind(shared: &Shared, now: Option<u64>, wanted: u64, waited: Duration) -> HttpError {
    let primary = shared.dbs.primary().unwrap_or("its primary");
    let at = now.map_or_else(|| "nothing yet".to_string(), |n| format!("frame {n}"));
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "REPLICA_BEHIND",
        format!(
            "this replica of {primary} has applied {at}; the request asked for frame {wanted} ({WAIT_FRAME_NO}) and \
             waited {waited:?} (--max-request-duration): retry, or send it to the primary"
        ),
    )
}

/// The response header naming `frame_no`.
pub fn header(frame_no: u64) -> (&'static str, HeaderValue) {
    (FRAME_NO, HeaderValue::from(frame_no))
}

//! `POST /admin/v1/backup` (admin role): a consistent copy of the data folder, taken while
//! the broker runs, answered as a tar stream (`application/x-tar`; `scopecast backup DIR`
//! unpacks and checks it). One backup at a time; a second one meanwhile gets 409.

use std::io;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::Caller;
use super::error::ApiError;
use crate::backup::create::{self, Sources};
use crate::state::Broker;

/// Bytes of tar stream collected before they are handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// `POST /admin/v1/backup`: 200 with the tar stream; 409 while another backup runs; 500 when
/// the copy cannot be taken (the broker's log says why; nothing is left behind).
pub(crate) async fn backup(
    State(state): State<Broker>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let Ok(permit) = state.backups.clone().try_acquire_owned() else {
        return ApiError::new(
            scopecast_protocol::Reason::Conflict,
            "a backup is being taken already: try again when it is done",
        )
        .into_response();
    };
    let inner = &state;
    let taken = match create::take(Sources {
        config: &inner.config,
        registry: &inner.registry,
        log: &inner.log,
        keys: inner.issuer.keys(),
        records: &inner.records,
    })
    .await
    {
        Ok(taken) => taken,
        Err(e) => {
            tracing::error!(actor = %caller.name, error = %e, "backup failed");
            return ApiError::new(
                scopecast_protocol::Reason::InternalError,
                "the backup failed; see the broker's log",
            )
            .into_response();
        }
    };
    let m = &taken.manifest;
    tracing::info!(
        actor = %caller.name,
        first_seq = m.first_seq,
        last_seq = m.last_seq,
        events = m.events,
        bytes = m.bytes(),
        "backup taken; sending it"
    );
    if let Err(e) = inner
        .registry
        .record(
            &caller.name,
            "backup.create",
            json!({"first_seq": m.first_seq, "last_seq": m.last_seq, "events": m.events,
                   "bytes": m.bytes(), "created_at": m.created_at}),
        )
        .await
    {
        tracing::error!(error = %e, "could not record the backup in the audit trail");
    }
    let file_name = format!(
        "attachment; filename=\"scopecast-backup-{}.tar\"",
        m.created_at.replace([':', '.'], "")
    );
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        // The permit and the folder go when the stream is written or abandoned.
        let _permit = permit;
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        if let Err(e) = create::write_tar(&taken, &mut out) {
            tracing::warn!(error = %e, "backup stream not finished");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&file_name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Hands what is written to the response body in chunks of [`CHUNK_BYTES`], waiting while the
/// connection is behind (the channel holds a few chunks).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client stopped reading the backup",
            )
        })
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

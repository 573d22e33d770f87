//! The operator's way into a running gateway: a Unix socket in the spool directory
//! (`admin.sock`, mode 0600), so that only someone who can reach the spool on this machine can
//! use it, and nothing on the callback listener leads to it. `hookbus spool requeue` talks to it
//! while the gateway holds the spool. One request line, one answer line:
//!
//! - `requeue all` or `requeue ID…`: dead letters back into the outbox, with their ids;
//!   answered `requeued N` or `error: …`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::outbox::Outbox;

/// The socket's file name in a spool directory.
pub const SOCKET: &str = "admin.sock";
/// Longest request line read.
const MAX_LINE: u64 = 1 << 20;

/// The socket being served; dropping it stops serving and removes the file.
pub struct Admin {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the admin socket of the spool directory `dir` (whose lock this gateway holds, so a
/// socket file left there is a dead gateway's). `None`, logged, when it cannot be bound.
pub fn serve(dir: &Path, outbox: Arc<Outbox>) -> Option<Admin> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let bound = UnixListener::bind(&path).and_then(|listener| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map(|()| listener)
    });
    let listener = match bound {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot serve the admin socket; `hookbus spool requeue` will wait for a restart");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, outbox.clone()));
        }
    });
    Some(Admin { path, task })
}

async fn answer(stream: UnixStream, outbox: Arc<Outbox>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE)).read_line(&mut line).await.is_err() {
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let answer = match words.as_slice() {
        ["requeue", "all"] => requeue(&outbox, None).await,
        ["requeue", ids @ ..] if !ids.is_empty() => {
            let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
            requeue(&outbox, Some(&ids)).await
        }
        _ => "error: unknown request (expected `requeue all` or `requeue ID…`)".to_owned(),
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

async fn requeue(outbox: &Outbox, ids: Option<&[String]>) -> String {
    match outbox.requeue(ids).await {
        Ok(n) => format!("requeued {n}"),
        Err((n, error)) => format!("error: requeued {n}, then: {error}"),
    }
}

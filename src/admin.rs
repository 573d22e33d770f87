//! The operator's way into a running gateway: a Unix socket (mode 0600), in the spool directory
//! (`admin.sock`) or where `--admin-socket` says, so that only someone who can reach it on this
//! machine can use it, and nothing on the callback listener leads to it. `hookbus spool requeue`
//! and `hookbus tail` talk to it. One request line:
//!
//! - `requeue all` or `requeue ID…`: dead letters back into the outbox, with their ids;
//!   answered `requeued N` or `error: …`.
//! - `tail N B`: the last N callbacks answered, then every new one, as JSON lines (with their
//!   bodies when B is 1) until the reader goes ([`crate::tail`]).
//!
//! Both sides are here: [`serve`] answers, and a [`Client`] asks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{UnixListener, UnixStream};

use crate::outbox::{Outbox, PushError};
use crate::tail::Tap;

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

/// Serves the admin socket at `path` (in the spool directory, or the operator's
/// `--admin-socket`). `None`, logged, when it cannot be bound: another gateway answers there,
/// or something else is in the way.
pub fn serve(path: &Path, outbox: Arc<Outbox>, tap: Arc<Tap>) -> Option<Admin> {
    let path = path.to_owned();
    // A socket nobody answers on is a dead gateway's; anything else there is left alone (and
    // binding then fails, said below).
    let is_socket =
        std::fs::symlink_metadata(&path).is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    if is_socket && std::os::unix::net::UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let bound = UnixListener::bind(&path).and_then(|listener| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map(|()| listener)
    });
    let listener = match bound {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot serve the admin socket: `hookbus spool requeue` and `hookbus tail` will wait for a restart");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, outbox.clone(), tap.clone()));
        }
    });
    Some(Admin { path, task })
}

async fn answer(stream: UnixStream, outbox: Arc<Outbox>, tap: Arc<Tap>) {
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
        ["tail", last, body] if last.parse::<usize>().is_ok() => {
            return tap.serve(write, last.parse().unwrap_or_default(), *body == "1").await;
        }
        _ => "error: unknown request (expected `requeue all`, `requeue ID…` or `tail N 0|1`)".to_owned(),
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

async fn requeue(outbox: &Outbox, ids: Option<&[String]>) -> String {
    match put_back(outbox, ids).await {
        Ok(n) => format!("requeued {n}"),
        Err((n, error)) => format!("error: requeued {n}, then: {error}"),
    }
}

/// Puts dead letters back (those with `ids`, or all of them) as accepted events with their
/// ids, and removes them from the dead letters once they are held again. Returns how many,
/// or, when the outbox refused one, how many were requeued before it and why.
async fn put_back(outbox: &Outbox, ids: Option<&[String]>) -> Result<usize, (usize, PushError)> {
    let letters = outbox.dead_letters().take(ids);
    let mut requeued = Vec::with_capacity(letters.len());
    let mut result = Ok(());
    for letter in letters {
        if let Err(error) = outbox.push(letter.message.clone()).await {
            result = Err(error);
            break;
        }
        requeued.push(letter);
    }
    let dead_letters = outbox.dead_letters().clone();
    let n = requeued.len();
    let forgotten = tokio::task::spawn_blocking(move || dead_letters.forget(&requeued)).await;
    match forgotten {
        Ok(Err(error)) => {
            tracing::error!(%error, "requeued dead letters could not be removed from the log; they may be requeued twice")
        }
        Err(error) => tracing::error!(%error, "requeued dead letters could not be removed from the log"),
        Ok(Ok(())) => tracing::info!(requeued = n, "dead letters requeued with their ids"),
    }
    result.map(|()| n).map_err(|error| (n, error))
}

/// A connection to a running gateway's admin socket, for one request.
pub struct Client(UnixStream);

impl Client {
    /// Connects to the admin socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<Client> {
        Ok(Client(UnixStream::connect(path).await?))
    }

    /// `requeue all` (with `None`) or `requeue ID…`: the gateway's answer, `requeued N` or
    /// `error: …`.
    pub async fn requeue(mut self, ids: Option<&[String]>) -> std::io::Result<String> {
        let request = match ids {
            None => "requeue all\n".to_owned(),
            Some(ids) => format!("requeue {}\n", ids.join(" ")),
        };
        self.0.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(self.0).read_line(&mut answer).await?;
        Ok(answer.trim_end().to_owned())
    }

    /// `tail N B`: the last `last` callbacks, then every new one, as JSON lines (with their
    /// bodies when `body`), until the gateway goes.
    pub async fn tail(mut self, last: usize, body: bool) -> std::io::Result<Lines<BufReader<UnixStream>>> {
        self.0.write_all(format!("tail {last} {}\n", u8::from(body)).as_bytes()).await?;
        Ok(BufReader::new(self.0).lines())
    }
}

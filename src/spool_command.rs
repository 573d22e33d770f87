//! `hookbus spool`: what an operator can see and do with a spool directory, whether or not a
//! gateway runs on it. Reading never changes anything; requeueing goes through the running
//! gateway's admin socket, or, when no gateway holds the spool, into the spool itself for the
//! next start.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context};
use serde_json::json;

use crate::bus::{stdout, Message};
use crate::config::{Select, SpoolAction};
use crate::dead_letters::{self, DeadLetter, DeadLetters};
use crate::{admin, spool};

/// Runs `action` on the spool directory `dir`, printing to `out`.
pub async fn run(dir: &Path, action: &SpoolAction, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a spool directory", dir.display());
    }
    match action {
        SpoolAction::Stat => out.write_all(stat(dir)?.as_bytes())?,
        SpoolAction::Ls { select, json } => {
            for (message, letter) in selected(dir, select)? {
                let line =
                    if *json { json_line(&message, letter.as_ref()) } else { text_line(&message, letter.as_ref()) };
                writeln!(out, "{line}")?;
            }
        }
        SpoolAction::Show { id } => out.write_all(show(dir, id)?.as_bytes())?,
        SpoolAction::Export { select } => {
            let mut text = Vec::new();
            for (message, _) in selected(dir, select)? {
                stdout::write_line(&mut text, &message);
            }
            out.write_all(&text)?;
        }
        SpoolAction::Requeue { ids, all, .. } => {
            let answer = requeue(dir, (!*all).then_some(ids.as_slice())).await?;
            writeln!(out, "{answer}")?;
        }
    }
    Ok(())
}

fn stat(dir: &Path) -> anyhow::Result<String> {
    let contents = spool::inspect(dir).context("reading the segments")?;
    let dead = dead_letters::read(dir).context("reading the dead letters")?;
    let oldest = contents.events.iter().map(|message| message.time).min();
    let age = oldest.map_or("-".to_owned(), |time| {
        let age = SystemTime::now().duration_since(time).unwrap_or_default();
        humantime::format_duration(std::time::Duration::from_secs(age.as_secs())).to_string()
    });
    let mut text = String::new();
    let held = if spool::is_held(dir)? { "yes" } else { "no" };
    let _ = writeln!(text, "gateway running: {held}");
    let _ = writeln!(text, "segments: {}", contents.segments);
    let _ = writeln!(text, "bytes: {}", contents.bytes);
    let _ = writeln!(text, "events: {} (waiting, or confirmed in a segment not yet deleted)", contents.events.len());
    let _ = writeln!(text, "oldest event age: {age}");
    let dead_bytes = std::fs::metadata(dir.join(dead_letters::LOG)).map_or(0, |meta| meta.len());
    let _ = writeln!(text, "dead letters: {} ({dead_bytes} bytes)", dead.len());
    Ok(text)
}

/// The events (or dead letters) that `select` takes, in order.
fn selected(dir: &Path, select: &Select) -> anyhow::Result<Vec<(Message, Option<DeadLetter>)>> {
    let all: Vec<(Message, Option<DeadLetter>)> = if select.dead {
        dead_letters::read(dir)?.into_iter().map(|letter| (letter.message.clone(), Some(letter))).collect()
    } else {
        spool::inspect(dir)?.events.into_iter().map(|message| (message, None)).collect()
    };
    let wanted = |message: &Message| {
        select.command.as_ref().is_none_or(|command| *command == message.event_type)
            && select.room.as_ref().is_none_or(|room| Some(room) == message.key.as_ref())
            && select.since.is_none_or(|since| message.time >= since)
    };
    Ok(all.into_iter().filter(|(message, _)| wanted(message)).collect())
}

fn text_line(message: &Message, letter: Option<&DeadLetter>) -> String {
    let mut line = format!(
        "{}  {}  {}  room={}  {}B",
        message.id,
        message.time_text,
        message.event_type,
        message.key.as_deref().unwrap_or("-"),
        message.payload.len()
    );
    if let Some(letter) = letter {
        let _ = write!(line, "  attempts={}  reason={}  {}", letter.attempts, letter.reason, letter.error);
    }
    line
}

fn json_line(message: &Message, letter: Option<&DeadLetter>) -> String {
    let mut line = json!({
        "id": message.id,
        "time": message.time_text,
        "type": message.event_type,
        "destination": message.destination,
        "room": message.key,
        "bytes": message.payload.len(),
    });
    if let Some(letter) = letter {
        line["reason"] = json!(letter.reason.label());
        line["error"] = json!(letter.error);
        line["attempts"] = json!(letter.attempts);
        line["first_attempt"] = json!(humantime::format_rfc3339_millis(letter.first_attempt).to_string());
        line["dead_at"] = json!(humantime::format_rfc3339_millis(letter.dead_at).to_string());
    }
    line.to_string()
}

fn show(dir: &Path, id: &str) -> anyhow::Result<String> {
    let dead = dead_letters::read(dir)?.into_iter().find(|letter| letter.message.id == id);
    let (message, letter) = match dead {
        Some(letter) => (letter.message.clone(), Some(letter)),
        None => match spool::inspect(dir)?.events.into_iter().find(|message| message.id == id) {
            Some(message) => (message, None),
            None => bail!("no event or dead letter {id} in {}", dir.display()),
        },
    };
    let mut text = String::new();
    for (name, value) in message.attributes() {
        let _ = writeln!(text, "{name}: {value}");
    }
    let _ = writeln!(text, "destination: {}", message.destination);
    if let Some(letter) = letter {
        let _ = writeln!(text, "dead letter: {}", letter.reason);
        let _ = writeln!(text, "error: {}", letter.error);
        let _ = writeln!(text, "attempts: {}", letter.attempts);
        let _ = writeln!(text, "first attempt: {}", humantime::format_rfc3339_millis(letter.first_attempt));
        let _ = writeln!(text, "dead at: {}", humantime::format_rfc3339_millis(letter.dead_at));
    }
    let _ = writeln!(text, "\n{}", String::from_utf8_lossy(&message.payload));
    Ok(text)
}

/// Requeues through the gateway holding the spool, or into the spool when none does.
async fn requeue(dir: &Path, ids: Option<&[String]>) -> anyhow::Result<String> {
    if spool::is_held(dir)? {
        return ask(dir, ids).await;
    }
    let (spool, _) = spool::Spool::open(dir, u64::MAX, spool::SEGMENT_BYTES, 0)?;
    let letters = DeadLetters::open(dir, usize::MAX)?;
    let taken = letters.take(ids);
    for letter in &taken {
        spool.append(&letter.message).await?;
    }
    letters.forget(&taken)?;
    Ok(format!("requeued {} (into the spool: published at the next start)", taken.len()))
}

/// Asks the running gateway, through its admin socket.
async fn ask(dir: &Path, ids: Option<&[String]>) -> anyhow::Result<String> {
    let path = dir.join(admin::SOCKET);
    let client = admin::Client::connect(&path).await.with_context(|| {
        format!("a gateway holds the spool, but its admin socket {} does not answer", path.display())
    })?;
    let answer = client.requeue(ids).await?;
    if let Some(error) = answer.strip_prefix("error: ") {
        bail!("the gateway refused: {error}");
    }
    Ok(answer)
}

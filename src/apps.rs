//! The Tencent apps a gateway serves: for each SdkAppid its callback tokens, TRTC keys and CSS keys
//! (named, so that metrics and logs can say which one matched without showing it), its
//! destination prefix and its fallbacks. [`load`] builds them from a [`Spec`] (what the flags say: inline tokens,
//! token files, `--app` entries, an apps file) and is run again on SIGHUP, which replaces the
//! whole set, so a request always sees one consistent set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::bus;
use crate::decision::Fallbacks;
use crate::tencent::{GIFT, MESSAGE};

/// A secret (a callback token or a TRTC key) and the name it is known by (never the secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(formatter, "Token({})", self.name)
    }
}

/// How one app's callbacks are checked and where its events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// A request must be signed with one of these; none: signatures are not checked.
    pub tokens: Vec<Token>,
    /// A TRTC callback must be signed with one of these; with none, TRTC callbacks are
    /// accepted unsigned only when the app signs nothing else ([`App::signs_anything`]).
    pub trtc_keys: Vec<Token>,
    /// A Cloud Streaming (CSS) callback must be signed with one of these; with none, CSS
    /// callbacks are accepted unsigned only when the app signs nothing else.
    pub css_keys: Vec<Token>,
    pub prefix: String,
    pub fallbacks: Fallbacks,
}

impl App {
    /// Whether any of this app's callbacks must be signed. A surface whose own keys are not set
    /// refuses the app's callbacks rather than take them unsigned: otherwise listing an app for
    /// one surface would open the others to anyone.
    pub fn signs_anything(&self) -> bool {
        !self.tokens.is_empty() || !self.trtc_keys.is_empty() || !self.css_keys.is_empty()
    }
}

/// Every app, by SdkAppid; with none listed, `any` serves every SdkAppid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apps {
    pub listed: BTreeMap<String, App>,
    pub any: App,
}

impl Apps {
    /// One app for every SdkAppid.
    pub fn single(app: App) -> Apps {
        Apps { listed: BTreeMap::new(), any: app }
    }

    /// Whether any app served signs any of its callbacks.
    pub fn signs_anything(&self) -> bool {
        self.any.signs_anything() || self.listed.values().any(App::signs_anything)
    }

    /// The app a request for `sdk_app_id` belongs to; `None` when apps are listed and this is
    /// not one of them.
    pub fn get(&self, sdk_app_id: &str) -> Option<&App> {
        if self.listed.is_empty() {
            Some(&self.any)
        } else {
            self.listed.get(sdk_app_id)
        }
    }

    /// What changed from `self` to `new`, in words that name apps and tokens but never show a
    /// token: one line each.
    pub fn changes(&self, new: &Apps) -> Vec<String> {
        let mut changes = Vec::new();
        let ids: BTreeSet<&String> = self.listed.keys().chain(new.listed.keys()).collect();
        let pairs = ids.into_iter().map(|id| (format!("app {id}"), self.listed.get(id), new.listed.get(id))).chain([(
            "every app".to_owned(),
            Some(&self.any),
            Some(&new.any),
        )]);
        for (what, old, new) in pairs {
            match (old, new) {
                (None, Some(_)) => changes.push(format!("{what} added")),
                (Some(_), None) => changes.push(format!("{what} removed")),
                (Some(old), Some(new)) => changes.extend(old.changes(new).into_iter().map(|c| format!("{what}: {c}"))),
                (None, None) => {}
            }
        }
        changes
    }
}

impl App {
    fn changes(&self, new: &App) -> Vec<String> {
        let mut changes = secret_changes("token", &self.tokens, &new.tokens);
        changes.extend(secret_changes("trtc key", &self.trtc_keys, &new.trtc_keys));
        changes.extend(secret_changes("css key", &self.css_keys, &new.css_keys));
        if self.prefix != new.prefix {
            changes.push(format!("prefix {} -> {}", self.prefix, new.prefix));
        }
        if self.fallbacks != new.fallbacks {
            changes.push(format!("fallbacks {:?} -> {:?}", self.fallbacks, new.fallbacks));
        }
        changes
    }
}

/// The secrets of one kind (`what`) added, removed or changed from `old` to `new`, by name.
fn secret_changes(what: &str, old: &[Token], new: &[Token]) -> Vec<String> {
    let mut changes = Vec::new();
    let names = |secrets: &[Token]| secrets.iter().map(|t| t.name.clone()).collect::<BTreeSet<_>>();
    let (old_names, new_names) = (names(old), names(new));
    for name in new_names.difference(&old_names) {
        changes.push(format!("{what} {name} added"));
    }
    for name in old_names.difference(&new_names) {
        changes.push(format!("{what} {name} removed"));
    }
    for secret in new {
        if old.iter().any(|old| old.name == secret.name && old.secret != secret.secret) {
            changes.push(format!("{what} {} changed", secret.name));
        }
    }
    changes
}

/// What the flags say about apps and tokens; [`load`] reads the files it names.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// `--token`: inline tokens, named `token-1`, `token-2`… by position.
    pub tokens: Vec<String>,
    /// `--token-file [NAME=]PATH`: one token per line; named NAME (default: the file name),
    /// further lines NAME.2, NAME.3…
    pub token_files: Vec<String>,
    /// `--trtc-key`: inline TRTC keys, named `trtc-key-1`, `trtc-key-2`… by position.
    pub trtc_keys: Vec<String>,
    /// `--trtc-key-file [NAME=]PATH`: as `token_files`, for TRTC keys.
    pub trtc_key_files: Vec<String>,
    /// `--css-key`: inline CSS callback keys, named `css-key-1`, `css-key-2`… by position.
    pub css_keys: Vec<String>,
    /// `--css-key-file [NAME=]PATH`: as `token_files`, for CSS keys.
    pub css_key_files: Vec<String>,
    /// `--sdk-app-id`: apps with the shared settings.
    pub sdk_app_ids: Vec<String>,
    /// `--app SDKAPPID[:key=value,…]`.
    pub apps: Vec<String>,
    /// `--apps FILE` (TOML).
    pub apps_file: Option<PathBuf>,
    pub prefix: String,
    pub fallbacks: Fallbacks,
}

/// One `[[app]]` of the apps file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sdk_app_id: String,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_files: Vec<String>,
    #[serde(default)]
    trtc_keys: Vec<String>,
    #[serde(default)]
    trtc_key_files: Vec<String>,
    #[serde(default)]
    css_keys: Vec<String>,
    #[serde(default)]
    css_key_files: Vec<String>,
    prefix: Option<String>,
    gift_fallback: Option<String>,
    message_fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default)]
    app: Vec<Entry>,
}

/// Builds the apps `spec` describes, reading its token files and apps file. An app of its
/// own without tokens, prefix or fallbacks takes the shared ones.
pub fn load(spec: &Spec) -> anyhow::Result<Apps> {
    let shared = App {
        tokens: secrets(&spec.tokens, &spec.token_files, "token", TOKEN_FILE)?,
        trtc_keys: secrets(&spec.trtc_keys, &spec.trtc_key_files, "trtc-key", TRTC_KEY_FILE)?,
        css_keys: secrets(&spec.css_keys, &spec.css_key_files, "css-key", CSS_KEY_FILE)?,
        prefix: spec.prefix.clone(),
        fallbacks: spec.fallbacks.clone(),
    };
    let mut apps = Apps::single(shared.clone());
    let mut add = |id: String, app: App, from: &str| -> anyhow::Result<()> {
        if id.is_empty() {
            bail!("{from}: an SdkAppid is empty");
        }
        if apps.listed.insert(id.clone(), app).is_some() {
            bail!("{from}: SdkAppid {id} is listed twice");
        }
        Ok(())
    };
    for id in &spec.sdk_app_ids {
        add(id.clone(), shared.clone(), "--sdk-app-id")?;
    }
    for text in &spec.apps {
        let entry = parse_app(text).with_context(|| format!("--app {text}"))?;
        let id = entry.sdk_app_id.clone();
        add(id, app(entry, &shared).with_context(|| format!("--app {text}"))?, "--app")?;
    }
    if let Some(path) = &spec.apps_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --apps {}", path.display()))?;
        let file: AppsFile = toml::from_str(&text).with_context(|| format!("--apps {}", path.display()))?;
        for entry in file.app {
            let what = format!("--apps {}: app {}", path.display(), entry.sdk_app_id);
            let id = entry.sdk_app_id.clone();
            add(id, app(entry, &shared).context(what.clone())?, &what)?;
        }
    }
    Ok(apps)
}

/// `SDKAPPID[:key=value,…]` with the keys of an apps-file entry, dashes or underscores.
fn parse_app(text: &str) -> anyhow::Result<Entry> {
    let (id, settings) = text.split_once(':').unwrap_or((text, ""));
    let mut entry = Entry { sdk_app_id: id.to_owned(), ..Entry::default() };
    for pair in settings.split(',').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| anyhow!("{pair}: write key=value"))?;
        match key.replace('-', "_").as_str() {
            "token" => entry.tokens.push(value.to_owned()),
            "token_file" => entry.token_files.push(value.to_owned()),
            "trtc_key" => entry.trtc_keys.push(value.to_owned()),
            "trtc_key_file" => entry.trtc_key_files.push(value.to_owned()),
            "css_key" => entry.css_keys.push(value.to_owned()),
            "css_key_file" => entry.css_key_files.push(value.to_owned()),
            "prefix" => entry.prefix = Some(value.to_owned()),
            "gift_fallback" => entry.gift_fallback = Some(value.to_owned()),
            "message_fallback" => entry.message_fallback = Some(value.to_owned()),
            other => bail!(
                "unknown setting {other} (token, token-file, trtc-key, trtc-key-file, css-key, css-key-file, prefix, \
                 gift-fallback, message-fallback)"
            ),
        }
    }
    Ok(entry)
}

fn app(entry: Entry, shared: &App) -> anyhow::Result<App> {
    let tokens = secrets(&entry.tokens, &entry.token_files, &format!("{}/token", entry.sdk_app_id), TOKEN_FILE)?;
    let trtc_keys =
        secrets(&entry.trtc_keys, &entry.trtc_key_files, &format!("{}/trtc-key", entry.sdk_app_id), TRTC_KEY_FILE)?;
    let css_keys =
        secrets(&entry.css_keys, &entry.css_key_files, &format!("{}/css-key", entry.sdk_app_id), CSS_KEY_FILE)?;
    let prefix = entry.prefix.unwrap_or_else(|| shared.prefix.clone());
    if !bus::valid_name(&prefix) {
        bail!("prefix {prefix}: use letters, digits, '.', '_' and '-'");
    }
    let mut fallbacks = shared.fallbacks.clone();
    for (command, text) in [(GIFT, entry.gift_fallback), (MESSAGE, entry.message_fallback)] {
        if let Some(text) = text {
            fallbacks.set(command, text.parse().map_err(|error: String| anyhow!("{text}: {error}"))?);
        }
    }
    let inherit = |own: Vec<Token>, shared: &[Token]| if own.is_empty() { shared.to_vec() } else { own };
    Ok(App {
        tokens: inherit(tokens, &shared.tokens),
        trtc_keys: inherit(trtc_keys, &shared.trtc_keys),
        css_keys: inherit(css_keys, &shared.css_keys),
        prefix,
        fallbacks,
    })
}

const TOKEN_FILE: &str = "--token-file";
const TRTC_KEY_FILE: &str = "--trtc-key-file";
const CSS_KEY_FILE: &str = "--css-key-file";

/// Inline secrets named `{inline_name}-1`…, then the lines of each file (of the flag `file_flag`).
fn secrets(inline: &[String], files: &[String], inline_name: &str, file_flag: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    for (position, secret) in inline.iter().enumerate() {
        if secret.trim().is_empty() {
            bail!("a {inline_name} is empty");
        }
        tokens.push(Token { name: format!("{inline_name}-{}", position + 1), secret: secret.clone() });
    }
    for file in files {
        let (name, path) = match file.split_once('=') {
            Some((name, path)) => (name.to_owned(), Path::new(path)),
            None => {
                let path = Path::new(file);
                (path.file_name().map_or(file.clone(), |name| name.to_string_lossy().into_owned()), path)
            }
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow!("cannot read {file_flag} {}: {error}", path.display()))?;
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        if lines.is_empty() {
            bail!("the file is empty ({file_flag} {})", path.display());
        }
        for (line, secret) in lines.into_iter().enumerate() {
            let name = if line == 0 { name.clone() } else { format!("{name}.{}", line + 1) };
            tokens.push(Token { name, secret: secret.to_owned() });
        }
    }
    Ok(tokens)
}

/// The apps in force, replaced whole on reload.
#[derive(Debug)]
pub struct Current(RwLock<Arc<Apps>>);

impl Current {
    pub fn new(apps: Apps) -> Current {
        Current(RwLock::new(Arc::new(apps)))
    }

    pub fn get(&self) -> Arc<Apps> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Puts `apps` in force and logs what changed.
    pub fn replace(&self, apps: Apps) {
        let mut current = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changes = current.changes(&apps);
        if changes.is_empty() {
            tracing::info!("settings reloaded: nothing changed");
        }
        for change in changes {
            tracing::info!(change, "settings reloaded");
        }
        *current = Arc::new(apps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Fallback;

    fn app(prefix: &str, tokens: &[(&str, &str)]) -> App {
        App {
            tokens: tokens
                .iter()
                .map(|(name, secret)| Token { name: (*name).into(), secret: (*secret).into() })
                .collect(),
            trtc_keys: Vec::new(),
            css_keys: Vec::new(),
            prefix: prefix.into(),
            fallbacks: Fallbacks::default(),
        }
    }

    #[test]
    fn listed_apps_refuse_the_others() {
        let single = Apps::single(app("tencent", &[]));
        assert_eq!(single.get("1").map(|a| a.prefix.as_str()), Some("tencent"));
        let mut listed = single.clone();
        listed.listed.insert("1400".into(), app("staging", &[]));
        assert_eq!(listed.get("1400").map(|a| a.prefix.as_str()), Some("staging"));
        assert!(listed.get("1").is_none());
    }

    #[test]
    fn changes_name_tokens_but_never_show_them() {
        let old = Apps::single(app("t", &[("live", "s3cret-a"), ("chat", "s3cret-b")]));
        let mut new = Apps::single(app("t", &[("live", "s3cret-c"), ("next", "s3cret-d")]));
        new.any.fallbacks.set(GIFT, Fallback::Allow);
        new.listed.insert("1400".into(), app("staging", &[]));
        let changes = old.changes(&new).join("\n");
        for expected in ["app 1400 added", "token next added", "token chat removed", "token live changed", "fallbacks"]
        {
            assert!(changes.contains(expected), "{expected} in {changes}");
        }
        assert!(!changes.contains("s3cret"), "{changes}");
        assert!(format!("{:?}", new).contains("Token(live)") && !format!("{new:?}").contains("s3cret"));
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hookbus-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn tokens_from_flags_and_files_are_named_never_shown() {
        let live = file("live", "s3cret-live\n\ns3cret-next\n");
        let spec = Spec {
            tokens: vec!["a".into(), "b".into()],
            token_files: vec![format!("live={}", live.display())],
            prefix: "tencent".into(),
            ..Spec::default()
        };
        let apps = load(&spec).unwrap();
        let names: Vec<_> = apps.any.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["token-1", "token-2", "live", "live.2"]);
        assert_eq!(apps.any.tokens[3].secret, "s3cret-next");
        std::fs::write(&live, "\n").unwrap();
        assert!(load(&spec).unwrap_err().to_string().contains("empty"));
        std::fs::remove_file(&live).unwrap();
        assert!(load(&spec).unwrap_err().to_string().contains("cannot read --token-file"));
    }

    #[test]
    fn css_keys_are_per_app_inherited_and_their_changes_named() {
        let keys = file("css", "s3cret-stream\n");
        let apps_file = file("apps", "[[app]]\nsdk_app_id = \"1250000002\"\ncss_key_files = [\"own=/nonexistent\"]\n");
        let spec = Spec {
            css_keys: vec!["shared".into()],
            css_key_files: vec![format!("stream={}", keys.display())],
            apps: vec!["1250000001:css-key=inline".into(), "1250000003:trtc-key=t".into()],
            prefix: "tencent".into(),
            ..Spec::default()
        };
        let apps = load(&spec).unwrap();
        let names = |id: &str| apps.get(id).unwrap().css_keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("1250000001"), ["1250000001/css-key-1"]);
        assert_eq!(names("1250000003"), ["css-key-1", "stream"], "inherited");
        assert_eq!(apps.any.css_keys.len(), 2, "the shared keys serve a body without appid");
        assert!(apps.get("1250000001").unwrap().trtc_keys.is_empty(), "the surfaces' keys are apart");
        std::fs::write(&keys, "s3cret-stream\ns3cret-next\n").unwrap();
        let changes = apps.changes(&load(&spec).unwrap()).join("\n");
        assert!(changes.contains("app 1250000003: css key stream.2 added"), "{changes}");
        assert!(!changes.contains("s3cret"), "{changes}");
        let with_file = Spec { apps_file: Some(apps_file.clone()), ..spec.clone() };
        assert!(format!("{:#}", load(&with_file).unwrap_err()).contains("cannot read --css-key-file"));
        std::fs::remove_file(&keys).unwrap();
        std::fs::remove_file(&apps_file).unwrap();
    }

    #[test]
    fn trtc_keys_are_per_app_inherited_and_their_changes_named() {
        let keys = file("trtc", "s3cret-room\n");
        let apps_file = file("apps", "[[app]]\nsdk_app_id = \"1400000002\"\ntrtc_keys = [\"own\"]\n");
        let spec = Spec {
            trtc_keys: vec!["shared".into()],
            trtc_key_files: vec![format!("room={}", keys.display())],
            apps: vec!["1400000001:trtc-key=inline".into(), "1400000003:token=t".into()],
            apps_file: Some(apps_file.clone()),
            prefix: "tencent".into(),
            ..Spec::default()
        };
        let apps = load(&spec).unwrap();
        let names = |id: &str| apps.get(id).unwrap().trtc_keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("1400000001"), ["1400000001/trtc-key-1"]);
        assert_eq!(names("1400000002"), ["1400000002/trtc-key-1"]);
        assert_eq!(names("1400000003"), ["trtc-key-1", "room"], "inherited");
        assert!(apps.get("1400000001").unwrap().tokens.is_empty(), "tokens and keys are apart");
        std::fs::write(&keys, "s3cret-room\ns3cret-next\n").unwrap();
        let changes = apps.changes(&load(&spec).unwrap()).join("\n");
        assert!(changes.contains("app 1400000003: trtc key room.2 added"), "{changes}");
        assert!(!changes.contains("s3cret"), "{changes}");
        std::fs::remove_file(&keys).unwrap();
        assert!(format!("{:#}", load(&spec).unwrap_err()).contains("cannot read --trtc-key-file"));
        std::fs::remove_file(&apps_file).unwrap();
    }

    #[test]
    fn apps_from_flags_and_a_file_inherit_what_they_do_not_set() {
        let apps_file = file(
            "apps",
            "[[app]]\nsdk_app_id = \"1400000002\"\nprefix = \"prod\"\ntokens = [\"p\"]\ngift_fallback = \"allow\"\n",
        );
        let spec = Spec {
            tokens: vec!["shared".into()],
            sdk_app_ids: vec!["1400000000".into()],
            apps: vec!["1400000001:prefix=staging,token=s,message-fallback=deny".into()],
            apps_file: Some(apps_file.clone()),
            prefix: "tencent".into(),
            ..Spec::default()
        };
        let apps = load(&spec).unwrap();
        let get = |id: &str| apps.get(id).unwrap();
        assert_eq!(get("1400000000").prefix, "tencent");
        assert_eq!(get("1400000000").tokens[0].secret, "shared");
        assert_eq!(get("1400000001").prefix, "staging");
        assert_eq!(get("1400000001").tokens[0].name, "1400000001/token-1");
        let mut staging = Fallbacks::default();
        staging.set(MESSAGE, Fallback::Deny);
        assert_eq!(get("1400000001").fallbacks, staging);
        let mut production = Fallbacks::default();
        production.set(GIFT, Fallback::Allow);
        assert_eq!(get("1400000002").fallbacks, production);
        assert!(apps.get("1400000009").is_none(), "listed apps refuse the others");
        std::fs::write(&apps_file, "[[app]]\nsdk_app_id = \"1\"\ncolour = \"red\"\n").unwrap();
        assert!(format!("{:#}", load(&spec).unwrap_err()).contains("unknown field"));
        for bad in ["1:prefix=a b", "1:colour=red", "1:token", "1400000000"] {
            let spec = Spec { apps: vec![bad.into()], ..spec.clone() };
            assert!(load(&Spec { apps_file: None, ..spec }).is_err(), "{bad}");
        }
        std::fs::remove_file(&apps_file).unwrap();
    }
}

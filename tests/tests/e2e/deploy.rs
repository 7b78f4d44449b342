//! The deployment files checked against the code, since no container runs here: every
//! variable `docker-compose.yml` and `deploy/kubernetes/` set is one the configuration reads
//! (and validates), their addresses, ports, probes and names agree with each other and with
//! the binaries. That every metric the Grafana dashboard queries is one the real binaries
//! export is checked where they run (`pipeline::the_dashboard_queries_…`), with these helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use common::config::{Config, Needs};
use serde_norway::Value;

/// Variables the sandbox binary reads itself (it has no `Config`).
const SANDBOX_VARIABLES: &[&str] = &["SANDBOX_LISTEN", "SANDBOX_SEED_MAPPING"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(workspace().join(path)).with_context(|| format!("reading {path}"))
}

/// Every YAML document in `path`.
fn documents(path: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let text = read(path)?;
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).with_context(|| format!("parsing {path}")))
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => format!("{other:?}"),
    }
}

/// A service's (or container's) environment as name → value.
fn environment(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(key, value)| (text(key), text(value)))
        .collect()
}

/// `host:port` (or a URL's) host and port.
fn host_port(address: &str) -> (String, u16) {
    let rest = address.split("://").last().unwrap_or(address);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
    (host.to_owned(), port.parse().unwrap_or(0))
}

/// Fails naming every variable of `env` that the configuration does not read, then validates
/// `env` as the binary would.
fn check_variables(what: &str, env: &BTreeMap<String, String>, needs: Needs) -> anyhow::Result<()> {
    let known = Config::variables();
    let unknown: Vec<&String> = env
        .keys()
        .filter(|key| !known.contains_key(key.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "{what} sets variables nothing reads: {unknown:?}"
    );
    let env = env.clone().into_iter().collect();
    Config::from_sources_for(&env, None, needs)
        .map(drop)
        .with_context(|| format!("{what}'s environment does not validate"))
}

#[test]
fn compose_sets_only_settings_the_binaries_accept_and_its_addresses_agree() -> anyhow::Result<()> {
    let compose = documents("docker-compose.yml")?.remove(0);
    let services = &compose["services"];
    let env = |name: &str| environment(&services[name]["environment"]);
    let (ingest, processor, sandbox) = (env("ingest"), env("processor"), env("sandbox"));
    check_variables("ingest", &ingest, Needs::NOTHING)?;
    check_variables("processor", &processor, Needs::ORDER_STATUS_APIS)?;
    for key in sandbox.keys() {
        ensure!(
            SANDBOX_VARIABLES.contains(&key.as_str()),
            "sandbox: {key} is not read"
        );
    }
    ensure!(
        text(&services["processor"]["deploy"]["replicas"]) == "2",
        "two processor replicas in one group"
    );

    // The brokers the stages use are the broker's internal advertised listener.
    let advertised =
        environment(&services["kafka"]["environment"])["KAFKA_ADVERTISED_LISTENERS"].clone();
    for stage in [&ingest, &processor] {
        let brokers = &stage["KAFKA_BROKERS"];
        ensure!(
            advertised
                .split(',')
                .any(|listener| listener.ends_with(&format!("//{brokers}"))),
            "KAFKA_BROKERS={brokers} is none of the broker's listeners {advertised}"
        );
        let (host, _) = host_port(brokers);
        ensure!(!services[host.as_str()].is_null(), "no service {host}");
        ensure!(
            stage["KAFKA_TOPIC"] == processor["KAFKA_TOPIC"],
            "one topic"
        );
    }
    // The topics are created with README's partition count.
    let partitions = Config::defaults().bus.kafka.topic_partitions;
    let create = format!("{:?}", services["kafka-topics"]["command"]);
    for topic in [&processor["KAFKA_TOPIC"], &processor["KAFKA_DLQ_TOPIC"]] {
        ensure!(
            create.contains(topic.as_str()),
            "{topic} is not created: {create}"
        );
    }
    ensure!(
        create.contains(&format!("--partitions {partitions}")),
        "{create}"
    );

    // The APIs are the sandbox, on the port it listens on.
    let (_, sandbox_port) = host_port(&sandbox["SANDBOX_LISTEN"]);
    for key in ["FLUENT_API_URL", "CTP_API_URL", "CTP_AUTH_URL"] {
        ensure!(
            host_port(&processor[key]) == ("sandbox".into(), sandbox_port),
            "{key}={} is not the sandbox at port {sandbox_port}",
            processor[key]
        );
    }
    // The sandbox accepts the credentials (its defaults).
    let accepted = sandbox::SandboxConfig::default().client_env("http://sandbox:8090");
    for (key, value) in accepted {
        if !key.ends_with("_URL") {
            ensure!(
                processor[key] == value,
                "{key}: the sandbox accepts {value:?}"
            );
        }
    }
    // Traces go to Jaeger's OTLP/HTTP port, which it serves.
    for stage in [&ingest, &processor] {
        let (host, port) = host_port(&stage["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        ensure!(host == "jaeger" && port == 4318, "traces to {host}:{port}");
    }
    ensure!(environment(&services["jaeger"]["environment"])["COLLECTOR_OTLP_ENABLED"] == "true");

    // Prometheus scrapes the ports the stages listen on.
    let prometheus = documents("deploy/compose/prometheus.yml")?.remove(0);
    let jobs = prometheus["scrape_configs"]
        .as_sequence()
        .context("scrape_configs")?;
    let job = |name: &str| {
        jobs.iter()
            .find(|job| job["job_name"].as_str() == Some(name))
    };
    let ingest_target =
        text(&job("ingest").context("job ingest")?["static_configs"][0]["targets"][0]);
    ensure!(
        host_port(&ingest_target) == ("ingest".into(), host_port(&ingest["INGEST_LISTEN"]).1),
        "ingest scraped at {ingest_target}"
    );
    let discovery = &job("processor").context("job processor")?["dns_sd_configs"][0];
    ensure!(text(&discovery["names"][0]) == "processor");
    ensure!(text(&discovery["port"]) == host_port(&processor["METRICS_LISTEN"]).1.to_string());
    // Grafana reads the dashboards directory this repository holds.
    let volumes = format!("{:?}", services["grafana"]["volumes"]);
    ensure!(
        volumes.contains("./deploy/compose/grafana/dashboards"),
        "{volumes}"
    );
    Ok(())
}

/// Every Kubernetes object `kustomization.yaml` names, by kind and name.
fn kubernetes() -> anyhow::Result<BTreeMap<(String, String), Value>> {
    let kustomization = documents("deploy/kubernetes/kustomization.yaml")?.remove(0);
    let mut objects = BTreeMap::new();
    for resource in kustomization["resources"]
        .as_sequence()
        .context("resources")?
    {
        for object in documents(&format!("deploy/kubernetes/{}", text(resource)))? {
            let key = (text(&object["kind"]), text(&object["metadata"]["name"]));
            objects.insert(key, object);
        }
    }
    Ok(objects)
}

#[test]
fn kubernetes_manifests_agree_with_the_code() -> anyhow::Result<()> {
    let objects = kubernetes()?;
    let get = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .with_context(|| format!("no {kind} {name}"))
    };
    let shared = environment(&get("ConfigMap", "fluent-ct-sync")?["data"]);
    let secret = documents("deploy/kubernetes/secret.example.yaml")?.remove(0);
    let secrets = environment(&secret["stringData"]);
    for (name, listen_key, port_name) in [
        ("ingest", "INGEST_LISTEN", "http"),
        ("processor", "METRICS_LISTEN", "metrics"),
    ] {
        let deployment = get("Deployment", name)?;
        let pod = &deployment["spec"]["template"];
        ensure!(
            pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"],
            "{name}: the selector selects the pods"
        );
        let container = &pod["spec"]["containers"][0];
        // What the container sees: the shared settings, the secrets it takes, its own env.
        let mut env = shared.clone();
        let sources = format!("{:?}", container["envFrom"]);
        if sources.contains("fluent-ct-sync-secrets") {
            env.extend(secrets.clone());
        }
        for variable in container["env"].as_sequence().into_iter().flatten() {
            let key = text(&variable["name"]);
            let value = match variable.get("valueFrom") {
                Some(from) => secrets[&text(&from["secretKeyRef"]["key"])].clone(),
                None => text(&variable["value"]),
            };
            env.insert(key, value);
        }
        let needs = if name == "processor" {
            Needs::ORDER_STATUS_APIS
        } else {
            Needs::NOTHING
        };
        check_variables(name, &env, needs)?;
        // The probes ask the health routes on the port the binary listens on.
        let (_, listen) = host_port(&env[listen_key]);
        let port = container["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|port| text(&port["name"]) == port_name)
            .with_context(|| format!("{name}: no port {port_name}"))?;
        ensure!(
            text(&port["containerPort"]) == listen.to_string(),
            "{name}: port {port:?}"
        );
        for (probe, path) in [
            ("livenessProbe", "/health/live"),
            ("readinessProbe", "/health/ready"),
        ] {
            let get = &container[probe]["httpGet"];
            ensure!(
                text(&get["path"]) == path && text(&get["port"]) == port_name,
                "{name} {probe}"
            );
        }
        ensure!(
            !container["resources"]["requests"].is_null(),
            "{name}: resource requests"
        );
        let budget = get("PodDisruptionBudget", name)?;
        ensure!(
            budget["spec"]["selector"]["matchLabels"]
                == deployment["spec"]["selector"]["matchLabels"]
        );
    }
    let service = get("Service", "ingest")?;
    ensure!(text(&service["spec"]["ports"][0]["targetPort"]) == "http");

    // KEDA scales the processors on their group's lag, at most one replica per partition.
    let scaled = get("ScaledObject", "processor")?;
    ensure!(text(&scaled["spec"]["scaleTargetRef"]["name"]) == "processor");
    let partitions = Config::defaults().bus.kafka.topic_partitions;
    ensure!(
        scaled["spec"]["maxReplicaCount"].as_u64() == Some(u64::from(partitions)),
        "maxReplicaCount caps at the {partitions} partitions"
    );
    let trigger = &scaled["spec"]["triggers"][0];
    ensure!(text(&trigger["type"]) == "kafka");
    let metadata = environment(&trigger["metadata"]);
    ensure!(metadata["consumerGroup"] == shared["KAFKA_GROUP_ID"]);
    ensure!(metadata["topic"] == shared["KAFKA_TOPIC"]);
    ensure!(metadata["bootstrapServers"] == shared["KAFKA_BROKERS"]);
    Ok(())
}

#[test]
fn the_image_holds_every_binary_stripped_and_runs_as_a_user() -> anyhow::Result<()> {
    let dockerfile = read("Dockerfile")?;
    ensure!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    for binary in ["ingest", "processor", "sandbox", "demo"] {
        ensure!(
            dockerfile.contains(&format!("--bin {binary}")),
            "{binary} is not built"
        );
    }
    ensure!(dockerfile.contains("strip "), "binaries are stripped");
    ensure!(dockerfile.contains("USER 10001"), "not root");
    Ok(())
}

/// The metric families a `/metrics` text declares (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The metric names the Grafana dashboard's queries use.
pub(crate) fn dashboard_metrics() -> anyhow::Result<BTreeSet<String>> {
    let dashboard: serde_json::Value = serde_json::from_str(&read(
        "deploy/compose/grafana/dashboards/fluent-ct-sync.json",
    )?)?;
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            queried.extend(
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|word| word.starts_with("ingest_") || word.starts_with("processor_"))
                    .map(str::to_owned),
            );
        }
    }
    ensure!(queried.len() >= 8, "the dashboard queries {queried:?}");
    Ok(queried)
}

/// Fails naming a metric the dashboard queries that no `/metrics` text in `scraped` declares
/// (a sample name is its family's, or the family's with a counter's or histogram's suffix).
pub(crate) fn check_dashboard(scraped: &[String]) -> anyhow::Result<()> {
    let exported: BTreeSet<String> = scraped.iter().flat_map(|text| families(text)).collect();
    for metric in dashboard_metrics()? {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                metric
                    .strip_suffix(suffix)
                    .filter(|base| exported.contains(*base))
            })
            .unwrap_or(&metric);
        ensure!(
            exported.contains(family),
            "the dashboard queries {metric}, which the binaries do not export ({exported:?})"
        );
    }
    Ok(())
}

//! Configuration tests: layering (defaults, file, environment), validation and one report
//! of every problem.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_sources(&env(pairs), None)
}

fn invalid(pairs: &[(&str, &str)]) -> Vec<InvalidValue> {
    match load(pairs) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected invalid values, got {other:?}"),
    }
}

/// A DER-shaped blob standing in for a key: the config checks the encoding, not the math.
fn fake_der(seed: u8) -> Vec<u8> {
    let mut der = vec![0x30, 0x81, 0x9f];
    der.extend((0..60).map(|i| seed.wrapping_add(i)));
    der
}

#[test]
fn defaults_match_the_documented_contract() {
    let config = load(&[]).unwrap();
    assert_eq!(config.bus.kind, BusKind::Kafka);
    assert_eq!(config.bus.kafka.brokers, ["localhost:9092"]);
    assert_eq!(config.bus.kafka.topic, "fluent.webhooks");
    assert_eq!(config.bus.kafka.dlq_topic, "fluent.webhooks.dlq");
    assert_eq!(config.bus.kafka.group_id, "order-status-processor");
    assert_eq!(
        config.bus.nats.urls[0].expose().as_str(),
        "nats://127.0.0.1:4222"
    );
    assert_eq!(config.bus.nats.stream, "FLUENT_WEBHOOKS");
    assert_eq!(config.bus.nats.subject_prefix, "fluent.webhooks");
    assert_eq!(
        config.bus.nats.owned_partitions,
        (0..12).collect::<Vec<u16>>()
    );
    assert_eq!(config.ingest.listen.to_string(), "0.0.0.0:8080");
    assert!(!config.ingest.insecure_no_signature);
    assert_eq!(
        config.ingest.required_fields.names().collect::<Vec<_>>(),
        crate::event::DEFAULT_REQUIRED_FIELDS
    );
    assert_eq!(
        config.processor.order_status_message_names,
        ["fc.connect.order.webhook.order-status-update"]
    );
    assert_eq!(config.processor.metrics_listen.to_string(), "0.0.0.0:9090");
    assert_eq!(config.telemetry.log_format, LogFormat::Pretty);
    assert_eq!(config.telemetry.log_filter, "info");
}

#[test]
fn names_variable_and_expectation_of_invalid_value() {
    let problems = invalid(&[("KAFKA_BROKERS", "")]);
    assert_eq!(
        problems[0].to_string(),
        r#"KAFKA_BROKERS: expected host:port[,host:port], got """#
    );
    let problems = invalid(&[("KAFKA_BROKERS", "broker-1:9092,broker-2")]);
    assert_eq!(problems[0].var, "KAFKA_BROKERS");
}

#[test]
fn reports_every_invalid_value_at_once() {
    let problems = invalid(&[
        ("BUS", "rabbit"),
        ("PROCESSOR_MAX_IN_FLIGHT", "0"),
        ("INGEST_LISTEN", "localhost"),
        ("LOG_FORMAT", "xml"),
        ("RUST_LOG", "info,[[["),
        ("FLUENT_API_URL", "ftp://fluent"),
    ]);
    let vars: Vec<&str> = problems.iter().map(|problem| problem.var).collect();
    for var in [
        "BUS",
        "PROCESSOR_MAX_IN_FLIGHT",
        "INGEST_LISTEN",
        "LOG_FORMAT",
        "RUST_LOG",
        "FLUENT_API_URL",
    ] {
        assert!(vars.contains(&var), "{var} not reported in {vars:?}");
    }
    let message = ConfigError::Invalid(problems).to_string();
    assert!(
        message.contains("BUS: expected one of kafka, nats, memory, got \"rabbit\""),
        "{message}"
    );
}

#[test]
fn environment_overrides_file_which_overrides_defaults() {
    let file =
        "kafka_topic = \"from-file\"\nKAFKA_GROUP_ID = \"file-group\"\nnats_partitions = 4\n";
    let config = Config::from_sources(
        &env(&[("KAFKA_GROUP_ID", "env-group")]),
        Some((Path::new("test.toml"), file)),
    )
    .unwrap();
    assert_eq!(config.bus.kafka.topic, "from-file");
    assert_eq!(config.bus.kafka.group_id, "env-group");
    assert_eq!(config.bus.kafka.dlq_topic, "fluent.webhooks.dlq");
    assert_eq!(config.bus.nats.owned_partitions, [0, 1, 2, 3]);
}

#[test]
fn file_lists_and_errors_name_the_file() {
    let file = "order_status_message_names = [\"a\", \"b\"]\nprocessor_max_attempts = 0\n";
    let path = Path::new("/etc/pipeline.toml");
    let error = Config::from_sources(&env(&[]), Some((path, file))).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: PROCESSOR_MAX_ATTEMPTS (in /etc/pipeline.toml): expected an \
         integer from 1 to 1000, got \"0\""
    );
    let config = Config::from_sources(
        &env(&[]),
        Some((path, "order_status_message_names = [\"a\", \"b\"]")),
    )
    .unwrap();
    assert_eq!(config.processor.order_status_message_names, ["a", "b"]);
}

#[test]
fn rejects_unknown_file_key_and_bad_toml() {
    let path = Path::new("c.toml");
    let error =
        Config::from_sources(&env(&[]), Some((path, "kafka_broker = \"x:1\""))).unwrap_err();
    assert!(matches!(error, ConfigError::FileValue { ref key, .. } if key == "KAFKA_BROKER"));
    let error = Config::from_sources(&env(&[]), Some((path, "kafka_topic = "))).unwrap_err();
    assert!(matches!(error, ConfigError::ParseFile { .. }), "{error:?}");
    let error =
        Config::from_sources(&env(&[]), Some((path, "[kafka]\ntopic = \"t\""))).unwrap_err();
    assert!(matches!(error, ConfigError::FileValue { .. }), "{error:?}");
}

#[test]
fn load_reads_config_file_named_by_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, "bus = \"nats\"\n").unwrap();
    let config = Config::load(&env(&[("CONFIG_FILE", path.to_str().unwrap())]), None).unwrap();
    assert_eq!(config.bus.kind, BusKind::Nats);
    let missing = dir.path().join("missing.toml");
    let error = Config::load(&env(&[]), Some(&missing)).unwrap_err();
    assert!(matches!(error, ConfigError::ReadFile { .. }));
}

#[test]
fn debug_of_whole_config_never_shows_a_secret() {
    let hmac = STANDARD.encode(b"hmac-secret-bytes-0123456789");
    let config = load(&[
        ("FLUENT_CLIENT_SECRET", "fluent-client-secret-value"),
        ("FLUENT_PASSWORD", "fluent-password-value"),
        ("CTP_CLIENT_SECRET", "ctp-client-secret-value"),
        ("WEBHOOK_HMAC_SECRETS", &format!("whsec_{hmac}")),
        (
            "KAFKA_PROPERTIES",
            "security.protocol=SASL_SSL,sasl.password=kafka-sasl-password",
        ),
        (
            "NATS_URL",
            "nats://user:nats-url-password@nats.internal:4222",
        ),
    ])
    .unwrap();
    let debug = format!("{config:?} {config:#?}");
    for secret in [
        "fluent-client-secret-value",
        "fluent-password-value",
        "ctp-client-secret-value",
        hmac.as_str(),
        "hmac-secret-bytes",
        "kafka-sasl-password",
        "nats-url-password",
    ] {
        assert!(!debug.contains(secret), "Debug shows {secret}: {debug}");
    }
    // The values are still there for the clients that need them.
    assert_eq!(
        config.ingest.hmac_secrets[0].expose_secret(),
        b"hmac-secret-bytes-0123456789"
    );
    assert_eq!(
        config.bus.kafka.properties.expose()[1].1,
        "kafka-sasl-password"
    );
    assert_eq!(
        config.bus.nats.urls[0].expose().password(),
        Some("nats-url-password")
    );
}

#[test]
fn invalid_secret_is_not_echoed() {
    let problems = invalid(&[("WEBHOOK_HMAC_SECRETS", "whsec_not*base64*secret")]);
    assert_eq!(problems[0].got, "<redacted>");
    assert!(
        !ConfigError::Invalid(problems)
            .to_string()
            .contains("not*base64")
    );
}

#[test]
fn parses_public_keys_as_base64_or_pem_lists() {
    let (one, two) = (fake_der(1), fake_der(2));
    let list = format!("{},{}\n", STANDARD.encode(&one), STANDARD.encode(&two));
    let config = load(&[("FLUENT_WEBHOOK_PUBLIC_KEYS", &list)]).unwrap();
    let ders: Vec<&[u8]> = config
        .ingest
        .public_keys
        .iter()
        .map(PublicKeyDer::der)
        .collect();
    assert_eq!(ders, [one.as_slice(), two.as_slice()]);

    let pem = |der: &[u8]| {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    };
    let config = load(&[(
        "FLUENT_WEBHOOK_PUBLIC_KEYS",
        &format!("{}{}", pem(&one), pem(&two)),
    )])
    .unwrap();
    assert_eq!(config.ingest.public_keys.len(), 2);
    assert_eq!(config.ingest.public_keys[1].der(), two.as_slice());

    let problems = invalid(&[("FLUENT_WEBHOOK_PUBLIC_KEYS", "bm90IGEga2V5")]);
    assert_eq!(problems[0].var, "FLUENT_WEBHOOK_PUBLIC_KEYS");
    let problems = invalid(&[(
        "FLUENT_WEBHOOK_PUBLIC_KEYS",
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
    )]);
    assert_eq!(problems[0].var, "FLUENT_WEBHOOK_PUBLIC_KEYS");
}

#[test]
fn parses_owned_partitions_against_partition_count() {
    let config = load(&[
        ("NATS_PARTITIONS", "8"),
        ("NATS_OWNED_PARTITIONS", "6-7,0,1-2,2"),
    ])
    .unwrap();
    assert_eq!(config.bus.nats.owned_partitions, [0, 1, 2, 6, 7]);
    assert!(config.bus.nats.owned_explicitly);
    let default = load(&[("NATS_PARTITIONS", "8")]).unwrap();
    assert_eq!(default.bus.nats.owned_partitions.len(), 8);
    assert!(
        !default.bus.nats.owned_explicitly,
        "the default is not a choice"
    );
    let problems = invalid(&[("NATS_PARTITIONS", "8"), ("NATS_OWNED_PARTITIONS", "8")]);
    assert_eq!(
        problems[0].to_string(),
        r#"NATS_OWNED_PARTITIONS: expected all, or partitions below 8 like 0-3,7, got "8""#
    );
}

#[test]
fn nats_max_deliver_is_unlimited_by_default_and_takes_minus_one_or_a_count() {
    assert_eq!(load(&[]).unwrap().bus.nats.max_deliver, -1);
    assert_eq!(
        load(&[("NATS_MAX_DELIVER", "5")])
            .unwrap()
            .bus
            .nats
            .max_deliver,
        5
    );
    for bad in ["0", "-2", "10001", "many"] {
        let problems = invalid(&[("NATS_MAX_DELIVER", bad)]);
        assert_eq!(problems[0].var, "NATS_MAX_DELIVER", "{bad}");
    }
}

#[test]
fn kafka_properties_keep_commas_inside_values() {
    let config = load(&[(
        "KAFKA_PROPERTIES",
        "debug=broker,topic,msg, linger.ms = 5,compression.type=lz4",
    )])
    .unwrap();
    let pairs: Vec<(&str, &str)> = config
        .bus
        .kafka
        .properties
        .expose()
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("debug", "broker,topic,msg"),
            ("linger.ms", "5"),
            ("compression.type", "lz4")
        ]
    );
    assert_eq!(
        invalid(&[("KAFKA_PROPERTIES", "=x")])[0].var,
        "KAFKA_PROPERTIES"
    );
}

#[test]
fn empty_optional_values_mean_unset() {
    let config = load(&[("CTP_SYNC_MARKER_FIELD", ""), ("FLUENT_API_URL", " ")]).unwrap();
    assert_eq!(config.commercetools.sync_marker_field, None);
    assert!(config.fluent.api_url.is_none());
    let config = load(&[("CTP_SCOPES", "manage_orders:p view_orders:p")]).unwrap();
    assert_eq!(
        config.commercetools.scopes,
        ["manage_orders:p", "view_orders:p"]
    );
}

#[test]
fn a_drain_that_may_outlast_the_kafka_poll_interval_is_refused() {
    let problems = invalid(&[("BUS_DRAIN_TIMEOUT_MS", "400000")]);
    assert_eq!(problems[0].var, "BUS_DRAIN_TIMEOUT_MS");
    assert!(problems[0].expected.contains("300000 ms"), "{problems:?}");
    let problems = invalid(&[
        ("BUS_DRAIN_TIMEOUT_MS", "30000"),
        ("KAFKA_PROPERTIES", "max.poll.interval.ms=20000"),
    ]);
    assert!(problems[0].expected.contains("20000 ms"), "{problems:?}");
    assert!(
        load(&[
            ("BUS_DRAIN_TIMEOUT_MS", "30000"),
            ("KAFKA_PROPERTIES", "max.poll.interval.ms=60000"),
        ])
        .is_ok()
    );
    // The limit is Kafka's: NATS has no rebalance to miss.
    assert!(load(&[("BUS", "nats"), ("BUS_DRAIN_TIMEOUT_MS", "400000")]).is_ok());
}

#[test]
fn a_processor_gets_one_report_of_every_missing_api_setting_with_the_other_problems() {
    let env = env(&[
        ("BUS", "rabbit"),
        ("FLUENT_API_URL", "https://acme.api.fluentretail.com"),
    ]);
    let problems = match Config::from_sources_for(&env, None, Needs::ORDER_STATUS_APIS) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected invalid values, got {other:?}"),
    };
    let vars: Vec<&str> = problems.iter().map(|problem| problem.var).collect();
    for var in [
        "BUS",
        "FLUENT_CLIENT_ID",
        "FLUENT_CLIENT_SECRET",
        "FLUENT_USERNAME",
        "FLUENT_PASSWORD",
        "CTP_API_URL",
        "CTP_AUTH_URL",
        "CTP_PROJECT_KEY",
        "CTP_CLIENT_ID",
        "CTP_CLIENT_SECRET",
    ] {
        assert!(vars.contains(&var), "{var} is not reported: {vars:?}");
    }
    assert!(
        !vars.contains(&"FLUENT_API_URL"),
        "a set value reported: {vars:?}"
    );
    let secret = problems
        .iter()
        .find(|p| p.var == "CTP_CLIENT_SECRET")
        .unwrap();
    assert_eq!(
        secret.to_string(),
        r#"CTP_CLIENT_SECRET: expected a value (the order-status handler calls this API), got "<unset>""#
    );
    // The gateway needs none of them.
    assert!(Config::from_sources_for(&HashMap::new(), None, Needs::NOTHING).is_ok());
}

#[test]
fn reads_the_standard_opentelemetry_variables() {
    let config = load(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ])
    .unwrap();
    assert_eq!(config.telemetry.otlp_protocol, OtlpProtocol::Grpc);
    assert_eq!(
        config.telemetry.sampler,
        TraceSampler::ParentBased(RootSampler::Ratio(0.25))
    );
    let defaults = load(&[]).unwrap().telemetry;
    assert_eq!(defaults.otlp_protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        defaults.sampler,
        TraceSampler::ParentBased(RootSampler::AlwaysOn)
    );
    let problems = invalid(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign"),
        ("INGEST_CLOUDEVENTS_SOURCE", "/fluent\r\ncommerce"),
    ]);
    let vars: Vec<&str> = problems.iter().map(|problem| problem.var).collect();
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
        "INGEST_CLOUDEVENTS_SOURCE",
    ] {
        assert!(vars.contains(&var), "{var} not reported in {vars:?}");
    }
}

#[test]
fn reads_the_exporters_headers_timeout_and_batching_and_never_echoes_the_headers() {
    let config = load(&[
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "X-Api-Key=s3cr%3Dt, x-team = a%2Cb",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8192"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1024"),
    ])
    .unwrap()
    .telemetry;
    let headers: Vec<(&str, &str)> = config
        .otlp_headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.expose_secret()))
        .collect();
    assert_eq!(headers, [("x-api-key", "s3cr=t"), ("x-team", "a,b")]);
    assert!(!format!("{config:?}").contains("s3cr"), "{config:?}");
    assert_eq!(config.otlp_timeout, Duration::from_millis(2500));
    assert_eq!(config.batch_delay, Duration::from_millis(200));
    assert_eq!((config.batch_queue, config.batch_size), (8192, 1024));
    // The signal's own variables win over the general ones.
    let traces = load(&[
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
    ])
    .unwrap()
    .telemetry;
    assert_eq!(traces.otlp_headers.len(), 1);
    assert_eq!(traces.otlp_headers[0].0, "b");
    assert_eq!(traces.otlp_timeout, Duration::from_millis(700));
    let defaults = load(&[]).unwrap().telemetry;
    assert!(defaults.otlp_headers.is_empty());
    assert_eq!(defaults.otlp_timeout, Duration::from_secs(10));
    assert_eq!(defaults.batch_delay, Duration::from_secs(5));
    assert_eq!((defaults.batch_queue, defaults.batch_size), (2048, 512));

    // A smaller queue alone shrinks the default batch with it.
    let small = load(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100")])
        .unwrap()
        .telemetry;
    assert_eq!((small.batch_queue, small.batch_size), (100, 100));

    let problems = invalid(&[
        ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=s3cret"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
    ]);
    let headers = problems
        .iter()
        .find(|problem| problem.var == "OTEL_EXPORTER_OTLP_HEADERS")
        .expect("the bad header reported");
    assert_eq!(headers.got, "<redacted>");
    assert!(!headers.to_string().contains("s3cret"), "{headers}");
    assert!(
        problems
            .iter()
            .any(|problem| problem.var == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        "{problems:?}"
    );
}

#[test]
fn required_fields_must_keep_what_every_record_is_made_of() {
    let problems = invalid(&[("WEBHOOK_REQUIRED_FIELDS", "id,accountId,entityRef")]);
    let problem = problems
        .iter()
        .find(|problem| problem.var == "WEBHOOK_REQUIRED_FIELDS")
        .expect("reported");
    assert!(problem.expected.contains("not name"), "{problem}");
    let config = load(&[("WEBHOOK_REQUIRED_FIELDS", "name,accountId,id")]).unwrap();
    assert_eq!(config.ingest.required_fields.names().count(), 3);
}

/// The README's configuration table: `(variables, defaults)` per row, each a list of what the
/// row's first and second columns hold in backticks (`A` / `B` pairs up with its defaults).
fn readme_rows() -> Vec<(Vec<String>, Vec<String>)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md beside the workspace");
    let table = readme
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("the README has its configuration table");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            // `| names | defaults | meaning |`: the first two cells hold no `|`.
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let names = ticked(cells[1])
                .into_iter()
                .filter(|name| {
                    name.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                })
                .collect();
            let defaults = cells[2]
                .split(" / ")
                .map(|text| text.trim().trim_matches('`').to_owned());
            (names, defaults.collect())
        })
        .collect()
}

#[test]
fn the_readme_documents_every_variable_the_configuration_reads_with_its_default() {
    let variables = Config::variables();
    let rows = readme_rows();
    let documented: std::collections::BTreeSet<&str> = rows
        .iter()
        .flat_map(|(names, _)| names.iter().map(String::as_str))
        .collect();
    let read: std::collections::BTreeSet<&str> = variables.keys().copied().collect();
    let undocumented: Vec<&&str> = read.difference(&documented).collect();
    let unknown: Vec<&&str> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "README table and Config disagree: not in the README {undocumented:?}; \
         in the README but never read {unknown:?}"
    );
    // Where a row gives one default per variable, each is the built-in one (or, for a
    // variable without a default, no value in backticks).
    let mut checked = 0;
    for (names, defaults) in &rows {
        if names.len() != defaults.len() {
            continue;
        }
        for (name, documented) in names.iter().zip(defaults) {
            match &variables[name.as_str()] {
                Some(default) => {
                    assert_eq!(documented, default, "README default of {name}");
                    checked += 1;
                }
                None => assert!(
                    documented.is_empty() || documented.contains(' '),
                    "README gives {name} the default {documented:?}; it has none"
                ),
            }
        }
    }
    assert!(checked > 40, "only {checked} defaults compared");
}

#[test]
fn otlp_tls_files_come_in_pairs_and_only_with_an_https_endpoint() {
    let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
    let config = load(&[
        https,
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "/etc/otel/client.pem",
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/otel/client.key"),
    ])
    .unwrap()
    .telemetry;
    assert_eq!(
        config.otlp_certificate.as_deref(),
        Some(std::path::Path::new("/etc/otel/ca.pem"))
    );
    assert_eq!(
        config.otlp_client_identity,
        Some(("/etc/otel/client.pem".into(), "/etc/otel/client.key".into()))
    );
    let alone = invalid(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem")]);
    assert_eq!(alone.len(), 1, "{alone:?}");
    assert_eq!(alone[0].var, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
    let plain = invalid(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
    ]);
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0].var, "OTEL_EXPORTER_OTLP_CERTIFICATE");
    assert!(plain[0].expected.contains("https"), "{plain:?}");
}

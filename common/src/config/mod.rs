//! Typed configuration for both stages, layered: built-in defaults, then an optional TOML file
//! (`--config` / `CONFIG_FILE`), then the environment.
//!
//! Loading is a pure function of an injected env map (tests run in parallel; mutating the
//! process environment would race), and validation happens once, here: the rest of the code
//! receives values already checked. Secrets are `secrecy` types and never appear in `Debug`.

mod parse;
mod sections;
mod source;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use sections::{
    BusConfig, CommercetoolsConfig, FluentApiConfig, IngestConfig, KafkaConfig, NatsConfig,
    OrderLookup, ProcessorConfig, TelemetryConfig,
};
pub use source::{InvalidValue, Origin};
pub use types::{
    BusKind, HmacSecret, KafkaProperties, LogFormat, OtlpProtocol, PublicKeyDer, RootSampler,
    Secret, ServerUrl, TraceSampler, UnknownNames,
};

use source::{FileLayer, Reader};

/// The whole configuration of the pipeline; each binary uses the sections it needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The message bus between the stages.
    pub bus: BusConfig,
    /// The webhook gateway.
    pub ingest: IngestConfig,
    /// The Fluent API.
    pub fluent: FluentApiConfig,
    /// The commercetools API.
    pub commercetools: CommercetoolsConfig,
    /// The consumer engine.
    pub processor: ProcessorConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config file {} is not valid TOML", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The TOML error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A key of the configuration file is unknown or its value has an unusable type.
    #[error("config file {}: `{key}`: {reason}", path.display())]
    FileValue {
        /// The file.
        path: PathBuf,
        /// The key as written in the file.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One or more values are invalid; every one is listed.
    #[error("invalid configuration: {}", list(.0))]
    Invalid(Vec<InvalidValue>),
}

fn list(problems: &[InvalidValue]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a binary needs beyond the settings every one reads: its required settings are then
/// checked with every other value, so one report names everything missing or invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The order-status handler's two APIs: `FLUENT_API_URL`, `FLUENT_CLIENT_ID`,
    /// `FLUENT_CLIENT_SECRET`, `FLUENT_USERNAME`, `FLUENT_PASSWORD`, `CTP_API_URL`,
    /// `CTP_AUTH_URL`, `CTP_PROJECT_KEY`, `CTP_CLIENT_ID`, `CTP_CLIENT_SECRET`.
    pub order_status_apis: bool,
}

impl Needs {
    /// Nothing beyond the common settings (the gateway, tools).
    pub const NOTHING: Self = Self {
        order_status_apis: false,
    };
    /// A processor running the order-status handler.
    pub const ORDER_STATUS_APIS: Self = Self {
        order_status_apis: true,
    };
}

impl Config {
    /// Loads the configuration: the file given (else `CONFIG_FILE` from `env`, if set), then
    /// `env` on top. The only I/O is reading that file.
    pub fn load(
        env: &HashMap<String, String>,
        config_file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        Self::load_for(env, config_file, Needs::NOTHING)
    }

    /// [`Config::load`], also requiring what `needs` names.
    pub fn load_for(
        env: &HashMap<String, String>,
        config_file: Option<&Path>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let path = config_file.map(Path::to_path_buf).or_else(|| {
            env.get("CONFIG_FILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let file = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Some((path, text))
            }
            None => None,
        };
        Self::from_sources_for(
            env,
            file.as_ref()
                .map(|(path, text)| (path.as_path(), text.as_str())),
            needs,
        )
    }

    /// Every setting at its built-in default: the one place defaults are defined, for code
    /// that needs them without an environment (the engine's `Default`, tests).
    pub fn defaults() -> Self {
        Self::from_sources(&HashMap::new(), None)
            .unwrap_or_else(|error| panic!("the built-in defaults do not validate: {error}"))
    }

    /// Builds the configuration from an env map and an optional `(path, TOML text)`: pure.
    pub fn from_sources(
        env: &HashMap<String, String>,
        file: Option<(&Path, &str)>,
    ) -> Result<Self, ConfigError> {
        Self::from_sources_for(env, file, Needs::NOTHING)
    }

    /// [`Config::from_sources`], also requiring what `needs` names: pure.
    pub fn from_sources_for(
        env: &HashMap<String, String>,
        file: Option<(&Path, &str)>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let file = file
            .map(|(path, text)| FileLayer::parse(path, text))
            .transpose()?;
        let mut reader = Reader::new(env, file);
        let config = Self::read(&mut reader);
        if needs.order_status_apis {
            sections::require_order_status_apis(&config, &mut reader);
        }
        reader.finish()?;
        Ok(config)
    }

    fn read(reader: &mut Reader<'_>) -> Self {
        Self {
            bus: sections::bus(reader),
            ingest: sections::ingest(reader),
            fluent: sections::fluent(reader),
            commercetools: sections::commercetools(reader),
            processor: sections::processor(reader),
            telemetry: sections::telemetry(reader),
        }
    }

    /// Every variable the configuration reads, with its built-in default text (`None`: unset
    /// by default), plus `CONFIG_FILE` and `PROCESSOR_DRY_RUN` (the command lines'): what the
    /// README's table documents, and what a deployment may set.
    pub fn variables() -> std::collections::BTreeMap<&'static str, Option<String>> {
        let env = HashMap::new();
        let mut reader = Reader::new(&env, None);
        let config = Self::read(&mut reader);
        sections::require_order_status_apis(&config, &mut reader);
        let mut variables = reader.variables();
        // Read by the binaries' command lines (`--config`, `--dry-run`).
        variables.insert("CONFIG_FILE", None);
        variables.insert("PROCESSOR_DRY_RUN", None);
        variables
    }

    /// The process environment as an env map, for `main`. Variables that are not UTF-8 are
    /// skipped: no setting of ours can use them.
    pub fn process_env() -> HashMap<String, String> {
        std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests;

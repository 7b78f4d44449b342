//! The layers configuration is read from: defaults, an optional TOML file, the environment.
//!
//! Every layer speaks the same flat vocabulary (the environment variable names; the file may
//! spell them in lower case), so a value means the same thing wherever it is set. The
//! [`Reader`] looks each key up (environment first, then file), parses it, and collects every
//! problem so start-up reports them all at once instead of one per restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Keys whose values are never echoed in error messages.
const SECRET_KEYS: &[&str] = &[
    "WEBHOOK_HMAC_SECRETS",
    "FLUENT_CLIENT_SECRET",
    "FLUENT_PASSWORD",
    "CTP_CLIENT_SECRET",
    "KAFKA_PROPERTIES",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "NATS_URL",
];

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The process environment (the injected env map).
    Env,
    /// The TOML configuration file at this path.
    File(PathBuf),
}

/// One invalid configuration value: the variable, what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    /// The variable name, e.g. `KAFKA_BROKERS`.
    pub var: &'static str,
    /// What a valid value looks like.
    pub expected: String,
    /// The value found (`<redacted>` for secrets).
    pub got: String,
    /// Where the value came from.
    pub origin: Origin,
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.var)?;
        if let Origin::File(path) = &self.origin {
            write!(f, " (in {})", path.display())?;
        }
        write!(f, ": expected {}, got {:?}", self.expected, self.got)
    }
}

/// The TOML file layer, flattened to the same key → text vocabulary as the environment.
#[derive(Debug, Default)]
pub(super) struct FileLayer {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

impl FileLayer {
    /// Parses the file's text. Keys are matched case-insensitively; lists become
    /// comma-separated text, numbers and booleans their TOML spelling.
    pub(super) fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })?;
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let text = flatten(&value).ok_or_else(|| ConfigError::FileValue {
                path: path.to_owned(),
                key: key.clone(),
                reason: "expected a string, number, boolean or list of those".into(),
            })?;
            values.insert(key.to_ascii_uppercase(), text);
        }
        Ok(Self {
            path: path.to_owned(),
            values,
        })
    }
}

fn flatten(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        toml::Value::Array(items) => {
            let items: Option<Vec<String>> = items
                .iter()
                .map(|item| match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => None,
                    scalar => flatten(scalar),
                })
                .collect();
            Some(items?.join(","))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// Looks keys up across the layers and collects every invalid value.
pub(super) struct Reader<'a> {
    env: &'a HashMap<String, String>,
    file: FileLayer,
    read: BTreeSet<&'static str>,
    /// The default text of each key read with one.
    defaults: BTreeMap<&'static str, String>,
    problems: Vec<InvalidValue>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a HashMap<String, String>, file: Option<FileLayer>) -> Self {
        Self {
            env,
            file: file.unwrap_or_default(),
            read: BTreeSet::new(),
            defaults: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<(String, Origin)> {
        self.read.insert(key);
        if let Some(value) = self.env.get(key) {
            return Some((value.clone(), Origin::Env));
        }
        self.file
            .values
            .get(key)
            .map(|value| (value.clone(), Origin::File(self.file.path.clone())))
    }

    /// Whether `key` is set in any layer (to anything but blanks).
    pub(super) fn is_set(&mut self, key: &'static str) -> bool {
        self.raw(key)
            .is_some_and(|(text, _)| !text.trim().is_empty())
    }

    /// Reads a key that has a default. An invalid value is recorded and the default used in
    /// its place, so reading can go on and report every problem; the result is discarded then.
    pub(super) fn value<T>(
        &mut self,
        key: &'static str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        self.defaults.insert(key, default.to_owned());
        if let Some((text, origin)) = self.raw(key) {
            match parse(&text) {
                Ok(value) => return value,
                Err(expected) => self.invalid(key, expected, &text, origin),
            }
        }
        parse(default).unwrap_or_else(|expected| {
            panic!("built-in default of {key} ({default:?}) is invalid: expected {expected}")
        })
    }

    /// Reads a key without a default; unset or empty means `None`.
    pub(super) fn optional<T>(
        &mut self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (text, origin) = self.raw(key)?;
        if text.trim().is_empty() {
            return None;
        }
        match parse(&text) {
            Ok(value) => Some(value),
            Err(expected) => {
                self.invalid(key, expected, &text, origin);
                None
            }
        }
    }

    /// Records that `var`, which this binary requires, is unset.
    pub(super) fn missing(&mut self, var: &'static str, expected: &str) {
        self.problems.push(InvalidValue {
            var,
            expected: expected.to_owned(),
            got: "<unset>".to_owned(),
            origin: Origin::Default,
        });
    }

    /// Records that `var`'s value (already read) does not fit with another setting.
    pub(super) fn conflict(&mut self, var: &'static str, expected: String, got: &str) {
        let origin = self.raw(var).map_or(Origin::Default, |(_, origin)| origin);
        self.invalid(var, expected, got, origin);
    }

    fn invalid(&mut self, var: &'static str, expected: String, got: &str, origin: Origin) {
        let got = if SECRET_KEYS.contains(&var) {
            "<redacted>".to_owned()
        } else {
            got.to_owned()
        };
        self.problems.push(InvalidValue {
            var,
            expected,
            got,
            origin,
        });
    }

    /// Every key read so far, with its default text when it has one.
    pub(super) fn variables(&self) -> BTreeMap<&'static str, Option<String>> {
        self.read
            .iter()
            .map(|key| (*key, self.defaults.get(key).cloned()))
            .collect()
    }

    /// Ends reading: fails with every invalid value, and with any file key nothing asked for
    /// (a typo in a file would otherwise be silently ignored).
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        let unknown: Vec<String> = self
            .file
            .values
            .keys()
            .filter(|key| !self.read.contains(key.as_str()))
            .cloned()
            .collect();
        if let Some(key) = unknown.into_iter().next() {
            return Err(ConfigError::FileValue {
                path: self.file.path,
                key,
                reason: "unknown key".into(),
            });
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.problems))
        }
    }
}

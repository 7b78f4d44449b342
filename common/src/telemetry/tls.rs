//! TLS for the OTLP exporters: the roots an `https` endpoint's certificate may chain to (the
//! system's and Mozilla's, and `OTEL_EXPORTER_OTLP_CERTIFICATE`'s), and the client identity a
//! receiver asking for mutual TLS gets (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_KEY`).
//! The files are read here, at start, so a path that is wrong stops the process with its name
//! instead of failing every export in the background.

use std::path::Path;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TelemetryConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The blocking HTTP client the OTLP/HTTP exporter sends with, trusting the configured CA
/// certificates besides the built-in roots and presenting the client identity, if any.
pub(super) fn http_client(
    config: &TelemetryConfig,
) -> Result<reqwest_otlp::blocking::Client, BoxError> {
    // reqwest is built without a provider of its own: ring, as for every other TLS client
    // here, becomes the process default (unless one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest_otlp::blocking::Client::builder().timeout(config.otlp_timeout);
    if let Some(path) = &config.otlp_certificate {
        let pem = read_pem(path, "OTEL_EXPORTER_OTLP_CERTIFICATE")?;
        let certificates = reqwest_otlp::Certificate::from_pem_bundle(&pem)
            .map_err(|error| file_error(path, "OTEL_EXPORTER_OTLP_CERTIFICATE", &error))?;
        builder = builder.tls_certs_merge(certificates);
    }
    if let Some((certificate, key)) = &config.otlp_client_identity {
        let mut pem = read_pem(certificate, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?;
        pem.push(b'\n');
        pem.extend(read_key(key)?);
        let identity = reqwest_otlp::Identity::from_pem(&pem).map_err(|error| {
            file_error(certificate, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &error)
        })?;
        builder = builder.identity(identity);
    }
    // A blocking client owns a runtime of its own, which may not be made (or dropped) on an
    // async worker: `init` may run on one.
    std::thread::Builder::new()
        .name("otlp-http-client".into())
        .spawn(move || builder.build())?
        .join()
        .map_err(|_| "building the OTLP HTTP client panicked")?
        .map_err(Into::into)
}

/// The gRPC exporter's TLS settings: the same roots and identity as [`http_client`].
pub(super) fn grpc_config(config: &TelemetryConfig) -> Result<ClientTlsConfig, BoxError> {
    let mut tls = ClientTlsConfig::new().with_enabled_roots();
    if let Some(path) = &config.otlp_certificate {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem(
            path,
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )?));
    }
    if let Some((certificate, key)) = &config.otlp_client_identity {
        tls = tls.identity(Identity::from_pem(
            read_pem(certificate, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
            read_key(key)?,
        ));
    }
    Ok(tls)
}

/// The file `variable` names, which must hold at least one PEM certificate.
fn read_pem(path: &Path, variable: &str) -> Result<Vec<u8>, BoxError> {
    let pem = std::fs::read(path).map_err(|error| file_error(path, variable, &error))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(file_error(path, variable, &"no PEM certificate in it"));
    }
    Ok(pem)
}

/// The client key file, which must hold a PEM private key.
fn read_key(path: &Path) -> Result<Vec<u8>, BoxError> {
    let variable = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
    let pem = std::fs::read(path).map_err(|error| file_error(path, variable, &error))?;
    if !String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        return Err(file_error(path, variable, &"no PEM private key in it"));
    }
    Ok(pem)
}

fn file_error(path: &Path, variable: &str, error: &dyn std::fmt::Display) -> BoxError {
    format!("{variable} {}: {error}", path.display()).into()
}

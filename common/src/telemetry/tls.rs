//! TLS for the OTLP exporters: the roots an `https` endpoint's certificate must chain to (the
//! system's and Mozilla's, or only `OTEL_EXPORTER_OTLP_CERTIFICATE`'s when it is set, as the
//! other OpenTelemetry SDKs read it), and the client identity a receiver asking for mutual
//! TLS gets (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_KEY`). The files are read and
//! parsed here, at start, and the key is checked against the certificate, so a wrong file
//! stops the process with its name instead of failing every export in the background.

use std::path::Path;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TelemetryConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CA: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";

/// The configured files, read and checked.
struct Files {
    /// The CA certificates, PEM and parsed.
    ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
    /// The client certificate chain and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Files {
    fn read(config: &TelemetryConfig) -> Result<Self, BoxError> {
        let ca = match &config.otlp_certificate {
            Some(path) => {
                let pem = read(path, CA)?;
                let certificates = certificates(&pem, path, CA)?;
                Some((pem, certificates))
            }
            None => None,
        };
        let identity = match &config.otlp_client_identity {
            Some((certificate_path, key_path)) => {
                let certificate = read(certificate_path, CLIENT_CERTIFICATE)?;
                let key = read(key_path, CLIENT_KEY)?;
                let chain = certificates(&certificate, certificate_path, CLIENT_CERTIFICATE)?;
                let private = PrivateKeyDer::from_pem_slice(&key).map_err(|error| {
                    file_error(
                        key_path,
                        CLIENT_KEY,
                        &format!("no PEM private key in it ({error})"),
                    )
                })?;
                check_pair(chain, private).map_err(|error| {
                    file_error(
                        key_path,
                        CLIENT_KEY,
                        &format!(
                            "is not the key of {CLIENT_CERTIFICATE} {}: {error}",
                            certificate_path.display()
                        ),
                    )
                })?;
                Some((certificate, key))
            }
            None => None,
        };
        Ok(Self { ca, identity })
    }
}

/// The blocking HTTP client the OTLP/HTTP exporter sends with: it verifies against the
/// configured CA, else the system's roots and Mozilla's (built in, so an image without a CA
/// bundle still starts), and presents the client identity, if any.
pub(super) fn http_client(
    config: &TelemetryConfig,
) -> Result<reqwest_otlp::blocking::Client, BoxError> {
    let files = Files::read(config)?;
    // reqwest is built without a provider of its own: ring, as for every other TLS client
    // here, becomes the process default (unless one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots: Vec<reqwest_otlp::Certificate> = match &files.ca {
        Some((_, certificates)) => certificates
            .iter()
            .filter_map(|der| reqwest_otlp::Certificate::from_der(der).ok())
            .collect(),
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .chain(webpki_root_certs::TLS_SERVER_ROOT_CERTS)
            .filter_map(|der| reqwest_otlp::Certificate::from_der(der).ok())
            .collect(),
    };
    let mut builder = reqwest_otlp::blocking::Client::builder()
        .timeout(config.otlp_timeout)
        // A redirect would carry the headers (a vendor's API key) to wherever it points.
        .redirect(reqwest_otlp::redirect::Policy::none())
        .tls_certs_only(roots);
    if let Some((certificate, key)) = &files.identity {
        let mut pem = certificate.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        let identity = reqwest_otlp::Identity::from_pem(&pem)
            .map_err(|error| format!("{CLIENT_CERTIFICATE} and {CLIENT_KEY}: {error:#}"))?;
        builder = builder.identity(identity);
    }
    // A blocking client owns a runtime of its own, which may not be made (or dropped) on an
    // async worker: `init` may run on one.
    std::thread::Builder::new()
        .name("otlp-http-client".into())
        .spawn(move || builder.build())?
        .join()
        .map_err(|_| "building the OTLP HTTP client panicked")?
        .map_err(|error| format!("building the OTLP HTTP client: {error:#}").into())
}

/// The gRPC exporter's TLS settings: the same roots and identity as [`http_client`].
pub(super) fn grpc_config(config: &TelemetryConfig) -> Result<ClientTlsConfig, BoxError> {
    let files = Files::read(config)?;
    let mut tls = match files.ca {
        Some((pem, _)) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_enabled_roots(),
    };
    if let Some((certificate, key)) = files.identity {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    Ok(tls)
}

/// Whether `key` belongs to the first certificate of `chain`.
fn check_pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    rustls::sign::CertifiedKey::new(chain, signing).keys_match()
}

/// The PEM certificates in `pem`, at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    variable: &str,
) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(path, variable, &format!("not PEM ({error})")))?;
    if certificates.is_empty() {
        return Err(file_error(path, variable, &"no PEM certificate in it"));
    }
    Ok(certificates)
}

fn read(path: &Path, variable: &str) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(|error| file_error(path, variable, &error))
}

fn file_error(path: &Path, variable: &str, error: &dyn std::fmt::Display) -> BoxError {
    format!("{variable} {}: {error}", path.display()).into()
}

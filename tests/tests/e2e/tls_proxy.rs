//! A TLS-terminating proxy with a fresh self-signed certificate (or one a fresh test CA
//! issued, with a client certificate for mutual TLS), for the tests that need a real TLS
//! session to a server that speaks only plain TCP (tansu, the sandbox APIs, the OTLP receiver).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A self-signed certificate for `127.0.0.1` and `localhost`: (PEM for clients, DER, key).
pub(crate) fn certificate()
-> anyhow::Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let issued = rcgen::generate_simple_self_signed(["127.0.0.1".into(), "localhost".into()])?;
    let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
    Ok((
        issued.cert.pem(),
        issued.cert.der().clone(),
        PrivateKeyDer::Pkcs8(key),
    ))
}

/// A fresh test CA, a server certificate it issued for `127.0.0.1` and `localhost`, and a
/// client certificate it issued.
pub(crate) struct Pki {
    /// The CA certificate, PEM (what a client is told to trust).
    pub(crate) ca_pem: String,
    /// The CA certificate (what a server asking for client certificates trusts).
    pub(crate) ca: CertificateDer<'static>,
    /// The server's certificate and key.
    pub(crate) server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    /// The client's certificate and key, PEM.
    pub(crate) client_pem: (String, String),
}

impl Pki {
    pub(crate) fn new() -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = params.signed_by(&server_key, &ca)?;
        let client_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "test client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params.signed_by(&client_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca: ca.der().clone(),
            server: (
                server.der().clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            ),
            client_pem: (client.pem(), client_key.serialize_pem()),
        })
    }
}

/// How the proxy speaks TLS beyond its certificate.
#[derive(Default)]
pub(crate) struct ProxyTls {
    /// The application protocols it offers (ALPN): `h2` for gRPC clients, which insist.
    pub(crate) alpn: Vec<Vec<u8>>,
    /// Ask for a client certificate issued by this CA, refusing a client without one.
    pub(crate) client_ca: Option<CertificateDer<'static>>,
}

/// Accepts TLS on `listener` and relays each connection to `upstream` in plain TCP.
pub(crate) async fn serve_tls_proxy(
    listener: TcpListener,
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    upstream: String,
) -> anyhow::Result<()> {
    serve_tls_proxy_with(listener, certificate, key, upstream, ProxyTls::default()).await
}

/// [`serve_tls_proxy`] speaking TLS as `tls` says.
pub(crate) async fn serve_tls_proxy_with(
    listener: TcpListener,
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    upstream: String,
    tls: ProxyTls,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(vec![certificate], key)?;
    config.alpn_protocols = tls.alpn;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (socket, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // A client that refuses our certificate ends its handshake here; nothing to relay.
            let Ok(mut tls) = acceptor.accept(socket).await else {
                return;
            };
            if let Ok(mut plain) = TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            }
        });
    }
}

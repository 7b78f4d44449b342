//! A TLS-terminating proxy with a fresh self-signed certificate, for the tests that need a
//! real TLS session to a server that speaks only plain TCP (tansu, the sandbox APIs).

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

/// Accepts TLS on `listener` and relays each connection to `upstream` in plain TCP.
pub(crate) async fn serve_tls_proxy(
    listener: TcpListener,
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    upstream: String,
) -> anyhow::Result<()> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certificate], key)?;
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

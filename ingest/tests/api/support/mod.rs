//! Test apps on real sockets, signing keys and request helpers.

pub(crate) mod raw;

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA512, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::bus::memory::MemoryBus;
use common::config::Config;
use tokio_util::sync::CancellationToken;

/// A runtime for property tests, which are synchronous.
pub(crate) static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Runtime::new().expect("a runtime"));

/// An RSA-2048 key pair that signs webhooks as Fluent does (SHA512withRSA, base64).
pub(crate) struct KeyPair {
    pair: RsaKeyPair,
}

impl KeyPair {
    /// A new key pair.
    pub(crate) fn generate() -> Self {
        Self {
            pair: RsaKeyPair::generate(KeySize::Rsa2048).expect("an RSA key"),
        }
    }

    /// One key pair shared by the tests of this binary (generation takes a while).
    pub(crate) fn shared() -> &'static Self {
        static SHARED: OnceLock<KeyPair> = OnceLock::new();
        SHARED.get_or_init(Self::generate)
    }

    /// The public key as base64 DER SubjectPublicKeyInfo, as Fluent publishes it.
    pub(crate) fn public_key_b64(&self) -> String {
        let der = self.pair.public_key().as_der().expect("SPKI encoding");
        STANDARD.encode(der.as_ref())
    }

    /// The `fluent-signature` value for `body`.
    pub(crate) fn sign(&self, body: impl AsRef<[u8]>) -> String {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA512,
                &SystemRandom::new(),
                body.as_ref(),
                &mut signature,
            )
            .expect("signing");
        STANDARD.encode(signature)
    }
}

/// A webhook body with the default required fields.
pub(crate) fn body(id: &str, order_ref: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"OrderStatus","accountId":"ACME","retailerId":"1","entityId":"1","entityRef":"{order_ref}","entityType":"ORDER","entityStatus":"BOOKED","type":"NORMAL","attributes":{{}},"meta":{{"mode":"SYNC"}},"rootEntityId":"1","rootEntityType":"ORDER","rootEntityRef":"{order_ref}"}}"#
    )
}

/// Standard Webhooks headers signing `body` with `secret`.
pub(crate) fn hmac_headers(
    secret: &[u8],
    id: &str,
    timestamp: u64,
    body: &str,
) -> Vec<(String, String)> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let signature = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        (
            "webhook-signature".into(),
            format!("v1,{}", STANDARD.encode(signature.as_ref())),
        ),
    ]
}

/// A configuration from `pairs` (and nothing from the process environment).
pub(crate) fn config(pairs: &[(&str, &str)]) -> Config {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    Config::from_sources(&env, None).expect("a valid test configuration")
}

/// The `error` code of a JSON error response.
pub(crate) async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    body["error"].as_str().expect("an error code").to_owned()
}

/// Polls `check` until true, failing after 10 seconds.
pub(crate) async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "condition not reached within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The webhook Fluent signed, from `../shared/upstream` (absent in users' clones).
pub(crate) struct FluentVector {
    pub(crate) body: Vec<u8>,
    pub(crate) signature: String,
    pub(crate) flex_signature: String,
    pub(crate) public_key: String,
}

impl FluentVector {
    pub(crate) fn load() -> Option<Self> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/upstream/fluent-webhook-vector");
        let text = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|t| t.trim().to_owned())
        };
        Some(Self {
            body: std::fs::read(dir.join("body.json")).ok()?,
            signature: text("fluent-signature.b64")?,
            flex_signature: text("flex-signature.b64")?,
            public_key: text("public-key.b64")?,
        })
    }
}

/// Builds a [`TestApp`]: memory bus unless told otherwise.
#[derive(Default)]
pub(crate) struct Builder {
    keys: Vec<String>,
    secrets: Vec<String>,
    env: Vec<(String, String)>,
    memory: Option<MemoryBus>,
}

impl Builder {
    pub(crate) fn key(mut self, key: &KeyPair) -> Self {
        self.keys.push(key.public_key_b64());
        self
    }

    pub(crate) fn public_key_b64(mut self, key: &str) -> Self {
        self.keys.push(key.to_owned());
        self
    }

    pub(crate) fn hmac_secret(mut self, secret: &[u8]) -> Self {
        self.secrets
            .push(format!("whsec_{}", STANDARD.encode(secret)));
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(crate) async fn spawn(self) -> TestApp {
        let mut pairs: Vec<(String, String)> = vec![("BUS".into(), "memory".into())];
        if !self.keys.is_empty() {
            pairs.push(("FLUENT_WEBHOOK_PUBLIC_KEYS".into(), self.keys.join(",")));
        }
        if !self.secrets.is_empty() {
            pairs.push(("WEBHOOK_HMAC_SECRETS".into(), self.secrets.join(",")));
        }
        pairs.extend(self.env);
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config = config(&borrowed);
        let memory = self.memory.unwrap_or_default();
        let app = ingest::App::build(&config, &memory)
            .await
            .expect("the app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(listener, shutdown.clone()));
        TestApp {
            address,
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            memory,
            shutdown,
            server: std::sync::Mutex::new(Some(server)),
        }
    }
}

/// A gateway serving on a real socket.
pub(crate) struct TestApp {
    pub(crate) address: std::net::SocketAddr,
    base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) memory: MemoryBus,
    shutdown: CancellationToken,
    server: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), ingest::StartError>>>>,
}

impl TestApp {
    pub(crate) fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn post(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        self.post_to("/webhooks/fluent", body, headers).await
    }

    /// Posts `body` signed with `key` in `fluent-signature`.
    pub(crate) async fn post_signed(&self, key: &KeyPair, body: &str) -> reqwest::Response {
        self.post(body, &[("fluent-signature", &key.sign(body))])
            .await
    }

    pub(crate) async fn post_bytes(
        &self,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.send("/webhooks/fluent", body.to_vec(), headers).await
    }

    pub(crate) async fn post_headers(
        &self,
        body: &str,
        headers: Vec<(String, String)>,
    ) -> reqwest::Response {
        let borrowed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.post(body, &borrowed).await
    }

    pub(crate) async fn post_to(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.send(path, body.as_bytes().to_vec(), headers).await
    }

    async fn send(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the gateway answers")
    }

    /// Cancels the server after `delay` and waits for it to stop.
    pub(crate) async fn stop_after(&self, delay: Duration) -> Result<(), ingest::StartError> {
        tokio::time::sleep(delay).await;
        self.shutdown.cancel();
        let server = self.server.lock().unwrap().take().expect("running");
        server.await.expect("the server task")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One app shared by property-test cases (spawned on [`RUNTIME`]).
pub(crate) async fn shared_app() -> &'static TestApp {
    static APP: tokio::sync::OnceCell<TestApp> = tokio::sync::OnceCell::const_new();
    APP.get_or_init(|| async { TestApp::builder().key(KeyPair::shared()).spawn().await })
        .await
}

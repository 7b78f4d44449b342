//! Helpers shared by the end-to-end tests: where the real brokers are, and unique names so
//! tests can run in parallel against one broker without seeing each other's data.

pub mod bus;
pub mod kafka;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod soak;
pub mod webhook;

use std::time::Duration;

/// How long a test waits for a broker to do something before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The Kafka broker of the test run (`TEST_KAFKA_BROKERS`). Panics with instructions when it
/// is not set: a test that needs a broker never passes without one.
pub fn kafka_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "TEST_KAFKA_BROKERS is not set: run ./scripts/test, which starts a tansu broker, or \
             start a Kafka-protocol broker yourself and export TEST_KAFKA_BROKERS=127.0.0.1:PORT"
        )
    })
}

/// The NATS server of the test run (`TEST_NATS_URL`), with JetStream enabled. Panics with
/// instructions when it is not set.
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_NATS_URL is not set: run ./scripts/test, or start `nats-server -js` and export \
             TEST_NATS_URL=nats://127.0.0.1:4222"
        )
    })
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A private `nats-server -js` on a free port, stopped when dropped: for tests that stop a
/// server on purpose.
pub struct NatsServer {
    child: std::process::Child,
    /// Its URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the test run's server binary (`TEST_NATS_SERVER_BIN`, else `nats-server`) and
    /// waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let binary = std::env::var("TEST_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        Self::start_binary(&binary)
    }

    /// Starts a server older than JetStream's priority groups (`TEST_NATS_LEGACY_BIN`, which
    /// `./scripts/test` sets to Debian's nats-server 2.9).
    pub fn start_legacy() -> anyhow::Result<Self> {
        let binary = std::env::var("TEST_NATS_LEGACY_BIN").map_err(|_| {
            anyhow::anyhow!(
                "TEST_NATS_LEGACY_BIN is not set: run ./scripts/test, or export it as the path of \
                 a nats-server before 2.11 (Debian's package)"
            )
        })?;
        Self::start_binary(&binary)
    }

    fn start_binary(binary: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot run {binary}: run ./scripts/test, which installs it")
            })?;
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let until = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

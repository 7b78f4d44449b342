//! Simulators of the two SaaS APIs the pipeline talks to (Fluent and commercetools), for the
//! demo, tests and benchmarks. They are written from the public API documentation and share no
//! types with the clients they test, so a client bug cannot hide behind a shared mistake.
//!
//! One HTTP server serves both: Fluent under `/fluent` (`FLUENT_API_URL=<base>/fluent`),
//! commercetools under `/ct` (`CTP_AUTH_URL=<base>/ct`, `CTP_API_URL=<base>/ct`), and an admin
//! API under `/admin` to seed data, read results and inject faults. Both OAuth flows issue
//! tokens that expire; GraphQL documents are validated against schemas that mirror the real
//! ones (`schema/`); commercetools versions grow with every update and a stale version gets
//! `ConcurrentModification` with `currentVersion`.

mod admin;
pub mod graphql;
pub mod introspection;
mod routes;
pub mod seed;
pub mod state;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use apollo_compiler::Schema;
use apollo_compiler::validation::Valid;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::{CtOrder, Endpoint, Fault, FaultBody, FluentOrder, Setting, Update};

/// The Fluent subset schema the sandbox validates against.
pub const FLUENT_SDL: &str = include_str!("../schema/fluent.graphql");
/// The commercetools subset schema the sandbox validates against.
pub const COMMERCETOOLS_SDL: &str = include_str!("../schema/commercetools.graphql");

/// Credentials the sandbox accepts and how long its tokens live.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Fluent `client_id`.
    pub fluent_client_id: String,
    /// Fluent `client_secret`.
    pub fluent_client_secret: String,
    /// Fluent `username`.
    pub fluent_username: String,
    /// Fluent `password`.
    pub fluent_password: String,
    /// commercetools client id.
    pub ct_client_id: String,
    /// commercetools client secret.
    pub ct_client_secret: String,
    /// commercetools project key.
    pub project_key: String,
    /// Token lifetime (both APIs).
    pub token_lifetime: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            fluent_client_id: "sandbox".into(),
            fluent_client_secret: "sandbox-secret".into(),
            fluent_username: "sandbox-user".into(),
            fluent_password: "sandbox-password".into(),
            ct_client_id: "sandbox".into(),
            ct_client_secret: "sandbox-secret".into(),
            project_key: "sandbox-project".into(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

impl SandboxConfig {
    /// The processor's configuration for talking to a sandbox served at `base`
    /// (`http://host:port`): the `FLUENT_*` and `CTP_*` variables.
    pub fn client_env(&self, base: &str) -> Vec<(&'static str, String)> {
        vec![
            ("FLUENT_API_URL", format!("{base}/fluent")),
            ("FLUENT_CLIENT_ID", self.fluent_client_id.clone()),
            ("FLUENT_CLIENT_SECRET", self.fluent_client_secret.clone()),
            ("FLUENT_USERNAME", self.fluent_username.clone()),
            ("FLUENT_PASSWORD", self.fluent_password.clone()),
            ("CTP_API_URL", format!("{base}/ct")),
            ("CTP_AUTH_URL", format!("{base}/ct")),
            ("CTP_PROJECT_KEY", self.project_key.clone()),
            ("CTP_CLIENT_ID", self.ct_client_id.clone()),
            ("CTP_CLIENT_SECRET", self.ct_client_secret.clone()),
            ("CTP_SCOPES", format!("manage_orders:{}", self.project_key)),
        ]
    }
}

struct Inner {
    config: SandboxConfig,
    fluent_schema: Valid<Schema>,
    ct_schema: Valid<Schema>,
    fluent_documents: graphql::DocumentCache,
    ct_documents: graphql::DocumentCache,
    state: Mutex<state::State>,
}

/// Both simulated APIs. Clones share one state.
#[derive(Clone)]
pub struct Sandbox(Arc<Inner>);

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandbox")
    }
}

impl Sandbox {
    /// An empty sandbox accepting `config`'s credentials.
    pub fn new(config: SandboxConfig) -> Self {
        let schema = |sdl: &str, name: &str| {
            Schema::parse_and_validate(sdl, name).unwrap_or_else(|errors| {
                panic!("the sandbox's {name} does not load: {}", errors.errors)
            })
        };
        let state = state::State {
            token_lifetime: config.token_lifetime,
            started: Some(tokio::time::Instant::now()),
            ..state::State::default()
        };
        Self(Arc::new(Inner {
            fluent_schema: schema(FLUENT_SDL, "fluent.graphql"),
            ct_schema: schema(COMMERCETOOLS_SDL, "commercetools.graphql"),
            fluent_documents: graphql::DocumentCache::default(),
            ct_documents: graphql::DocumentCache::default(),
            config,
            state: Mutex::new(state),
        }))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, state::State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The credentials it accepts.
    pub fn config(&self) -> &SandboxConfig {
        &self.0.config
    }

    /// The API and admin routes.
    pub fn router(&self) -> Router {
        routes::router(self.clone()).merge(admin::router(self.clone()))
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Stores `settings` (name, JSON value) as account-level Fluent settings: how Fluent's
    /// documented mapping is set up (`seed::documented_mapping`).
    pub fn put_account_settings(&self, settings: &[(&str, serde_json::Value)]) {
        for (name, value) in settings {
            self.put_setting(Setting {
                name: (*name).to_owned(),
                context: "ACCOUNT".into(),
                context_id: 0,
                lob_value: Some(value.clone()),
                value: None,
            });
        }
    }

    /// Adds or replaces a Fluent order (an empty id gets one).
    pub fn put_fluent_order(&self, mut order: FluentOrder) {
        if order.id.is_empty() {
            order.id = fastrand::u32(1_000..u32::MAX).to_string();
        }
        self.state()
            .fluent_orders
            .insert(order.order_ref.clone(), order);
    }

    /// Adds or replaces a setting (same name, context and context id).
    pub fn put_setting(&self, setting: Setting) {
        let mut state = self.state();
        state.settings.retain(|s| {
            (s.name.as_str(), s.context.as_str(), s.context_id)
                != (
                    setting.name.as_str(),
                    setting.context.as_str(),
                    setting.context_id,
                )
        });
        state.settings.push(setting);
    }

    /// Adds or replaces a commercetools order (an empty id gets one); returns its id.
    pub fn put_ct_order(&self, mut order: CtOrder) -> String {
        if order.id.is_empty() {
            order.id = uuid::Uuid::new_v4().to_string();
        }
        let id = order.id.clone();
        self.state().ct_orders.insert(id.clone(), order);
        id
    }

    /// A commercetools order by id.
    pub fn ct_order(&self, id: &str) -> Option<CtOrder> {
        self.state().ct_orders.get(id).cloned()
    }

    /// The ids of every commercetools order (in no particular order).
    pub fn ct_order_ids(&self) -> Vec<String> {
        self.state().ct_orders.keys().cloned().collect()
    }

    /// How many `updateOrder` calls arrived while another one for the same order was still
    /// being answered: one order's events handled in two places at once.
    pub fn overlapping_updates(&self) -> u64 {
        self.state().overlapping_updates
    }

    /// Every access token either token endpoint has issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().tokens.keys().cloned().collect()
    }

    /// The successful updates of a commercetools order, oldest first.
    pub fn history(&self, id: &str) -> Vec<Update> {
        self.state().history.get(id).cloned().unwrap_or_default()
    }

    /// Another writer changes the order: its version grows, nothing else.
    pub fn bump_version(&self, id: &str) {
        if let Some(order) = self.state().ct_orders.get_mut(id) {
            order.version += 1;
        }
    }

    /// The next `count` updates of order `id` meet a concurrent writer.
    pub fn force_conflicts(&self, id: &str, count: u32) {
        self.state().forced_conflicts.insert(id.to_owned(), count);
    }

    /// Injects `fault` into `endpoint` (a default fault clears it).
    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.state().faults.insert(endpoint, fault);
    }

    /// Every issued token stops working (as when a token expires or is revoked).
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// Milliseconds since the sandbox started: the clock of [`Update::at_ms`].
    pub fn elapsed_ms(&self) -> f64 {
        self.state().elapsed_ms()
    }

    /// The latest `traceparent` headers `endpoint` (a GraphQL one) was called with.
    pub fn traceparents(&self, endpoint: Endpoint) -> Vec<String> {
        self.state()
            .traceparents
            .get(&endpoint)
            .cloned()
            .unwrap_or_default()
    }

    /// Calls per endpoint so far.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.state()
            .calls
            .get(&endpoint)
            .copied()
            .unwrap_or_default()
    }
}

//! The two APIs as this handler calls them: the GraphQL call with its OAuth token cache and
//! error classification (`api`, `oauth`), the Fluent and commercetools clients, and the
//! GraphQL documents they send.

pub mod api;
pub mod commercetools;
pub mod documents;
pub mod fluent;
pub mod oauth;

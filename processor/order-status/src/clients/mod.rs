//! The two APIs as this handler calls them: the GraphQL call and its error classification
//! (`api`), the OAuth token cache (`oauth`), the two put together (`endpoint`), the Fluent
//! and commercetools clients, and the GraphQL documents they send.

pub mod api;
pub mod commercetools;
pub mod documents;
mod endpoint;
pub mod fluent;
pub mod oauth;

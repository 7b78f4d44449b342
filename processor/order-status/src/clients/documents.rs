//! Every GraphQL document the order-status handler sends (and the operator's one-off
//! `CT_ADD_SYNC_MARKER_FIELD`), in one place, so one test can validate them all against the
//! real Fluent and commercetools schemas.
//!
//! Variables carry every value (never string interpolation), so an order ref or a setting name
//! can never change a document's meaning.

/// Fluent: the order behind an event, with what finding its commercetools order needs.
pub const FLUENT_ORDER_BY_REF: &str = "\
query OrderByRef($ref: String!) {
  order(ref: $ref) {
    id ref type status
    retailer { id }
    attributes { name type value }
  }
}";

/// Fluent: the status-mapping settings at RETAILER and ACCOUNT context in one call.
pub const FLUENT_SETTINGS: &str = "\
query MappingSettings($names: [String], $contexts: [String!], $contextIds: [Int!]) {
  settings(name: $names, context: $contexts, contextId: $contextIds, first: 100) {
    edges { node { name context contextId value lobValue } }
  }
}";

/// commercetools: an order's header states by order number, with the sync marker field (an
/// empty `fields` list asks for none).
pub const CT_ORDER_BY_NUMBER: &str = "\
query OrderByNumber($orderNumber: String!, $fields: [String!]) {
  order(orderNumber: $orderNumber) {
    id version orderState paymentState shipmentState
    custom { customFieldsRaw(includeNames: $fields) { name value } }
  }
}";

/// commercetools: the same, by order id.
pub const CT_ORDER_BY_ID: &str = "\
query OrderById($id: String!, $fields: [String!]) {
  order(id: $id) {
    id version orderState paymentState shipmentState
    custom { customFieldsRaw(includeNames: $fields) { name value } }
  }
}";

/// commercetools: change header states (and set the sync marker) at a known version.
pub const CT_UPDATE_ORDER: &str = "\
mutation UpdateOrder($id: String!, $version: Long!, $actions: [OrderUpdateAction!]!) {
  updateOrder(id: $id, version: $version, actions: $actions) {
    id version orderState paymentState shipmentState
  }
}";

/// commercetools: adds the sync marker field to an existing order custom type (run once by an
/// operator; shown in docs/architecture.md, kept here so the test proves it valid).
pub const CT_ADD_SYNC_MARKER_FIELD: &str = "\
mutation AddSyncMarkerField($typeKey: String!, $version: Long!, $name: String!) {
  updateTypeDefinition(key: $typeKey, version: $version, actions: [{ addFieldDefinition: {
    fieldDefinition: { name: $name, required: false, inputHint: SingleLine,
      label: [{ locale: \"en\", value: \"Fluent sync position\" }], type: { String: {} } } } }]) {
    key version
  }
}";

/// Every Fluent document, named for test messages.
pub const FLUENT: &[(&str, &str)] = &[
    ("FLUENT_ORDER_BY_REF", FLUENT_ORDER_BY_REF),
    ("FLUENT_SETTINGS", FLUENT_SETTINGS),
];

/// Every commercetools document, named for test messages.
pub const COMMERCETOOLS: &[(&str, &str)] = &[
    ("CT_ORDER_BY_NUMBER", CT_ORDER_BY_NUMBER),
    ("CT_ORDER_BY_ID", CT_ORDER_BY_ID),
    ("CT_UPDATE_ORDER", CT_UPDATE_ORDER),
    ("CT_ADD_SYNC_MARKER_FIELD", CT_ADD_SYNC_MARKER_FIELD),
];

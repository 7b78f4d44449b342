//! What the mapping settings and the order lookups decide.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn walks_an_order_through_the_documented_mapping_step_by_step() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_1001", "7");
    let steps = [
        ("RECEIVED", states("Open", Some("Pending"), Some("Pending"))),
        ("BOOKED", states("Confirmed", Some("Paid"), Some("Pending"))),
        (
            "PICK_PACK",
            states("Confirmed", Some("Paid"), Some("Pending")),
        ),
        // Unmapped: nothing changes.
        (
            "SOMETHING_ELSE",
            states("Confirmed", Some("Paid"), Some("Pending")),
        ),
        (
            "AWAITING_COURIER_COLLECTION",
            states("Confirmed", Some("Paid"), Some("Shipped")),
        ),
        (
            "COMPLETE",
            states("Complete", Some("Paid"), Some("Shipped")),
        ),
    ];
    for (published, (status, expected)) in (1..).zip(steps) {
        pipeline.event("HD_1001", "7", status);
        pipeline.settled(published).await;
        assert_eq!(pipeline.states(&id), expected, "after {status}");
    }
    // PICK_PACK changed nothing and SOMETHING_ELSE is unmapped: four updates, no no-op ones.
    let history = pipeline.sandbox.history(&id);
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(pipeline.metrics.unmapped.get(), 1);
    assert!(pipeline.bus.dead_letters().is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retailer_setting_overrides_the_account_one() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    pipeline.settings(
        &[(ORDER_SETTING, json!({"fluent": {"BOOKED": "Complete"}}))],
        "RETAILER",
        7,
    );
    let id = pipeline.order("HD_2001", "7");
    pipeline.event("HD_2001", "7", "BOOKED");
    pipeline.settled(1).await;
    // Order state from the RETAILER setting; payment and shipping from ACCOUNT.
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Pending"))
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_mapping_value_goes_to_the_dlq_naming_the_setting_and_value() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(
        &[(SHIPPING_SETTING, json!({"fluent": {"BOOKED": "Sent"}}))],
        "ACCOUNT",
        0,
    );
    let id = pipeline.order("HD_3001", "7");
    pipeline.event("HD_3001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(
        error.contains(SHIPPING_SETTING) && error.contains("`Sent`"),
        "{error}"
    );
    assert_eq!(
        letters[0].headers.get_str(headers::DLQ_ERROR_CLASS),
        Some("permanent")
    );
    assert_eq!(pipeline.metrics.config_errors.get(), 1);
    assert!(pipeline.sandbox.history(&id).is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_commercetools_does_not_have_goes_to_the_dlq() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    pipeline.sandbox.put_fluent_order(FluentOrder {
        id: "55".into(),
        order_ref: "HD_4001".into(),
        order_type: "HD".into(),
        status: "BOOKED".into(),
        retailer_id: "7".into(),
        attributes: Vec::new(),
    });
    pipeline.event("HD_4001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("commercetools has no order"), "{error}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_commercetools_order_is_found_by_each_lookup_strategy() {
    for (lookup, order_ref, attribute) in [
        ("id", "", None),
        ("id-without-prefix:HD_", "HD_", None),
        ("attribute:ctOrderId", "FL-8001", Some("ctOrderId")),
    ] {
        let pipeline = Pipeline::start(&[("CTP_ORDER_LOOKUP", lookup)]).await;
        pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
        let id = pipeline.sandbox.put_ct_order(CtOrder {
            id: String::new(),
            order_number: None,
            version: 1,
            order_state: "Open".into(),
            payment_state: None,
            shipment_state: None,
            custom: Default::default(),
        });
        let order_ref = match lookup {
            "id" => id.clone(),
            "id-without-prefix:HD_" => format!("{order_ref}{id}"),
            _ => order_ref.to_owned(),
        };
        let attributes = attribute
            .map(|name| vec![json!({"name": name, "type": "STRING", "value": id})])
            .unwrap_or_default();
        pipeline.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.clone(),
            order_type: "HD".into(),
            status: "BOOKED".into(),
            retailer_id: "7".into(),
            attributes,
        });
        pipeline.event(&order_ref, "7", "BOOKED");
        pipeline.settled(1).await;
        assert_eq!(
            pipeline.states(&id),
            states("Confirmed", Some("Paid"), Some("Pending")),
            "lookup {lookup}"
        );
        pipeline.stop().await;
    }
}

//! What the bus and the misbehaving APIs do to the handler: retries, waits, redelivery.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn survives_revoked_tokens_concurrent_writers_and_error_bursts() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_5001", "7");
    pipeline.event("HD_5001", "7", "RECEIVED");
    pipeline.settled(1).await;
    // Tokens expire, another writer bumps the version three times, and both APIs fail a few
    // calls with 503 and 429.
    pipeline.sandbox.revoke_tokens();
    pipeline.sandbox.force_conflicts(&id, 3);
    let burst = |status| Fault {
        fail_next: 3,
        status: Some(status),
        ..Fault::default()
    };
    pipeline
        .sandbox
        .set_fault(Endpoint::FluentGraphql, burst(503));
    pipeline.sandbox.set_fault(Endpoint::CtGraphql, burst(429));
    pipeline.event("HD_5001", "7", "BOOKED");
    pipeline.settled(2).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    assert!(pipeline.metrics.conflicts.get() >= 3);
    let mut registry = prometheus_client::registry::Registry::default();
    pipeline.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    // Calls by API and outcome, summed over the operations.
    let calls = |api: &str, outcome: &str| -> u64 {
        text.lines()
            .filter(|line| line.starts_with("processor_api_request_duration_seconds_count{"))
            .filter(|line| {
                line.contains(&format!(r#"api="{api}""#))
                    && line.contains(&format!(r#"outcome="{outcome}""#))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(calls("fluent", "http_status"), 3, "{text}");
    assert_eq!(calls("commercetools", "http_status"), 3, "{text}");
    for (api, outcome) in [
        ("fluent", "unauthorized"),
        ("commercetools", "graphql_error"),
        ("commercetools", "ok"),
    ] {
        assert!(
            calls(api, outcome) > 0,
            "no {api} {outcome} call in:\n{text}"
        );
    }
    for series in [
        r#"api="commercetools",operation="UpdateOrder",outcome="ok""#,
        r#"api="fluent",operation="OrderByRef",outcome="ok""#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(
        pipeline.sandbox.calls(Endpoint::FluentToken) >= 2,
        "the token was fetched again"
    );
    pipeline.stop().await;
}

/// The states applying `statuses` one by one passes through, starting from `start`; a status
/// no mapping covers (or that changes nothing) adds no step.
fn one_by_one(
    start: (String, Option<String>, Option<String>),
    statuses: &[&str],
) -> Vec<(String, Option<String>, Option<String>)> {
    let mapping = documented_mapping();
    let lookup = |setting: usize, status: &str| {
        mapping[setting].1["fluent"][status].as_str().map(|value| {
            // The documented payment values are lower case; commercetools spells them so.
            let mut chars = value.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
    };
    let mut current = start;
    let mut steps = Vec::new();
    for status in statuses {
        let next = (
            lookup(0, status).unwrap_or_else(|| current.0.clone()),
            lookup(1, status).or_else(|| current.1.clone()),
            lookup(2, status).or_else(|| current.2.clone()),
        );
        if next != current {
            steps.push(next.clone());
            current = next;
        }
    }
    steps
}

#[tokio::test(flavor = "multi_thread")]
async fn many_orders_end_as_the_fold_of_their_events_and_never_step_out_of_order() {
    const STATUSES: &[&str] = &[
        "RECEIVED",
        "PENDING_PAYMENT",
        "BOOKED",
        "PICK_PACK",
        "AWAITING_COURIER_COLLECTION",
        "COMPLETE",
        "CANCELLED",
        "ESCALATED",
        "UNMAPPED_STATUS",
    ];
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let mut rng = fastrand::Rng::with_seed(20261128);
    let orders: Vec<(String, String, Vec<&str>)> = (0..40)
        .map(|n| {
            let order_ref = format!("HD_9{n:03}");
            let id = pipeline.order(&order_ref, "7");
            let events = (0..rng.usize(1..9))
                .map(|_| STATUSES[rng.usize(..STATUSES.len())])
                .collect();
            (order_ref, id, events)
        })
        .collect();
    // Interleave the orders' events, each order's in its own order.
    let mut cursors = vec![0; orders.len()];
    let total: usize = orders.iter().map(|(_, _, events)| events.len()).sum();
    for _ in 0..total {
        let pending: Vec<usize> = (0..orders.len())
            .filter(|i| cursors[*i] < orders[*i].2.len())
            .collect();
        let pick = pending[rng.usize(..pending.len())];
        let (order_ref, _, events) = &orders[pick];
        pipeline.event(order_ref, "7", events[cursors[pick]]);
        cursors[pick] += 1;
    }
    pipeline.settled(total as u64).await;
    for (order_ref, id, events) in &orders {
        let start = states("Open", None, None);
        let steps = one_by_one(start.clone(), events);
        let expected = steps.last().cloned().unwrap_or(start);
        assert_eq!(
            pipeline.states(id),
            expected,
            "{order_ref} after {events:?}"
        );
        // Every update the sandbox saw is one of the one-by-one states, in order (coalescing
        // may skip some; none may come out of order).
        let mut remaining = steps.iter();
        for update in pipeline.sandbox.history(id) {
            let seen = (
                update.order_state,
                update.payment_state,
                update.shipment_state,
            );
            assert!(
                remaining.any(|step| *step == seen),
                "{order_ref}: update {seen:?} is not next in {steps:?} ({events:?})"
            );
        }
    }
    assert!(pipeline.bus.dead_letters().is_empty());
    let coalesced = pipeline
        .stats
        .coalesced
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        coalesced > 0,
        "the burst should have been coalesced somewhere"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_sync_marker_a_full_redelivery_never_steps_an_order_back() {
    for marker in [false, true] {
        let extra: &[(&str, &str)] = if marker {
            &[("CTP_SYNC_MARKER_FIELD", "fluentSyncPosition")]
        } else {
            &[]
        };
        let pipeline = Pipeline::start(extra).await;
        pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
        let id = pipeline.order("HD_6001", "7");
        for (published, status) in (1..).zip(["RECEIVED", "BOOKED", "COMPLETE"]) {
            pipeline.event("HD_6001", "7", status);
            pipeline.settled(published).await;
        }
        let done = states("Complete", Some("Paid"), Some("Shipped"));
        assert_eq!(pipeline.states(&id), done);
        let updates = pipeline.sandbox.history(&id).len();
        let replay = pipeline.replay_everything("after-a-crash").await;
        assert_eq!(
            pipeline.states(&id),
            done,
            "the replay ends where the order was"
        );
        let history = pipeline.sandbox.history(&id);
        if marker {
            let stored =
                pipeline.sandbox.ct_order(&id).unwrap().custom["fluentSyncPosition"].clone();
            let stored = SyncMarker::parse(stored.as_str());
            let last = pipeline.bus.published().last().unwrap().0;
            assert_eq!(stored.position, Some(last));
            assert_eq!(stored.events.len(), 3, "{stored:?}");
            assert_eq!(
                history.len(),
                updates,
                "no update during the replay: {history:?}"
            );
            assert!(replay.already_applied.get() >= 1);
        } else {
            // Without the marker the replay visits the old states again before ending right.
            assert!(
                history[updates..]
                    .iter()
                    .any(|update| update.order_state == "Open"),
                "expected a step back without the marker: {history:?}"
            );
        }
        pipeline.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_fluent_does_not_know_yet_is_retried_then_dead_lettered() {
    let pipeline = Pipeline::start(&[("FLUENT_ORDER_NOT_FOUND_ATTEMPTS", "3")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    // Only commercetools has the order: Fluent never will.
    pipeline.sandbox.put_ct_order(CtOrder {
        id: String::new(),
        order_number: Some("HD_7001".into()),
        version: 1,
        order_state: "Open".into(),
        payment_state: None,
        shipment_state: None,
        custom: Default::default(),
    });
    pipeline.event("HD_7001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers.get_str(headers::DLQ_ATTEMPTS), Some("3"));
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("Fluent has no order HD_7001"), "{error}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_reaches_fluent_late_is_applied_on_a_retry() {
    let pipeline = Pipeline::start(&[("FLUENT_ORDER_NOT_FOUND_ATTEMPTS", "50")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.sandbox.put_ct_order(CtOrder {
        id: String::new(),
        order_number: Some("HD_7002".into()),
        version: 1,
        order_state: "Open".into(),
        payment_state: None,
        shipment_state: None,
        custom: Default::default(),
    });
    pipeline.event("HD_7002", "7", "BOOKED");
    // Replication lag: the order shows up in Fluent once the handler has looked at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pipeline
        .stats
        .retried
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "the handler never retried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pipeline.sandbox.put_fluent_order(FluentOrder {
        id: String::new(),
        order_ref: "HD_7002".into(),
        order_type: "HD".into(),
        status: "BOOKED".into(),
        retailer_id: "7".into(),
        attributes: Vec::new(),
    });
    pipeline.settled(1).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_fluent_sends_again_late_does_not_step_the_order_back() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_8001", "7");
    pipeline.event_with_id("HD_8001", "7", "BOOKED", "booked-once");
    pipeline.settled(1).await;
    pipeline.event("HD_8001", "7", "COMPLETE");
    pipeline.settled(2).await;
    // Fluent retries the BOOKED webhook (its answer timed out): same event id, arriving last.
    pipeline.event_with_id("HD_8001", "7", "BOOKED", "booked-once");
    pipeline.settled(3).await;
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Shipped"))
    );
    assert_eq!(
        pipeline.sandbox.history(&id).len(),
        2,
        "the repeat made no update"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_commercetools_outage_delays_records_but_sends_none_to_the_dlq() {
    // Eight attempts would be spent after eight 500s; thirty in a row must still end well.
    let pipeline = Pipeline::start(&[("PROCESSOR_MAX_ATTEMPTS", "8")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_9501", "7");
    pipeline.sandbox.set_fault(
        Endpoint::CtGraphql,
        Fault {
            fail_next: 30,
            status: Some(500),
            ..Fault::default()
        },
    );
    pipeline.event("HD_9501", "7", "BOOKED");
    pipeline.settled(1).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    let waited = pipeline
        .stats
        .waited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(waited >= 30, "waited {waited} times");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_or_429_waits_whatever_its_body_looks_like() {
    // Real answers to these come from the APIs, their gateways and proxies: a GraphQL error
    // list without codes, commercetools' REST shape, an HTML page, nothing. The status decides.
    let pipeline = Pipeline::start(&[("PROCESSOR_MAX_ATTEMPTS", "2")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let cases = [
        (FaultBody::Graphql, 503),
        (FaultBody::Rest, 503),
        (FaultBody::Html, 502),
        (FaultBody::Empty, 504),
        (FaultBody::Graphql, 429),
        (FaultBody::Html, 500),
    ];
    for (published, (n, (body, status))) in (1..).zip(cases.into_iter().enumerate()) {
        let order_ref = format!("HD_95{n:02}");
        let id = pipeline.order(&order_ref, "7");
        for endpoint in [Endpoint::FluentGraphql, Endpoint::CtGraphql] {
            pipeline.sandbox.set_fault(
                endpoint,
                Fault {
                    fail_next: 1,
                    status: Some(status),
                    body,
                    ..Fault::default()
                },
            );
        }
        pipeline.event(&order_ref, "7", "BOOKED");
        pipeline.settled(published).await;
        assert!(
            pipeline.bus.dead_letters().is_empty(),
            "{status} with a {body:?} body was dead-lettered: {:?}",
            pipeline.bus.dead_letters()[0]
                .headers
                .get_str(headers::DLQ_ERROR)
        );
        assert_eq!(
            pipeline.states(&id),
            states("Confirmed", Some("Paid"), Some("Pending")),
            "{status} with a {body:?} body"
        );
    }
    pipeline.stop().await;
}

/// Publishes `event` while an earlier event of the same order is in flight, so what follows
/// queues behind it and reaches the handler as one batch.
async fn while_in_flight(pipeline: &Pipeline, order_ref: &str, then: impl FnOnce()) {
    pipeline.sandbox.set_fault(
        Endpoint::FluentGraphql,
        Fault {
            latency_ms: 300,
            ..Fault::default()
        },
    );
    pipeline.event(order_ref, "7", "RECEIVED");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pipeline
        .stats
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "the first event never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    then();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_queued_behind_a_newer_event_of_its_order_is_not_applied_last() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_8101", "7");
    while_in_flight(&pipeline, "HD_8101", || {
        pipeline.event_with_id("HD_8101", "7", "BOOKED", "booked-once");
        pipeline.event("HD_8101", "7", "COMPLETE");
        // Fluent's retry of BOOKED (its answer timed out) lands behind the newer event.
        pipeline.event_with_id("HD_8101", "7", "BOOKED", "booked-once");
    })
    .await;
    pipeline.settled(4).await;
    assert!(
        pipeline
            .stats
            .coalesced
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the three events were meant to form one batch"
    );
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Shipped"))
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_sync_marker_a_retry_days_later_in_another_process_does_not_move_the_order() {
    let pipeline = Pipeline::start(&[("CTP_SYNC_MARKER_FIELD", "fluentSyncPosition")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_8201", "7");
    pipeline.event_with_id("HD_8201", "7", "BOOKED", "booked-once");
    pipeline.settled(1).await;
    pipeline.event("HD_8201", "7", "COMPLETE");
    pipeline.settled(2).await;
    let done = states("Complete", Some("Paid"), Some("Shipped"));
    assert_eq!(pipeline.states(&id), done);
    let updates = pipeline.sandbox.history(&id).len();
    // Fluent's `exponential` schedule retries a day later: a new record at a new offset,
    // read by a process that never saw the original (another instance, or after a restart).
    pipeline.event_with_id("HD_8201", "7", "BOOKED", "booked-once");
    let (retry, _) = pipeline.bus.published().last().cloned().unwrap();
    pipeline
        .bus
        .set_committed("another-process", retry.partition, retry.offset);
    let replay = pipeline.replay("another-process", 1).await;
    assert_eq!(pipeline.states(&id), done);
    assert_eq!(
        pipeline.sandbox.history(&id).len(),
        updates,
        "the late retry made no update: {:?}",
        pipeline.sandbox.history(&id)
    );
    assert!(replay.already_applied.get() >= 1);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_is_no_fluent_event_goes_to_the_dlq_alone() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_8301", "7");
    while_in_flight(&pipeline, "HD_8301", || {
        pipeline.event("HD_8301", "7", "BOOKED");
        // Queued between two good events of the same order: a body that is no Fluent event.
        pipeline.bus.publish(OutboundRecord {
            key: "HD_8301".into(),
            payload: r#"{"id": 42, "name": ["not", "an", "event"]}"#.into(),
            headers: Headers::new()
                .with(headers::EVENT_NAME, NAME)
                .with(headers::EVENT_ID, "broken"),
        });
        pipeline.event("HD_8301", "7", "COMPLETE");
    })
    .await;
    pipeline.settled(4).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1, "only the broken record");
    assert_eq!(
        letters[0].headers.get_str(headers::EVENT_ID),
        Some("broken")
    );
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("is not a Fluent event"), "{error}");
    assert_eq!(
        letters[0].headers.get_str(headers::DLQ_ERROR_CLASS),
        Some("permanent")
    );
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Shipped"))
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_of_an_unreachable_api_names_the_cause_not_only_the_top_error() {
    // Nothing listens there: every call is refused at the TCP level.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fluent", closed.local_addr().unwrap());
    drop(closed);
    let pipeline = Pipeline::start(&[
        ("FLUENT_API_URL", url.as_str()),
        ("PROCESSOR_MAX_ATTEMPTS", "2"),
        ("PROCESSOR_MAX_WAIT_SECS", "0"),
    ])
    .await;
    pipeline.order("HD_7101", "7");
    pipeline.event("HD_7101", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("could not be reached"), "{error}");
    assert!(
        error.to_ascii_lowercase().contains("connection refused"),
        "the cause is missing: {error}"
    );
    pipeline.stop().await;
}

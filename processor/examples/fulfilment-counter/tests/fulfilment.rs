//! The partner's handler in a processor on the in-memory bus: routed by name, counted per
//! retailer on the processor's own `/metrics`, its bad records dead-lettered alone.

use std::collections::HashMap;
use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Headers, OutboundRecord, headers};
use common::config::Config;
use fulfilment_counter::FulfilmentCounter;
use processor::App;
use processor_engine::Registry;
use tokio_util::sync::CancellationToken;

fn event(name: &str, body: &str) -> OutboundRecord {
    OutboundRecord {
        key: "FUL-1".into(),
        payload: bytes::Bytes::copy_from_slice(body.as_bytes()),
        headers: Headers::new().with(headers::EVENT_NAME, name.to_owned()),
    }
}

#[tokio::test]
async fn a_partner_handler_counts_its_events_per_retailer_on_the_processors_metrics() {
    let env: HashMap<String, String> = [("BUS", "memory"), ("METRICS_LISTEN", "127.0.0.1:0")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let config = Config::from_sources(&env, None).expect("configuration");
    let bus = MemoryBus::new(2);
    let retailer =
        |id: &str| format!(r#"{{"name":"fc.connect.fulfilment.created","retailerId":{id}}}"#);
    for body in [retailer("\"R1\""), retailer("\"R1\""), retailer("7")] {
        bus.publish(event("fc.connect.fulfilment.created", &body));
    }
    bus.publish(event(
        "fc.connect.fulfilment.created",
        r#"{"name":"x","retailerId":"  "}"#,
    ));
    bus.publish(event("some.other.event", r#"{"retailerId":"R9"}"#));
    let counter = FulfilmentCounter::new(vec!["fc.connect.fulfilment.created".into()]);
    let app = App::build(&config, &bus, Registry::new().with(counter))
        .await
        .expect("the app builds");
    let stats = app.stats();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(listener, shutdown.clone()));

    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = match client.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(r#"fulfilment_events_total{retailer="R1"} 2"#)
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains(r#"fulfilment_events_total{retailer="R1"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"fulfilment_events_total{retailer="7"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains("R9"),
        "an event of another name was counted: {text}"
    );
    // The blank retailer went to the DLQ alone; the unknown name was skipped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.dead_letters().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        bus.dead_letters().len(),
        1,
        "the blank retailer's record is not in the DLQ"
    );
    assert_eq!(stats.skipped.load(std::sync::atomic::Ordering::Relaxed), 1);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

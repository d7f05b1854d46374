//! Bursts: concurrency is a hard limit, bursts are served completely within the card quota, and
//! what cannot be served is refused clearly (429/503 with Retry-After), never left hanging.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::common::*;

async fn work(s: &Server, name: &str, query: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = s
        .http
        .get(s.url(&format!("/function/{name}/work?{query}")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

#[tokio::test]
async fn a_burst_of_50_with_concurrency_1_on_3_cards_is_served_completely() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "3xtesla-t4:16"]);
    s.deploy_testfn("burst", "instance_concurrency: 1").await;
    let results = join_all((0..50).map(|_| work(&s, "burst", "ms=100"))).await;
    let mut per_instance: HashMap<String, u64> = HashMap::new();
    for (status, body, headers) in &results {
        assert_eq!(*status, 200, "{body}\n{}", s.log());
        // The app itself never saw two requests at once.
        assert_eq!(body["in_flight_at_entry"], 1, "{body}");
        assert_eq!(body["max_in_flight"], 1, "{body}");
        let id = headers["x-gpufn-instance-id"].to_str().unwrap().to_string();
        assert_eq!(body["instance"], id.as_str());
        *per_instance.entry(id).or_default() += 1;
    }
    assert_eq!(
        per_instance.len(),
        3,
        "scaled out to all 3 cards: {per_instance:?}"
    );
    assert_eq!(per_instance.values().sum::<u64>(), 50);
    assert!(
        results
            .iter()
            .any(|(_, _, h)| h["x-gpufn-cold-start"] == "true")
    );
    // All slots came back.
    for i in s.instances("burst").await {
        assert_eq!(i["in_flight"], 0, "{i}");
    }
}

#[tokio::test]
async fn concurrency_4_is_never_exceeded_and_bursts_scale_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("batch", "instance_concurrency: 4").await;
    let results = join_all((0..40).map(|_| work(&s, "batch", "ms=150"))).await;
    let mut instances = HashSet::new();
    for (status, body, headers) in &results {
        assert_eq!(*status, 200, "{body}");
        let entry = body["in_flight_at_entry"].as_i64().unwrap();
        let max = body["max_in_flight"].as_i64().unwrap();
        assert!((1..=4).contains(&entry) && max <= 4, "{body}");
        instances.insert(headers["x-gpufn-instance-id"].to_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    // Requests were batched: some instance saw more than one at once.
    assert!(
        results
            .iter()
            .any(|(_, b, _)| b["max_in_flight"].as_i64().unwrap() > 1)
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_with_429_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("small", "scaling: {max_instances: 1, max_queue: 2}")
        .await;
    // One in flight (held), two queued: the fourth is refused at once.
    let latch = Latch::new(dir.path(), "small");
    let held = s.hold("small", &latch).await;
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let url = s.url("/function/small/work");
            let http = s.http.clone();
            tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
        })
        .collect();
    s.wait_for("two queued", Duration::from_secs(10), || async {
        s.get_json("/api/v1/functions/small").await["status"]["queued"] == 2
    })
    .await;
    let resp = s
        .http
        .get(s.url("/function/small/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    // Nothing accepted is lost: releasing the held one lets all three finish.
    latch.release();
    assert_eq!(held.await.unwrap(), 200, "{}", s.log());
    for q in queued {
        assert_eq!(q.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn waiting_past_the_queue_timeout_gives_503_or_429_when_the_quota_is_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["--simulate-gpus", "2xtesla-t4:16", "--quota-cards", "1"],
    );
    s.deploy_testfn("a", "scaling: {queue_timeout_s: 1, max_instances: 1}")
        .await;
    s.deploy_testfn("b", "scaling: {queue_timeout_s: 1}").await;
    let latch = Latch::new(dir.path(), "a");
    let held = s.hold("a", &latch).await;
    // `a` is at max_instances with its one slot busy: a queue timeout, 503.
    let resp = s.http.get(s.url("/function/a/work")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_timeout", "{v}");
    // `b` cannot get a card: the one-card quota is used by `a`: 429.
    let resp = s.http.get(s.url("/function/b/work")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quota"),
        "{v}"
    );
    // Raising the quota lets `b` start while `a` still holds its card.
    let resp = s
        .http
        .put(s.url("/api/v1/quota"))
        .json(&serde_json::json!({"cards": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, _) = work(&s, "b", "").await;
    assert_eq!(status, 200);
    latch.release();
    assert_eq!(held.await.unwrap(), 200);
}

#[tokio::test]
async fn quota_api_reads_writes_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "3xtesla-t4:16"]);
    let v = s.get_json("/api/v1/quota").await;
    assert_eq!(
        (
            v["cards"].as_i64(),
            v["used"].as_i64(),
            v["total_cards"].as_i64()
        ),
        (Some(30), Some(0), Some(3))
    );
    let resp = s
        .http
        .put(s.url("/api/v1/quota"))
        .json(&serde_json::json!({"cards": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.get_json("/api/v1/quota").await["cards"], 2);
    for (body, field) in [
        (serde_json::json!({"cards": -1}), "cards"),
        (serde_json::json!({"cards": "x"}), "cards"),
        (serde_json::json!({}), "cards"),
        (serde_json::json!({"cards": 1, "extra": 1}), "extra"),
    ] {
        let resp = s
            .http
            .put(s.url("/api/v1/quota"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    assert_eq!(
        s.get_json("/api/v1/quota").await["cards"],
        2,
        "bad input changed nothing"
    );
}

#[tokio::test]
async fn a_caller_that_goes_away_frees_its_queue_place_but_not_a_slot_still_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("gone", "scaling: {max_instances: 1}").await;
    let latch = Latch::new(dir.path(), "gone");
    // A: in flight on the only slot, then its caller disconnects.
    let a = tokio::spawn({
        let url = s.url(&format!("/function/gone/work?{}", latch.query()));
        let http = s.http.clone();
        async move { http.get(url).send().await }
    });
    s.wait_for("A in flight", Duration::from_secs(15), || async {
        s.instances("gone")
            .await
            .first()
            .is_some_and(|i| i["in_flight"] == 1)
    })
    .await;
    // Q: queued behind A, then its caller disconnects too: its queue place is freed.
    let q = tokio::spawn({
        let url = s.url("/function/gone/work");
        let http = s.http.clone();
        async move { http.get(url).send().await }
    });
    s.wait_for("Q queued", Duration::from_secs(10), || async {
        s.get_json("/api/v1/functions/gone").await["status"]["queued"] == 1
    })
    .await;
    q.abort();
    a.abort();
    s.wait_for("Q's place freed", Duration::from_secs(10), || async {
        s.get_json("/api/v1/functions/gone").await["status"]["queued"] == 0
    })
    .await;
    // A's work is still running in the app, so its slot stays taken: B must wait for it rather
    // than make the app run two requests at once.
    let b = tokio::spawn({
        let url = s.url("/function/gone/work");
        let http = s.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    s.wait_for("B queued", Duration::from_secs(10), || async {
        s.get_json("/api/v1/functions/gone").await["status"]["queued"] == 1
    })
    .await;
    latch.release();
    let body = b.await.unwrap();
    assert_eq!(body["in_flight_at_entry"], 1, "{body}");
    assert_eq!(body["max_in_flight"], 1, "{body}");
    s.wait_for("all slots back", Duration::from_secs(10), || async {
        s.instances("gone").await[0]["in_flight"] == 0
    })
    .await;
}

/// Issue 20, point 5: cards go where they are needed. Two cards, each held by another function's
/// idle on-demand instance (kept 10 minutes): a third function's call is served by reclaiming
/// the one idle longest, not refused after its queue timeout. A provisioned instance is never
/// taken.
#[tokio::test]
async fn an_idle_instance_of_another_function_gives_its_card_to_waiting_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("kept", "scaling: {min_instances: 1}").await;
    s.deploy_testfn("idle", "scaling: {idle_timeout_s: 600}")
        .await;
    s.deploy_testfn("third", "scaling: {queue_timeout_s: 30}")
        .await;
    s.wait_for(
        "the provisioned instance",
        Duration::from_secs(30),
        || async {
            s.instances("kept")
                .await
                .iter()
                .any(|i| i["state"] == "ready" || i["state"] == "idle")
        },
    )
    .await;
    let (status, _, _) = work(&s, "idle", "").await;
    assert_eq!(status, 200);
    // Both cards held by idle instances; `third` gets `idle`'s.
    let (status, body, headers) = work(&s, "third", "").await;
    assert_eq!(status, 200, "{body}\n{}", s.log());
    assert_eq!(headers["x-gpufn-cold-start"], "true");
    assert!(
        s.instances("idle").await.is_empty(),
        "idle's instance was reclaimed"
    );
    assert_eq!(
        s.instances("kept").await.len(),
        1,
        "the provisioned one stays"
    );
    assert!(
        s.log().contains("reclaimed an idle instance's card"),
        "{}",
        s.log()
    );
}

/// Issue 20, point 5: a request already waiting for a card gets one as soon as another
/// function's instance goes idle (not only when a card is given back).
#[tokio::test]
async fn a_waiting_request_gets_the_card_of_an_instance_that_just_went_idle() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("busy", "scaling: {idle_timeout_s: 600}")
        .await;
    s.deploy_testfn("waiting", "scaling: {queue_timeout_s: 60}")
        .await;
    let latch = Latch::new(dir.path(), "busy");
    let held = s.hold("busy", &latch).await;
    let waiting = {
        let http = s.http.clone();
        let url = s.url("/function/waiting/work");
        tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
    };
    s.wait_for("the request to queue", Duration::from_secs(10), || async {
        s.get_json("/api/v1/functions/waiting").await["status"]["queued"] == 1
    })
    .await;
    // `busy`'s request ends: its instance goes idle (kept 10 minutes) and gives its card.
    latch.release();
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(waiting.await.unwrap(), 200, "{}", s.log());
}

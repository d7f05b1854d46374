//! Scheduled provisioning, with gpufn's wall clock injected (started at a chosen time, running
//! faster than real time) so that a minute-long window passes in seconds.

use std::time::Duration;

use crate::common::*;

/// A gpufn whose schedules read a clock that starts at `start` and runs 10× fast.
fn clocked(dir: &std::path::Path, start: &str) -> Server {
    Server::start(
        dir,
        &[
            "--simulate-gpus",
            "2xtesla-t4:16",
            "--clock-start",
            start,
            "--clock-rate",
            "10",
        ],
    )
}

#[tokio::test]
async fn a_schedule_raises_and_lowers_provisioned_instances_in_its_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    // 2026-03-08 is the day New York moves to daylight-saving time (EST → EDT at 02:00). The
    // clock starts at 07:59:00 EDT and runs 10× fast: 08:00 comes after 6 s, 08:01 after 12 s.
    let s = clocked(dir.path(), "2026-03-08T07:59:00-04:00");
    s.deploy_testfn(
        "sched",
        "scaling:\n  idle_timeout_s: 1\n  schedules:\n    - {name: open, cron: '0 8 * * *', timezone: America/New_York, min_instances: 1}\n    - {name: close, cron: '1 8 * * *', timezone: America/New_York, min_instances: 0}\n",
    )
    .await;
    let status = || async { s.get_json("/api/v1/functions/sched").await["status"].clone() };
    let before = status().await;
    assert_eq!(before["min_instances"], 0, "{before}");
    let text = before["provisioning"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        text.contains("schedule \"close\" since 2026-03-07 08:01 EST")
            && text.contains("next: \"open\" at 2026-03-08 08:00 EDT (min 1)"),
        "{text}"
    );
    assert!(s.instances("sched").await.is_empty());

    // 08:00 EDT: one provisioned instance, started without a request.
    s.wait_for(
        "the scheduled instance",
        Duration::from_secs(30),
        || async {
            s.instances("sched")
                .await
                .iter()
                .any(|i| i["state"] == "ready")
        },
    )
    .await;
    let open = status().await;
    assert_eq!(open["min_instances"], 1, "{open}");
    assert!(
        open["provisioning"]
            .as_str()
            .is_some_and(|t| t.contains("schedule \"open\" since 2026-03-08 08:00 EDT")),
        "{open}"
    );
    // 08:01: lowered to zero; the instance goes after its keep-alive.
    s.wait_for("the instance released", Duration::from_secs(30), || async {
        s.instances("sched").await.is_empty()
    })
    .await;
    let closed = status().await;
    assert_eq!(closed["min_instances"], 0, "{closed}");
    assert!(
        closed["provisioning"]
            .as_str()
            .is_some_and(|t| t.contains("schedule \"close\" since 2026-03-08 08:01 EDT")),
        "{closed}"
    );
}

#[tokio::test]
async fn a_running_instance_becomes_the_scheduled_one_and_idle_mode_freezes_it() {
    let dir = tempfile::tempdir().unwrap();
    // 07:59:00 UTC, 10× fast: the schedule's 08:00 comes after 6 s.
    let s = clocked(dir.path(), "2026-11-30T07:59:00Z");
    s.deploy_testfn(
        "promoted",
        "scaling:\n  idle_timeout_s: 600\n  idle_mode: freeze\n  schedules: [{name: open, cron: '0 8 * * *', min_instances: 1}, {name: close, cron: '0 7 * * *', min_instances: 0}]\n",
    )
    .await;
    // Before 08:00 a call starts an on-demand instance, which idle mode leaves running.
    let resp = s
        .http
        .get(s.url("/function/promoted/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-gpufn-instance-id"]
        .to_str()
        .unwrap()
        .to_string();
    let before = s.get_json("/api/v1/functions/promoted").await["status"].clone();
    assert_eq!(before["min_instances"], 0, "{before}");
    assert_eq!(s.instances("promoted").await[0]["frozen"], false);
    // 08:00: that instance becomes the provisioned one (no second start), and is frozen.
    s.wait_for(
        "the instance provisioned and frozen",
        Duration::from_secs(30),
        || async {
            let list = s.instances("promoted").await;
            list.len() == 1 && list[0]["frozen"] == true
        },
    )
    .await;
    assert_eq!(s.instances("promoted").await[0]["id"], id.as_str());
    let status = s.get_json("/api/v1/functions/promoted").await["status"].clone();
    assert_eq!(status["min_instances"], 1, "{status}");
}

//! A full disk: ingest answers `failed` with a clear reason, nothing already stored is lost,
//! and the worker recovers once space is free. Needs a small filesystem of its own: a tmpfs
//! mounted for the test (root only); skipped, saying why, where that is not possible.

mod common;

use std::{path::PathBuf, process::Command};

use common::{TestHost, WorkerProc, spec};

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Self(at))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_new_transactions_and_keeps_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(dir.path().join("disk"), "8m") {
        Ok(disk) => disk,
        Err(why) => {
            println!(
                "skipped: a full disk needs a tmpfs of its own and mounting one failed: {why}"
            );
            return;
        }
    };
    // Room to give back later, as an operator would free space.
    let ballast = disk.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();

    let mut host = TestHost::down_from_the_start();
    let mut worker = WorkerProc::start(&disk.0.join("worker")).await;
    let mut roomy = spec(&host);
    roomy["storeAndForward"] = serde_json::json!({"maxBytes": "1Gi"});
    worker.apply("full", roomy).await;

    let payload = "x".repeat(4000);
    let mut stored = Vec::new();
    let mut reason = None;
    for i in 0..5000 {
        let id = format!("f{i:05}");
        let (status, body) = worker.send("full", &payload, Some(&id)).await;
        match status {
            202 => stored.push(id),
            503 => {
                reason = body["reason"].as_str().map(str::to_owned);
                break;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    let reason = reason.expect("the disk never filled up");
    assert!(
        reason.contains("could not write to disk") && reason.contains("No space left"),
        "{reason}"
    );
    assert!(
        stored.len() > 100,
        "only {} stored before the disk was full",
        stored.len()
    );
    assert_eq!(worker.report("full").await["state"], "Store and Forward");

    // Space comes back: the worker stores again without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let (status, body) = worker.send("full", "after", Some("after")).await;
    assert_eq!(status, 202, "{body}");
    stored.push("after".into());

    // Nothing answered `stored` was lost: all of it reaches the host, in order.
    host.up().await;
    worker.wait_state("full", "Up").await;
    let received = host.received_ids();
    let mut seen = std::collections::HashSet::new();
    let first: Vec<&String> = received
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .collect();
    assert_eq!(first, stored.iter().collect::<Vec<_>>());
    worker.kill9();
}

//! The seed's web dashboard in a real headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs), against a live seed and nodes on
//! 127.0.0.1: the page loads, then shows the nodes as they join and finish
//! without being reloaded. Chromium is driven over its DevTools pipe.
//! A screenshot is left in Cargo's test temp dir (under `target/`).

use fleetmesh_testnet::lab::{free_port, wait_until, Lab};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

fn bin(name: &str) -> PathBuf {
    fleetmesh_testnet::lab::binary_next_to(env!("CARGO_BIN_EXE_fleetmesh-testnet"), name)
        .expect("workspace binary")
}

/// A headless Chromium with one page, spoken to over
/// `--remote-debugging-pipe`: JSON messages ended by NUL, commands on its
/// fd 3, replies and events on its fd 4.
struct Browser {
    child: Child,
    commands: ChildStdin,
    replies: Receiver<Value>,
    session: String,
    next_id: u64,
}

impl Browser {
    fn open(url: &str, profile: &Path) -> Browser {
        let chromium = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| Command::new(c).arg("--version").output().is_ok())
            .expect("Chromium is needed: apt-get install chromium (.ci/run does)");
        // The shell only moves the pipes to fds 3 and 4, then is replaced.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1600",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, replies) = std::sync::mpsc::sync_channel(256);
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match out.read_until(0, &mut msg) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            msg.pop();
            let Ok(v) = serde_json::from_slice::<Value>(&msg) else {
                continue;
            };
            // Only replies matter; events are dropped.
            if v.get("id").is_some() && tx.send(v).is_err() {
                return;
            }
        });
        let mut b = Browser {
            child,
            commands,
            replies,
            session: String::new(),
            next_id: 0,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": url }));
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().expect("session").to_owned();
        b
    }

    /// Sends a command and waits for its result; panics on an error reply.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no reply in 30 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: chromium exited"),
            }
        }
    }

    /// The value of a JavaScript expression in the page, or the exception
    /// it threw (while the page is still loading, `document.body` is null).
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// The value of a JavaScript expression in the loaded page.
    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn screenshot(&mut self, path: &Path) {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64_decode(r["data"].as_str().expect("png data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// Polls the page until `expr` is true.
fn wait_for(b: &mut Browser, what: &str, expr: &str) {
    let ok = wait_until(TIMEOUT, || {
        (b.try_eval(expr).ok() == Some(json!(true))).then_some(())
    });
    if ok.is_none() {
        let body = b.try_eval("document.body.innerText");
        panic!("the page never showed {what}; it shows:\n{body:?}");
    }
}

#[test]
fn the_dashboard_shows_the_fleet_as_it_joins_and_finishes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut lab = Lab::new(dir, &bin("fleetmesh-seed"), &bin("fleetmesh-node")).expect("lab");
    let image = dir.join("image");
    let mut bytes = Vec::new();
    fleetmesh_testnet::image::write_image(1, 4 << 20, &mut bytes).expect("image");
    std::fs::write(&image, &bytes).expect("write image");
    lab.publish(&image, "1.0.0").expect("publish");
    let http = format!("127.0.0.1:{}", free_port().expect("port"));
    lab.start_seed_with(&["--http", &http]).expect("seed");

    let mut b = Browser::open(&format!("http://{http}/"), &dir.join("chromium"));
    // Loaded and polled once: the release, no nodes yet, no error.
    wait_for(
        &mut b,
        "the release",
        "Number(document.body.dataset.polls) >= 1 && document.getElementById('error').hidden \
         && document.querySelector('#releases tr[data-version=\"1.0.0\"]') !== null",
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#fleet tbody tr').length"),
        0
    );

    let sites = ["east", "east", "west", "west"];
    for site in sites {
        let i = lab.add_node(site, "").expect("node");
        lab.start_node(i, &[]).expect("start node");
    }
    lab.wait_complete(&[0, 1, 2, 3], "1.0.0", TIMEOUT)
        .expect("distribution");

    // The same page, not reloaded, now shows every node, the release
    // complete on all of them, both sites' transfer and a drawn chart.
    wait_for(
        &mut b,
        "four nodes",
        "document.querySelectorAll('#fleet tbody tr').length === 4",
    );
    for n in &lab.nodes {
        let row = b.eval(&format!(
            "document.querySelector('#fleet tr[data-node=\"{}\"]').innerText",
            n.peer_id
        ));
        let row = row.as_str().expect("row text");
        assert!(row.contains(&n.site), "{row}");
    }
    wait_for(
        &mut b,
        "4 of 4 complete",
        "document.querySelector('#releases tr[data-version=\"1.0.0\"] td:nth-child(4)').innerText === '4 / 4'",
    );
    wait_for(
        &mut b,
        "WAN bytes for both sites",
        "['east','west'].every(s => { const r = document.querySelector(`#sites tr[data-site=\"${s}\"]`); \
         return r !== null && !r.children[3].innerText.startsWith('0 '); })",
    );
    wait_for(
        &mut b,
        "the chart reaching 100%",
        "(() => { const l = document.querySelector('#chart polyline[data-version=\"1.0.0\"]'); \
         if (!l || Number(l.dataset.points) < 2) return false; \
         const ys = l.getAttribute('points').split(' ').map(p => Number(p.split(',')[1])); \
         return ys[ys.length - 1] === 10; })()",
    );
    assert_eq!(b.eval("document.getElementById('error').hidden"), true);

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    b.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
}

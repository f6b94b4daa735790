//! The `fleetmesh-seed` binary as an operator uses it: real processes, real
//! files. Every bad input must fail with one line, a non-zero exit and no
//! change to the seed directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SEED: &str = env!("CARGO_BIN_EXE_fleetmesh-seed");

fn seed(args: &[&str]) -> Output {
    Command::new(SEED)
        .args(args)
        .output()
        .expect("run fleetmesh-seed")
}

fn ok(args: &[&str]) -> String {
    let out = seed(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail and returns its one-line error.
fn fails(args: &[&str]) -> String {
    let out = seed(args);
    assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

/// Deterministic bytes, compressible in part, so chunks differ.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 3 == 0 {
                b'a' + (i % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let dir = root.join("seed");
        ok(&["init", "--dir", dir.to_str().expect("utf-8")]);
        Lab {
            _tmp: tmp,
            dir,
            root,
        }
    }

    fn d(&self) -> &str {
        self.dir.to_str().expect("utf-8")
    }

    fn write_image(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.root.join(name);
        fs::write(&path, bytes).expect("write image");
        path.to_str().expect("utf-8").to_owned()
    }

    fn publish(&self, image: &str, version: &str) -> serde_json::Value {
        let out = ok(&[
            "publish",
            "--dir",
            self.d(),
            "--image",
            image,
            "--version",
            version,
        ]);
        serde_json::from_str(&out).expect("publish prints JSON")
    }

    /// Everything a failed command must leave untouched.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        collect(&self.dir, &self.dir, &mut files);
        files.insert(
            "releases".into(),
            ok(&["releases", "--dir", self.d(), "--json"]).into_bytes(),
        );
        files
    }
}

fn collect(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir).expect("ls") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(base).expect("under base").to_owned();
        if rel.starts_with("store/meta")
            || rel == Path::new("store/dirty")
            || rel == Path::new("store/lock")
        {
            continue; // sled's own files; releases are compared through the CLI
        }
        if path.is_dir() {
            collect(base, &path, out);
        } else {
            out.insert(rel, fs::read(&path).expect("read"));
        }
    }
}

#[test]
fn init_prints_the_root_key_and_protects_secrets() {
    let lab = Lab::new();
    let root = fs::read_to_string(lab.dir.join("root.pub")).expect("root.pub");
    assert_eq!(root.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    for key in ["root", "release", "policy"] {
        let meta = fs::metadata(lab.dir.join(format!("keys/{key}.key"))).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key}");
    }
    let err = fails(&["init", "--dir", lab.d()]);
    assert!(err.contains("is not empty; use --force"), "{err}");
    let again = ok(&["init", "--dir", lab.d(), "--force"]);
    assert_eq!(again.trim().len(), 64);
    assert_ne!(again.trim(), root.trim(), "--force makes new keys");
}

#[test]
fn publish_reports_delta_and_releases_lists_it() {
    let lab = Lab::new();
    let v1 = image(1, 3 << 20);
    let mut v2 = v1.clone();
    v2[1_000_000..1_000_100].fill(0xEE);
    v2.splice(2_000_000..2_000_000, image(9, 5000));
    let p1 = lab.publish(&lab.write_image("v1.img", &v1), "1.0.0");
    let p2 = lab.publish(&lab.write_image("v2.img", &v2), "1.1.0");
    assert_eq!(p1["image_bytes"], 3 << 20);
    assert_eq!(p1["new_chunks"], p1["chunks"]);
    let (chunks, new) = (
        p2["chunks"].as_u64().expect("n"),
        p2["new_chunks"].as_u64().expect("n"),
    );
    assert!((2..=8).contains(&new), "{new} new chunks of {chunks}");
    assert!(p2["stored_bytes"].as_u64().expect("n") < 200_000);
    for key in [
        "version",
        "channel",
        "release_id",
        "image_bytes",
        "chunks",
        "new_chunks",
        "stored_bytes",
    ] {
        assert!(p2.get(key).is_some(), "publish output lacks {key}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["releases", "--dir", lab.d(), "--json"])).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert_eq!(list[1], p2);
    let verified = ok(&["verify", "--dir", lab.d()]);
    assert_eq!(
        verified.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{verified}"
    );
}

#[test]
fn bad_input_fails_with_one_line_and_changes_nothing() {
    let lab = Lab::new();
    let good = lab.write_image("good.img", &image(2, 200_000));
    lab.publish(&good, "1.2.0");
    let empty = lab.write_image("empty.img", &[]);
    let missing = lab.root.join("missing.img");
    let missing = missing.to_str().expect("utf-8");
    let before = lab.snapshot();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--image", missing, "--version", "2.0.0"],
            "missing.img: No such file",
        ),
        (
            &["--image", &empty, "--version", "2.0.0"],
            "empty.img: is empty",
        ),
        (
            &["--image", &good, "--version", "2.0"],
            "not a semantic version",
        ),
        (
            &["--image", &good, "--version", "1.2.0"],
            "not greater than 1.2.0",
        ),
        (
            &["--image", &good, "--version", "1.1.9"],
            "not greater than 1.2.0",
        ),
        (
            &[
                "--image",
                &good,
                "--version",
                "2.0.0",
                "--channel",
                "Bad Channel",
            ],
            "channel \"Bad Channel\"",
        ),
        (
            &["--image", lab.d(), "--version", "2.0.0"],
            "not a regular file",
        ),
    ];
    for (args, expect) in cases {
        let mut full = vec!["publish", "--dir", lab.d()];
        full.extend_from_slice(args);
        let err = fails(&full);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(lab.snapshot(), before, "{args:?} changed the seed");
    }
    let not_seed = lab.root.to_str().expect("utf-8");
    let err = fails(&[
        "publish",
        "--dir",
        not_seed,
        "--image",
        &good,
        "--version",
        "3.0.0",
    ]);
    assert!(err.contains("is not a seed directory"), "{err}");
    let err = fails(&["releases", "--dir", "/nonexistent/seed"]);
    assert!(
        err.contains("open seed directory /nonexistent/seed"),
        "{err}"
    );
}

#[test]
fn image_over_the_configured_limit_is_refused() {
    let lab = Lab::new();
    let config = lab.dir.join("config.toml");
    let text = fs::read_to_string(&config).expect("config");
    let text = text.replace("max_image_bytes = 17179869184", "max_image_bytes = 100000");
    fs::write(&config, text).expect("write config");
    let big = lab.write_image("big.img", &image(3, 100_001));
    let before = lab.snapshot();
    let err = fails(&[
        "publish",
        "--dir",
        lab.d(),
        "--image",
        &big,
        "--version",
        "1.0.0",
    ]);
    assert!(
        err.contains("over the limit of 100000 (publish.max_image_bytes)"),
        "{err}"
    );
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn verify_names_corrupt_and_missing_chunks() {
    let lab = Lab::new();
    let out = lab.publish(&lab.write_image("v.img", &image(4, 500_000)), "1.0.0");
    let mut chunk_files = Vec::new();
    collect_chunk_files(&lab.dir.join("store/chunks"), &mut chunk_files);
    assert_eq!(
        chunk_files.len() as u64,
        out["new_chunks"].as_u64().expect("n")
    );
    let corrupt = &chunk_files[0];
    let mut bytes = fs::read(corrupt).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(corrupt, bytes).expect("corrupt");
    fs::remove_file(&chunk_files[1]).expect("remove");
    let res = seed(&["verify", "--dir", lab.d(), "--version", "1.0.0"]);
    assert!(!res.status.success());
    let stdout = String::from_utf8_lossy(&res.stdout);
    for path in &chunk_files[..2] {
        let id = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            stdout.contains(&format!("bad chunk {id}")),
            "{id} not named: {stdout}"
        );
    }
    assert!(
        stdout.contains("corrupt") && stdout.contains("not in the store"),
        "{stdout}"
    );
    let err = fails(&["verify", "--dir", lab.d(), "--version", "9.9.9"]);
    assert!(err.contains("no release with version 9.9.9"), "{err}");
    // The same findings as JSON, and still a failing exit.
    let res = seed(&["verify", "--dir", lab.d(), "--json"]);
    assert!(!res.status.success());
    let checks: serde_json::Value = serde_json::from_slice(&res.stdout).expect("JSON");
    assert_eq!(checks[0]["version"], "1.0.0");
    assert_eq!(
        checks[0]["bad_chunks"].as_object().map(|m| m.len()),
        Some(2),
        "{checks}"
    );
}

fn collect_chunk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("ls") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect_chunk_files(&path, out);
        } else {
            out.push(path);
        }
    }
    out.sort();
}

#[test]
fn killed_publish_leaves_no_half_release() {
    let lab = Lab::new();
    let big = lab.write_image("big.img", &image(5, 300 << 20));
    let chunks = lab.dir.join("store/chunks");
    let mut child = Command::new(SEED)
        .args([
            "publish",
            "--dir",
            lab.d(),
            "--image",
            &big,
            "--version",
            "1.0.0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn publish");
    // Kill it once it has written some chunks, i.e. truly mid-publish.
    let mut staged = 0;
    for _ in 0..2000 {
        staged = count_temp_files(&chunks);
        if staged > 20 || child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(
        staged > 20,
        "publish finished or never started: {staged} staged"
    );
    let list = ok(&["releases", "--dir", lab.d(), "--json"]);
    assert_eq!(list.trim(), "[]", "a half release was recorded");
    assert_eq!(count_temp_files(&chunks), 0, "reopen cleans temp files");
    let out = lab.publish(&big, "1.0.0");
    assert_eq!(out["image_bytes"], 300u64 << 20);
    ok(&["verify", "--dir", lab.d()]);
}

/// Disk full during publish, on a real full filesystem: a small tmpfs. Needs
/// root to mount it (CI runs as root); elsewhere it says so and passes.
#[test]
fn disk_full_during_publish_changes_nothing() {
    if !rustix_is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let outer = tempfile::tempdir().expect("tempdir");
    let mnt = outer.path().join("small");
    fs::create_dir(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount tmpfs");
    let result = std::panic::catch_unwind(|| {
        let dir = mnt.join("seed");
        let d = dir.to_str().expect("utf-8");
        ok(&["init", "--dir", d]);
        let img = outer.path().join("big.img");
        fs::write(&img, image(6, 12 << 20)).expect("write image");
        let small = outer.path().join("small.img");
        fs::write(&small, image(7, 300_000)).expect("write image");
        let img = img.to_str().expect("utf-8");
        let small = small.to_str().expect("utf-8");
        ok(&[
            "publish",
            "--dir",
            d,
            "--image",
            small,
            "--version",
            "1.0.0",
        ]);
        let chunks_before = count_files(&dir.join("store/chunks"));
        let err = fails(&["publish", "--dir", d, "--image", img, "--version", "2.0.0"]);
        assert!(err.contains("no space left on device"), "{err}");
        assert_eq!(
            count_files(&dir.join("store/chunks")),
            chunks_before,
            "new chunks left behind"
        );
        assert_eq!(
            count_temp_files(&dir.join("store/chunks")),
            0,
            "temp files left behind"
        );
        let list: serde_json::Value =
            serde_json::from_str(&ok(&["releases", "--dir", d, "--json"])).expect("JSON");
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        ok(&["verify", "--dir", d]);
    });
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Temp files in the store's shards; 0 before the store exists.
fn count_temp_files(chunks: &Path) -> usize {
    let Ok(shards) = fs::read_dir(chunks) else {
        return 0;
    };
    shards
        .flatten()
        .filter_map(|shard| fs::read_dir(shard.path()).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count()
}

fn count_files(dir: &Path) -> usize {
    let mut files = Vec::new();
    collect_chunk_files(dir, &mut files);
    files.len()
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `run` with the inbox switched on from the environment: an image dropped
/// with its sidecar is published (and listed), a bad one is set aside with
/// its reason.
#[test]
fn run_publishes_what_is_dropped_into_the_inbox() {
    let lab = Lab::new();
    let inbox = lab.root.join("inbox");
    let mut run = Command::new(SEED)
        .args(["run", "--dir", lab.d(), "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("FLEETMESH_INBOX__DIR", &inbox)
        .env("FLEETMESH_INBOX__SCAN_SECS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start run");
    let wait_for = |path: &Path| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        path.exists()
    };
    let created = wait_for(&inbox);
    fs::write(inbox.join("os.img"), image(5, 200_000)).expect("image");
    fs::write(inbox.join("os.img.release.toml"), "version = \"3.1.0\"\n").expect("sidecar");
    fs::write(inbox.join("x.img"), image(6, 1000)).expect("image");
    fs::write(inbox.join("x.img.release.toml"), "channel = \"beta\"\n").expect("sidecar");
    let published = wait_for(&inbox.join("published/os.img.published.json"));
    let failed = wait_for(&inbox.join("failed/x.img.error"));
    let _ = run.kill();
    let _ = run.wait();
    assert!(
        created && published && failed,
        "inbox {created}, published {published}, failed {failed}"
    );
    let why = fs::read_to_string(inbox.join("failed/x.img.error")).expect("reason");
    assert!(why.contains("missing field `version`"), "{why}");
    let listed = ok(&["releases", "--dir", lab.d(), "--json"]);
    assert!(listed.contains("\"3.1.0\""), "{listed}");
}

/// Key rotation with the root key offline: without it the rotation is
/// refused and nothing changes; with it, the release key is replaced, every
/// manifest verifies under the new chain while the old key's signatures do
/// not, and publishing goes on. Rotating the policy key re-signs the policy
/// (a new version) and the credentials issued.
#[test]
fn rotating_keys_with_an_offline_root_revokes_the_old_ones() {
    use fleetmesh_protocol::keys::{Node, Policy, Release, Root, SecretKey};
    use fleetmesh_protocol::member::Membership;
    use fleetmesh_protocol::{codec, Manifest, RoleKeys, Signed, TrustChain, TrustState};

    let lab = Lab::new();
    let v1 = lab.write_image("v1.img", &image(1, 300_000));
    let id = lab.publish(&v1, "1.0.0")["release_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let policy = lab.root.join("policy.toml");
    fs::write(&policy, "").expect("policy");
    ok(&[
        "policy",
        "apply",
        "--dir",
        lab.d(),
        policy.to_str().expect("utf-8"),
    ]);
    let node = SecretKey::<Node>::from_seed([7; 32]).public().to_string();
    ok(&[
        "enroll",
        "--dir",
        lab.d(),
        "--node-key",
        &node,
        "--site",
        "a",
    ]);

    // The root goes offline.
    let keys = lab.dir.join("keys");
    let offline = lab.root.join("root.key");
    fs::rename(keys.join("root.key"), &offline).expect("take the root offline");
    let old_release: SecretKey<Release> =
        fleetmesh_node::keyfile::read(&keys.join("release.key")).expect("key");
    let rotate = |role: &str| -> serde_json::Value {
        let root = offline.to_str().expect("utf-8");
        let args = [
            "rotate-key",
            "--dir",
            lab.d(),
            "--role",
            role,
            "--root-key",
            root,
        ];
        serde_json::from_str(&ok(&args)).expect("json")
    };
    let before = lab.snapshot();
    let err = fails(&["rotate-key", "--dir", lab.d(), "--role", "release"]);
    assert!(err.contains("--root-key"), "{err}");
    let wrong = lab.root.join("wrong.key");
    fleetmesh_node::keyfile::write(&wrong, &SecretKey::<Root>::from_seed([9; 32])).expect("write");
    let err = fails(&[
        "rotate-key",
        "--dir",
        lab.d(),
        "--role",
        "release",
        "--root-key",
        wrong.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("cannot sign the next trust document"), "{err}");
    assert_eq!(
        lab.snapshot(),
        before,
        "a refused rotation changed the seed"
    );

    let out = rotate("release");
    assert_eq!(out["trust_version"], 2);
    assert_eq!(out["manifests"], 1);
    ok(&["verify", "--dir", lab.d()]);
    let root: fleetmesh_protocol::keys::PublicKey<Root> =
        fs::read_to_string(lab.dir.join("root.pub"))
            .expect("root.pub")
            .trim()
            .parse()
            .expect("key");
    let trust = || {
        let chain: TrustChain =
            codec::decode(&fs::read(lab.dir.join("trust.chain")).expect("chain")).expect("decode");
        TrustState::from_chain(RoleKeys::single(root), &chain).expect("chain verifies")
    };
    let now = fleetmesh_node::cli::unix_now();
    let served: Signed<Manifest> = codec::decode(
        &fs::read(lab.dir.join("releases").join(format!("{id}.manifest"))).expect("manifest"),
    )
    .expect("decode");
    served
        .verify_release(&trust(), now)
        .expect("the re-signed manifest verifies");
    assert_eq!(
        served.release_id().to_string(),
        id,
        "re-signing changed the release id"
    );
    let by_old =
        Signed::sign(&served.unverified_body().expect("body"), &[&old_release]).expect("signs");
    assert!(
        by_old.verify_release(&trust(), now).is_err(),
        "the old release key still signs"
    );
    let v2 = lab.write_image("v2.img", &image(2, 300_000));
    lab.publish(&v2, "1.1.0");
    ok(&["verify", "--dir", lab.d()]);

    let out = rotate("policy");
    assert_eq!(out["trust_version"], 3);
    assert_eq!(out["policy_version"], 2);
    assert_eq!(out["credentials"], 1);
    let show: serde_json::Value =
        serde_json::from_str(&ok(&["policy", "show", "--dir", lab.d(), "--json"])).expect("json");
    assert_eq!(show["version"], 2, "{show}");
    let members = lab.dir.join("members");
    let cred = fs::read_dir(&members)
        .expect("members")
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "cred"))
        .expect("a credential")
        .path();
    let signed: Signed<Membership> =
        codec::decode(&fs::read(&cred).expect("read")).expect("decode");
    let key = signed.unverified_body().expect("body").node;
    signed
        .verify_member(&trust(), &key, &[], now)
        .expect("the re-signed credential verifies");
    let _: SecretKey<Policy> = fleetmesh_node::keyfile::read(&keys.join("policy.key"))
        .expect("the new policy key is in place");
    assert!(!keys.join("policy.key.next").exists() && !keys.join("release.key.next").exists());
    let members: serde_json::Value =
        serde_json::from_str(&ok(&["members", "--dir", lab.d(), "--json"])).expect("json");
    assert_eq!(members[0]["site"], "a", "{members}");
    assert_eq!(members[0]["status"], "enrolled", "{members}");
    ok(&["revoke", "--dir", lab.d(), "--node-key", &node]);
    let members: serde_json::Value =
        serde_json::from_str(&ok(&["members", "--dir", lab.d(), "--json"])).expect("json");
    assert_eq!(members[0]["status"], "revoked", "{members}");
}

#[test]
fn k_of_n_root_and_release_roles_need_k_of_their_keys() {
    fn run(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    use fleetmesh_protocol::keys::Root;
    use fleetmesh_protocol::RoleKeys;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("seed");
    let d = dir.to_str().expect("utf-8");
    // Bad counts are refused before anything is made.
    for (n, k, why) in [
        ("3", "4", "threshold 4"),
        ("17", "2", "1-16"),
        ("0", "1", "1-16"),
    ] {
        let err = fails(&["init", "--dir", d, "--root-keys", n, "--root-threshold", k]);
        assert!(err.contains(why), "{n} {k}: {err}");
        assert!(!dir.exists(), "a refused init made {}", dir.display());
    }
    let printed = ok(&[
        "init",
        "--dir",
        d,
        "--root-keys",
        "3",
        "--root-threshold",
        "2",
        "--release-keys",
        "3",
        "--release-threshold",
        "2",
    ]);
    let root_pub = fs::read_to_string(dir.join("root.pub")).expect("root.pub");
    assert_eq!(printed.trim(), root_pub.trim());
    let roots: RoleKeys<Root> = root_pub.parse().expect("k-of-n root.pub");
    assert_eq!((roots.keys.len(), roots.threshold), (3, 2));
    // A 2-of-3 release role: the seed signs with the keys it holds, and a
    // publish with fewer than two is refused, changing nothing.
    let image_file = tmp.path().join("v1.img");
    fs::write(&image_file, image(1, 200_000)).expect("image");
    let publish = |v: &str| {
        let img = image_file.to_str().expect("utf-8");
        ["publish", "--dir", d, "--image", img, "--version", v].map(str::to_owned)
    };
    fs::remove_file(dir.join("keys/release-3.key")).expect("one release key away");
    ok(&run(&publish("1.0.0")));
    ok(&["verify", "--dir", d]);
    let aside = tmp.path().join("release-2.key");
    fs::rename(dir.join("keys/release-2.key"), &aside).expect("another away");
    let releases = ok(&["releases", "--dir", d, "--json"]);
    let err = fails(&run(&publish("2.0.0")));
    assert!(
        err.contains("1 valid release signature(s), 2 required"),
        "{err}"
    );
    assert_eq!(ok(&["releases", "--dir", d, "--json"]), releases);
    fs::rename(&aside, dir.join("keys/release-2.key")).expect("back");
    // The three root keys go offline, apart.
    let offline: Vec<String> = ["root.key", "root-2.key", "root-3.key"]
        .iter()
        .map(|name| {
            let to = tmp.path().join(name);
            fs::rename(dir.join("keys").join(name), &to).expect("take a root key offline");
            to.to_str().expect("utf-8").to_owned()
        })
        .collect();
    let rotate = |roots: &[&String]| {
        let mut args = vec!["rotate-key", "--dir", d, "--role", "release"];
        for r in roots {
            args.extend(["--root-key", r.as_str()]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let err = fails(&run(&rotate(&[&offline[1]])));
    assert!(
        err.contains("1 valid root signature(s), 2 required"),
        "{err}"
    );
    let out: serde_json::Value =
        serde_json::from_str(&ok(&run(&rotate(&[&offline[0], &offline[2]])))).expect("json");
    assert_eq!(out["trust_version"], 2);
    ok(&["verify", "--dir", d]);
    // The rotated release role is the one new key; the others are gone,
    // and publishing goes on with it.
    assert!(!dir.join("keys/release-2.key").exists());
    ok(&run(&publish("2.0.0")));
    ok(&["verify", "--dir", d]);
}

//! `e2e/cluster/down.sh` leaves nothing behind, even after every process of a
//! cluster was killed with SIGKILL: no process, mount, network interface,
//! network namespace, route, cgroup, iptables or nftables rule.
//!
//! The test starts a second local cluster of its own (with its real node) in a
//! state directory of its own, checks that the node really made those things,
//! kills every process of that cluster (the control plane, the node's daemons
//! and its containers keep running until then), runs `down.sh` and compares
//! the host with what it was before. The cluster the other tests use is left
//! alone: its node lives in its own namespaces, so the host's view is stable.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLUSTER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster");

/// What a cluster may leave on the host, as comparable text.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    mounts: Vec<String>,
    links: Vec<String>,
    routes: Vec<String>,
    netns: Vec<String>,
    iptables: Vec<String>,
    nftables: Vec<String>,
    cgroups: Vec<String>,
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sorted_lines(text: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| keep(l))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn host_state() -> HostState {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    // Link names and their state flags; counters and addresses change on their own.
    let links = run("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect::<Vec<_>>()
        .join("\n");
    let iptables = run("iptables-save", &[]);
    let nft = run("sh", &["-c", "nft list ruleset 2>/dev/null || true"]);
    let cgroups = run(
        "sh",
        &[
            "-c",
            "find /sys/fs/cgroup/*/aleph -maxdepth 1 -type d 2>/dev/null || true",
        ],
    );
    HostState {
        mounts: sorted_lines(&mounts, |_| true),
        links: sorted_lines(&links, |_| true),
        routes: sorted_lines(&run("ip", &["route", "show"]), |_| true),
        netns: sorted_lines(&run("ip", &["netns", "list"]), |_| true),
        // Counters and the dump's timestamps change on their own.
        iptables: sorted_lines(&iptables, |l| !l.starts_with('#') && !l.starts_with(':')),
        nftables: sorted_lines(&nft, |l| !l.trim_start().starts_with("counter")),
        cgroups: sorted_lines(&cgroups, |_| true),
    }
}

/// Pids of every process whose command line or working directory names `dir`.
fn processes_of(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn script(name: &str, state: &Path) -> Command {
    let mut command = Command::new(Path::new(CLUSTER_DIR).join(name));
    command.env("ALEPH_STATE", state);
    // Random ports of its own: never the ones of the cluster under test.
    for var in [
        "ALEPH_ETCD_PORT",
        "ALEPH_ETCD_PEER_PORT",
        "ALEPH_APISERVER_PORT",
        "ALEPH_KCM_PORT",
        "ALEPH_SCHEDULER_PORT",
        "ALEPH_KWOK_PORT",
    ] {
        command.env_remove(var);
    }
    command
}

fn kill_all(state: &Path) -> usize {
    let mut killed = 0;
    let mut pid_files: Vec<PathBuf> = Vec::new();
    for dir in [state.join("pids"), state.join("node/pids")] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            pid_files.push(entry.path());
        }
    }
    for file in pid_files {
        if let Ok(pid) = std::fs::read_to_string(&file)
            && let Ok(pid) = pid.trim().parse::<i32>()
            && Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        {
            killed += 1;
        }
    }
    killed
}

#[test]
fn down_leaves_nothing_behind_after_the_cluster_is_killed() {
    let cache = std::env::var("ALEPH_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/aleph",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    let state = PathBuf::from(format!("{cache}/cleanup-test-{}", std::process::id()));
    let before = host_state();

    let up = script("up.sh", &state)
        .output()
        .expect("cannot run e2e/cluster/up.sh");
    if !up.status.success() {
        let _ = script("down.sh", &state).status();
        panic!("up.sh failed: {}", String::from_utf8_lossy(&up.stderr));
    }
    let node_index = std::fs::read_to_string(state.join("node/index"))
        .expect("the cluster has no real node (node/index)")
        .trim()
        .to_owned();
    let running = host_state();
    let netns = format!("aleph-n{node_index}");
    assert!(
        running.netns.iter().any(|n| n.starts_with(&netns)),
        "the real node's network namespace {netns} is missing while the cluster runs"
    );
    assert!(
        running
            .links
            .iter()
            .any(|l| l.starts_with(&format!("aleph-h{node_index}"))),
        "the real node's link is missing while the cluster runs"
    );
    let containers = run(
        "sh",
        &[
            "-c",
            &format!(
                "find /sys/fs/cgroup/pids/aleph/{node_index}/pods -name cgroup.procs -exec cat {{}} + | wc -l"
            ),
        ],
    );
    let containers: usize = containers.trim().parse().unwrap_or(0);
    assert!(
        containers > 0,
        "no container runs on the test cluster's real node (CoreDNS should)"
    );

    let killed = kill_all(&state);
    assert!(killed >= 6, "killed only {killed} recorded processes");
    let down = script("down.sh", &state)
        .output()
        .expect("cannot run e2e/cluster/down.sh");
    assert!(
        down.status.success(),
        "down.sh failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );

    let after = host_state();
    let left = processes_of(&state);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!state.exists(), "{} is still there", state.display());
    // Left behind: what is there after and was not before (what went away
    // meanwhile, such as a stale cgroup of an earlier run, is no leak).
    for (what, before, after) in [
        ("mounts", &before.mounts, &after.mounts),
        ("network interfaces", &before.links, &after.links),
        ("routes", &before.routes, &after.routes),
        ("network namespaces", &before.netns, &after.netns),
        ("iptables rules", &before.iptables, &after.iptables),
        ("nftables rules", &before.nftables, &after.nftables),
        ("cgroups", &before.cgroups, &after.cgroups),
    ] {
        let left: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        assert!(left.is_empty(), "{what} left behind: {left:?}");
    }
    println!(
        "cleanup: killed {killed} processes and {containers} container processes; host unchanged"
    );
}

//! The processes of the benchmark (the stub engine, aleph-gateway, nginx),
//! each pinned to its CPU with `taskset`, and what `/proc` says of them.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BenchError, Result};

/// The uid and gid nginx runs as when the benchmark runs as root.
const NOBODY: u32 = 65534;

/// A free port on the loopback interface.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Pins every thread of this process to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| BenchError::Setup(format!("taskset: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!("taskset exited with {status}")))
    }
}

/// Whether this process runs as root (then nginx is started as nobody).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args` on `cpu` (when given), its output in `dir/name.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        cpu: Option<usize>,
        dir: &Path,
        stdout: Stdio,
    ) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", program.display())))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line the process prints (the stub prints its address).
    pub fn first_line(&mut self) -> Result<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Setup(format!("{}: no stdout", self.name)))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim().is_empty() {
            return Err(BenchError::Setup(format!(
                "{} printed nothing; see {}",
                self.name,
                self.log.display()
            )));
        }
        Ok(line.trim().to_string())
    }

    /// Fails when the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(BenchError::Setup(format!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            ))),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The nice value of a process.
pub fn nice(pid: u32) -> Option<i64> {
    stat_fields(pid)?.get(16)?.parse().ok()
}

/// User plus system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat; state (field 3) is the first here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The processes whose parent is `pid` (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p).and_then(|f| f.get(1).and_then(|ppid| ppid.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time of a set of processes between two readings.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    pids: Vec<u32>,
    ticks: u64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> Self {
        let ticks = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        Self {
            pids,
            ticks,
            at: Instant::now(),
        }
    }

    /// Percent of one core used since the start.
    pub fn percent(&self, ticks_per_second: f64) -> f64 {
        let now: u64 = self.pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        #[allow(clippy::cast_precision_loss)]
        let used = now.saturating_sub(self.ticks) as f64 / ticks_per_second;
        100.0 * used / self.at.elapsed().as_secs_f64()
    }
}

/// What nginx is told: a plain reverse proxy to `engine`.
pub fn nginx_config(dir: &Path, listen: SocketAddr, engine: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"# Written by aleph-gateway-bench: nginx as a plain reverse proxy.
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream engine {{
        server {engine};
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen};
        keepalive_requests 10000000;
        keepalive_timeout 300s;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

/// Starts nginx (as nobody when this process is root) from a config in `dir`.
pub fn start_nginx(
    nginx: &Path,
    dir: &Path,
    listen: SocketAddr,
    engine: SocketAddr,
    cpu: Option<usize>,
) -> Result<Proc> {
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let config = nginx_dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(&nginx_dir, listen, engine))?;
    let mut args = Vec::new();
    let program = if is_root() {
        std::os::unix::fs::chown(&nginx_dir, Some(NOBODY), Some(NOBODY))?;
        args.extend(
            [
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
                "--clear-groups",
            ]
            .map(String::from),
        );
        args.push(nginx.display().to_string());
        PathBuf::from("setpriv")
    } else {
        nginx.to_path_buf()
    };
    args.extend([
        "-p".to_string(),
        nginx_dir.display().to_string(),
        "-c".to_string(),
        config.display().to_string(),
        "-e".to_string(),
        nginx_dir.join("nginx-error.log").display().to_string(),
    ]);
    Proc::spawn("nginx", &program, &args, cpu, dir, Stdio::null())
}

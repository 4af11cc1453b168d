//! The machine the benchmarks run on, as their reports describe it.

/// The CPU model `/proc/cpuinfo` names, or "unknown CPU".
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string()
}

/// The kernel's release, from `/proc/sys/kernel/osrelease`.
pub fn kernel_release() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kernel.trim().to_string()
}

/// The cores this process may use.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Seconds of CPU per process name (`/proc/<pid>/comm`, which the kernel
/// cuts to 15 bytes), summed over the processes of each name now running,
/// for the names in `names`; and the machine's busy seconds (all cores) as
/// `"(machine)"`. Two readings' difference is what each used between them.
pub fn cpu_seconds(names: &[&str]) -> std::collections::BTreeMap<String, f64> {
    let mut seconds = std::collections::BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(stat) = entry
                .file_name()
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|_| std::fs::read_to_string(entry.path().join("stat")).ok())
            else {
                continue;
            };
            if let Some((comm, used)) = process_cpu(&stat)
                && names.contains(&comm)
            {
                *seconds.entry(comm.to_string()).or_insert(0.0) += used;
            }
        }
    }
    if let Some(busy) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| machine_busy(&s))
    {
        seconds.insert(MACHINE.to_string(), busy);
    }
    seconds
}

/// The key of the machine's busy seconds in [`cpu_seconds`].
pub const MACHINE: &str = "(machine)";

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on every
/// Linux architecture this runs on).
const TICKS: f64 = 100.0;

/// A process's name and CPU seconds (user and system) from its
/// `/proc/<pid>/stat` line: the name is in parentheses and may hold spaces
/// or parentheses itself, so the fields are counted after its last `)`.
fn process_cpu(stat: &str) -> Option<(&str, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((comm, (user + system) / TICKS))
}

/// The seconds the machine's cores were busy (all but idle and iowait) since
/// boot, from `/proc/stat`'s `cpu` line (guest time is inside user time).
fn machine_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<f64>() - idle) / TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_line_gives_its_name_and_cpu_seconds() {
        let line = "4242 (kube-apiserver) S 1 4242 4242 0 -1 4194560 9 0 0 0 1234 566 0 0 20 0 12 0 100 0 0";
        assert_eq!(process_cpu(line), Some(("kube-apiserver", 18.0)));
        // A name with a space and a parenthesis of its own.
        let odd = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 50 25 0 0";
        assert_eq!(process_cpu(odd), Some(("a (b) c", 0.75)));
        assert_eq!(process_cpu("7 (short) R 1"), None);
    }

    #[test]
    fn the_machine_is_busy_but_for_idle_and_iowait() {
        let stat = "cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 50 10 15 500 25 2 2 5 0 0\n";
        // 100 + 20 + 30 + 5 + 5 + 10 ticks busy; 1000 idle and 50 iowait left out.
        assert_eq!(machine_busy(stat), Some(1.7));
        assert_eq!(machine_busy("intr 1 2 3"), None);
    }

    #[test]
    fn this_process_is_found_by_its_name() {
        let own = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let own = own.trim();
        let seconds = cpu_seconds(&[own]);
        assert!(seconds.contains_key(own), "{seconds:?}");
        assert!(
            seconds.get(MACHINE).is_some_and(|s| *s > 0.0),
            "{seconds:?}"
        );
    }
}

//! Process-level helpers: file-descriptor limit, CPU time from /proc, ephemeral port range,
//! and the loopback-only check for every URL the bench talks to.

use std::net::IpAddr;

/// RLIMIT_NOFILE after [`raise_nofile`].
#[derive(Debug, Clone, Copy)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; when the hard limit is below `wanted`, first
/// tries to raise the hard limit too (works for root / CAP_SYS_RESOURCE, up to fs.nr_open).
/// Returns the limits in force afterwards.
// `rlim_t` is not `u64` on every platform, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile(wanted: u64) -> NofileLimit {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return NofileLimit { soft: 0, hard: 0 };
        }
        if (lim.rlim_max as u64) < wanted {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(wanted);
            let target = wanted.min(nr_open);
            let bigger = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: target as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &bigger) == 0 {
                lim = bigger;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        NofileLimit {
            soft: lim.rlim_cur as u64,
            hard: lim.rlim_max as u64,
        }
    }
}

/// Clock ticks per second for /proc/*/stat times.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of a process in seconds, split as the kernel accounts it.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    /// utime: the process's own code (and its libraries).
    pub user: f64,
    /// stime: the kernel working for it; for a server on loopback that is mostly the send path,
    /// which also runs the receiving socket's side: much the same for any server writing the
    /// same frames.
    pub sys: f64,
}

impl CpuTimes {
    /// user + sys.
    pub fn total(&self) -> f64 {
        self.user + self.sys
    }
}

/// utime and stime of a process, from `/proc/<pid>/stat` (`self` for this process).
pub fn cpu_times(pid: &str) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: the fields we want follow its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(CpuTimes {
        user: utime / clk_tck(),
        sys: stime / clk_tck(),
    })
}

/// utime + stime of a process in seconds (`self` for this process).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    cpu_times(pid).map(|t| t.total())
}

/// Machine-wide CPU time (all cores, clock ticks) from /proc/stat.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq.
    pub busy: f64,
    /// Time the hypervisor gave to others while this VM wanted to run.
    pub steal: f64,
    pub total: f64,
}

/// Reads the machine's CPU counters.
pub fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    let steal = v.get(7).copied().unwrap_or(0.0);
    Some(MachineCpu {
        busy: total - idle - steal,
        steal,
        total,
    })
}

/// Resident memory of a process in MiB (`self` for this process).
pub fn rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// Size of the kernel's ephemeral port range (net.ipv4.ip_local_port_range).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Number of CPUs this process may run on.
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `host:port` and path prefix of an `http://` / `ws://` URL.
pub struct ParsedUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `scheme://host[:port][/path]` (no userinfo).
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url}: not a URL"))?;
    let default_port = match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return Err(format!("{url}: unsupported scheme {scheme}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_owned()),
        None => (rest, String::new()),
    };
    if authority.contains('@') {
        return Err(format!("{url}: credentials in URLs are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: bad IPv6 host"))?;
        (h.to_owned(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url}: bad port"))?,
        None => default_port,
    };
    Ok(ParsedUrl { host, port, path })
}

/// Whether `host` is a loopback name or address (127.0.0.0/8, ::1, localhost).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The `n`th source address of 127.0.0.0/8 counting from 127.0.0.1.
pub fn source_ip(n: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(
        u32::from_be_bytes([127, 0, 0, 1]) + n,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_loopback() {
        let u = parse_url("http://127.0.0.1:3000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 3000, "")
        );
        let u = parse_url("http://[::1]:9/x/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9, "/x"));
        assert!(is_loopback_host("127.3.2.1") && is_loopback_host("::1"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("example.com"));
        assert_eq!(source_ip(0).to_string(), "127.0.0.1");
        assert_eq!(source_ip(255).to_string(), "127.0.1.0");
        assert!(cpu_secs("self").is_some());
        // Spinning in user space moves utime, not stime: the fields are the right ones.
        let a = cpu_times("self").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_times("self").unwrap().user - a.user < 0.1 && std::time::Instant::now() < deadline
        {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let b = cpu_times("self").unwrap();
        assert!(b.user - a.user >= 0.1, "utime did not move: {a:?} -> {b:?}");
        assert!(b.sys - a.sys < b.user - a.user, "{a:?} -> {b:?}");
        assert!(rss_mib("self").is_some_and(|m| m > 0.0));
        let m = machine_cpu().unwrap();
        assert!(m.busy >= 0.0 && m.steal >= 0.0 && m.total >= m.busy + m.steal);
    }
}

//! What a dashboard asks of any process, under the names every Prometheus
//! client library uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...), read from `/proc/self` at scrape time, and
//! `stele_build_info`, the version this binary was built as.
//!
//! CPU times in `/proc` are in clock ticks of `USER_HZ`, which Linux fixes at
//! 100 for user space (the same constant Prometheus's own procfs reader uses).
//! Where `/proc` cannot be read the families are declared without samples.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The label set of a family without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// Clock ticks per second of `/proc`'s CPU times.
const USER_HZ: f64 = 100.0;

/// The figures of one scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessFigures {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessFigures {
    /// Reads this process's figures; what cannot be read is `None`.
    pub fn read() -> ProcessFigures {
        let mut figures = ProcessFigures::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let boot_time = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|text| boot_time_seconds(&text));
            figures.apply_stat(&stat, boot_time);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            figures.apply_status(&status);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor, open while it is listed, is one of them.
            figures.open_fds = Some((entries.count() as u64).saturating_sub(1));
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            figures.max_fds = max_open_files(&limits);
        }
        figures
    }

    /// CPU time and start time from `/proc/self/stat`, whose second field (the
    /// command name, in parentheses) may hold spaces: fields are counted after
    /// its closing parenthesis.
    fn apply_stat(&mut self, stat: &str, boot_time_seconds: Option<u64>) {
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return;
        };
        // `rest` starts at field 3 (state); utime and stime are fields 14 and
        // 15, starttime field 22.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).and_then(|text| text.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            self.cpu_seconds = Some((user + system) as f64 / USER_HZ);
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time_seconds) {
            self.start_time_seconds = Some(boot as f64 + start as f64 / USER_HZ);
        }
    }

    /// Memory and threads from `/proc/self/status` (sizes in kB).
    fn apply_status(&mut self, status: &str) {
        for line in status.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let number = value
                .split_whitespace()
                .next()
                .and_then(|text| text.parse::<u64>().ok());
            match name {
                "VmRSS" => self.resident_bytes = number.map(|kb| kb * 1024),
                "VmSize" => self.virtual_bytes = number.map(|kb| kb * 1024),
                "Threads" => self.threads = number,
                _ => {}
            }
        }
    }
}

/// `btime` of `/proc/stat`: the boot time, Unix seconds.
fn boot_time_seconds(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .and_then(|text| text.parse().ok())
}

/// Encodes [`ProcessFigures`] read at each scrape, and the build information.
#[derive(Debug)]
pub struct ProcessCollector;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<f64>,
) -> std::result::Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let Some(value) = value {
        ConstGauge::new(value).encode(metric.encode_family(&NO_LABELS)?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let figures = ProcessFigures::read();
        {
            let mut metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent by the server, in seconds",
                None,
                MetricType::Counter,
            )?;
            if let Some(seconds) = figures.cpu_seconds {
                ConstCounter::new(seconds).encode(metric.encode_family(&NO_LABELS)?)?;
            }
        }
        let bytes = |value: Option<u64>| value.map(|value| value as f64);
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory of the server, in bytes",
            bytes(figures.resident_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory of the server, in bytes (memory maps of segments included)",
            bytes(figures.virtual_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "OS threads of the server",
            bytes(figures.threads),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Open file descriptors of the server",
            bytes(figures.open_fds),
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "The server's limit of open file descriptors (soft)",
            bytes(figures.max_fds),
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the server, Unix seconds",
            figures.start_time_seconds,
        )?;
        let mut metric = encoder.encode_descriptor(
            "stele_build_info",
            "The build of the running server: 1, labelled with its version",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(metric.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and parentheses, as a thread may be named.
        let stat = "4242 (stele (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 150 0 0 20 0 9 0 12345 \
                    123456789 4000 18446744073709551615";
        let mut figures = ProcessFigures::default();
        figures.apply_stat(stat, Some(1_700_000_000));
        assert_eq!(figures.cpu_seconds, Some(4.0));
        assert_eq!(figures.start_time_seconds, Some(1_700_000_000.0 + 123.45));
    }

    #[test]
    fn status_gives_memory_in_bytes_and_threads() {
        let status = "Name:\tstele\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nThreads:\t17\n";
        let mut figures = ProcessFigures::default();
        figures.apply_status(status);
        assert_eq!(figures.virtual_bytes, Some(200 << 20));
        assert_eq!(figures.resident_bytes, Some(10 << 20));
        assert_eq!(figures.threads, Some(17));
    }

    #[test]
    fn limits_and_boot_time_are_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time_seconds("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reads_its_own_figures() {
        let figures = ProcessFigures::read();
        assert!(figures.threads.is_some_and(|threads| threads >= 1), "{figures:?}");
        assert!(
            figures.resident_bytes.is_some_and(|bytes| bytes > 0),
            "{figures:?}"
        );
        assert!(figures.open_fds.is_some_and(|fds| fds >= 3), "{figures:?}");
        assert!(figures.max_fds.is_some(), "{figures:?}");
        assert!(figures.cpu_seconds.is_some(), "{figures:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = figures.start_time_seconds.expect("a start time");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started} vs {now}"
        );
    }
}

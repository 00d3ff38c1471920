//! Log output: text lines through simple_logger, or one JSON object per line with `--json`.
//! Everything goes to stderr, so stdout stays free for whatever wraps the process.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Installs the process-wide logger. Dependencies' records are shown only at trace level.
pub fn init(level: LevelFilter, json: bool) {
    if json {
        log::set_max_level(level);
        let _ = log::set_boxed_logger(Box::new(JsonLogger { level }));
    } else {
        let _ = simple_logger::SimpleLogger::new()
            .with_level(LevelFilter::Warn)
            .with_module_level("sync_proxy", level)
            .with_module_level("jwt_tokens_service", level)
            .with_utc_timestamps()
            .init();
    }
}

struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let line = serde_json::json!({
            "time": time,
            "level": record.level().as_str().to_ascii_lowercase(),
            "module": record.target(),
            "msg": record.args().to_string(),
        });
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    fn flush(&self) {}
}

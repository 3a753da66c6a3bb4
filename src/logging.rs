//! Log set-up for the node binary: text or JSON lines (`LOG_FORMAT`), each carrying the node id,
//! so lines from many replicas can be told apart wherever they are collected.

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Wraps a formatter and adds `node` to every line: the first field of a JSON object, or a
/// `node=<id>` prefix of a text line.
struct WithNode<F> {
    inner: F,
    node_id: String,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => {
                    let id = serde_json::to_string(&self.node_id).map_err(|_| std::fmt::Error)?;
                    write!(writer, "{{\"node\":{id},{rest}")
                }
                None => writer.write_str(&line),
            }
        } else {
            write!(writer, "node={} {line}", self.node_id)
        }
    }
}

/// Installs the global subscriber (`RUST_LOG` filter, default `info`).
pub fn init(format: LogFormat, node_id: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let node_id = node_id.to_owned();
    match format {
        LogFormat::Json => {
            let inner: Format<Json> = Format::default().json();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .fmt_fields(JsonFields::new())
                .event_format(WithNode {
                    inner,
                    node_id,
                    json: true,
                })
                .init();
        }
        LogFormat::Text => {
            let inner: Format<Full> = Format::default();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .fmt_fields(DefaultFields::new())
                .event_format(WithNode {
                    inner,
                    node_id,
                    json: false,
                })
                .init();
        }
    }
}

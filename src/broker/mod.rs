//! Connections to message brokers (NATS, RabbitMQ), shared by the broker sinks and the
//! request intake. Error texts never carry credentials.

pub mod amqp;
pub mod nats;

/// An error and its causes on one line (`a: b: c`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

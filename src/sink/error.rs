//! Errors of the Kafka side: what failed, in words, with the error behind it as the source.

use std::error::Error;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use rdkafka::error::KafkaError;

use super::readback::ReadError;

/// Errors of the Kafka side. Cloned to every waiter of a failed transaction.
///
/// `Display` says the whole story (logs show only the top error); `source()` is the error
/// behind it (a librdkafka error, an I/O error…), when there is one.
#[derive(Debug, Clone)]
pub enum SinkError {
    /// The transaction was aborted; its batches must be fetched again.
    Aborted(Reason),
    /// Kafka refuses a record of this batch for good (too large, topic not writable) and
    /// errors are not tolerated: the partition stops with this reason.
    Rejected(String),
    /// The producer cannot go on (a fatal broker or client error): the worker stops.
    Fatal(Reason),
    /// The shard's producer was fenced: another worker initialised its transactional id
    /// (it owns the shard now; this one lost it, e.g. paused past its session). Nothing of
    /// the transaction was committed; the shard is given up, not the worker.
    Fenced(Reason),
    /// Creating the producer or the topics failed.
    Setup(Reason),
    /// The sink stopped (shutdown).
    Stopped,
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Aborted(r) => write!(f, "transaction aborted: {r}"),
            SinkError::Rejected(r) => write!(f, "record refused: {r}"),
            SinkError::Fatal(r) => write!(f, "fatal Kafka error: {r}"),
            SinkError::Fenced(r) => write!(f, "fenced by the shard's new owner: {r}"),
            SinkError::Setup(r) => write!(f, "Kafka setup failed: {r}"),
            SinkError::Stopped => f.write_str("sink stopped"),
        }
    }
}

impl Error for SinkError {
    /// The error behind the reason itself (not the [`Reason`], whose words the message
    /// already says), so a chain reads once.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SinkError::Aborted(r)
            | SinkError::Fatal(r)
            | SinkError::Fenced(r)
            | SinkError::Setup(r) => r.cause().map(|c| c as &(dyn Error + 'static)),
            SinkError::Rejected(_) | SinkError::Stopped => None,
        }
    }
}

/// Why the sink failed, in words (what it was doing, and what went wrong: the text
/// partitions, logs and metrics show), with the error behind it when there is one.
///
/// It reads as a `&str` (`Deref`), so a reason can be handed to anything that takes text.
#[derive(Debug, Clone)]
pub struct Reason {
    message: String,
    /// Shared, not copied, by every waiter told of one failure (and small: errors of
    /// librdkafka are large, and a `Result` carries its error by value).
    cause: Option<Arc<Cause>>,
}

/// The error behind a [`Reason`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// librdkafka refused a call.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Starting a thread or a runtime failed.
    #[error(transparent)]
    Io(Arc<std::io::Error>),
    /// A topic could not be read to its end.
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl From<std::io::Error> for Cause {
    fn from(e: std::io::Error) -> Self {
        Cause::Io(Arc::new(e))
    }
}

impl Reason {
    /// A reason with no error behind it.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            cause: None,
        }
    }

    /// `{doing}: {error}`, keeping the error as the cause.
    pub fn because(doing: impl fmt::Display, cause: impl Into<Cause>) -> Self {
        let cause = cause.into();
        Self {
            message: format!("{doing}: {cause}"),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The error itself as the reason: its words, and it as the cause.
    pub fn from_cause(cause: impl Into<Cause>) -> Self {
        let cause = cause.into();
        Self {
            message: cause.to_string(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The same reason and cause, the words rewritten by `f` (context added around them).
    pub fn reworded(self, f: impl FnOnce(&str) -> String) -> Self {
        Self {
            message: f(&self.message),
            cause: self.cause,
        }
    }

    /// The whole message.
    pub fn as_str(&self) -> &str {
        &self.message
    }

    /// The error behind it, if any.
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_deref()
    }

    /// The librdkafka error behind it, if that is what it is.
    pub fn kafka_error(&self) -> Option<&KafkaError> {
        match self.cause() {
            Some(Cause::Kafka(e)) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

impl From<String> for Reason {
    fn from(message: String) -> Self {
        Reason::new(message)
    }
}

impl From<&str> for Reason {
    fn from(message: &str) -> Self {
        Reason::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn the_message_says_it_all_and_the_source_is_the_kafka_error() {
        let e = SinkError::Aborted(Reason::because(
            "committing the transaction",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        ));
        let shown = e.to_string();
        assert!(
            shown.starts_with("transaction aborted: committing the transaction: ")
                && shown.contains("too large"),
            "{shown}"
        );
        let source = e.source().expect("a source");
        assert!(source.to_string().contains("too large"));
        let SinkError::Aborted(why) = &e else {
            unreachable!()
        };
        let label: &str = why;
        assert!(label.starts_with("committing"));
        assert!(why.kafka_error().is_some());
        assert!(SinkError::Rejected("x".into()).source().is_none());
        let io = Reason::because("starting", std::io::Error::other("no threads"));
        assert_eq!(io.as_str(), "starting: no threads");
        assert_eq!(
            io.reworded(|m| format!("setup: {m}")).to_string(),
            "setup: starting: no threads"
        );
    }
}

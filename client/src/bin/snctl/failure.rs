//! The CLI's one error: what happened, as the line printed on stderr, and
//! the documented exit code it ends with.

use snctl::{ClientError, ErrorKind};

/// A failure with its exit code.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure {
            code: error.kind().exit_code(),
            message: error.to_string(),
        }
    }
}

pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorKind::Usage.exit_code(),
        message: message.into(),
    }
}

pub fn other(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorKind::Other.exit_code(),
        message: message.into(),
    }
}

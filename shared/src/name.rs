//! Authentication names: what an admin types after `snctl add`, and the key
//! every other command uses. Kept to a conservative alphabet so a name is
//! safe in a file name, a log field and a systemd unit argument.

/// The longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not an authentication name; the message says what to
/// type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("an authentication name cannot be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("authentication name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// Starts with something other than a letter or a digit.
    #[error("authentication name {0:?} must start with a letter or a digit")]
    BadStart(String),
    /// Holds a character outside the alphabet.
    #[error(
        "authentication name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
    )]
    BadCharacter {
        /// The name as given.
        name: String,
        /// The first character refused.
        bad: char,
    },
}

/// The message, for callers that carry errors as text (a usage line).
impl From<NameError> for String {
    fn from(error: NameError) -> String {
        error.to_string()
    }
}

/// Checks an authentication name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or a digit.
///
/// ```
/// assert!(snctl_shared::name::validate("prod").is_ok());
/// assert!(snctl_shared::name::validate("-x").is_err());
/// ```
pub fn validate(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart(name.to_string()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadCharacter {
            name: name.to_string(),
            bad,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_plain_names_and_refuses_the_rest() {
        for ok in ["prod", "dev-2", "acme.test", "A_1", &"x".repeat(64)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-prod", ".hidden", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}

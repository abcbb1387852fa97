//! Authentication names: what an admin types after `snctl add`, and the key
//! every other command uses. Kept to a conservative alphabet so a name is
//! safe in a file name, a log field and a systemd unit argument.

/// The longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks an authentication name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or a digit.
///
/// ```
/// assert!(snctl_shared::name::validate("prod").is_ok());
/// assert!(snctl_shared::name::validate("-x").is_err());
/// ```
pub fn validate(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("an authentication name cannot be empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "authentication name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "authentication name {name:?} must start with a letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "authentication name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        ));
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

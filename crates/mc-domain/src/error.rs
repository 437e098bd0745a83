//! Validation failures. Every failure names the field it is about, so the HTTP edge can
//! answer 422 with a detail that points at the offending input.

use std::fmt;

/// One invalid input: where it is (`loc`, e.g. `["body", "status"]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path to the offending value, outermost first (`body`, `path` or `query`, then the field).
    pub loc: Vec<String>,
    /// A sentence a person can act on.
    pub message: String,
    /// A short machine-readable kind (`missing`, `value_error`, `uuid_parsing`, ...).
    pub kind: &'static str,
}

impl FieldError {
    /// An invalid value in the request body's field `field`.
    pub fn body(field: &str, message: impl Into<String>) -> Self {
        Self::new(["body", field], message, "value_error")
    }

    /// An error at an arbitrary location with an explicit kind.
    pub fn new<I, S>(loc: I, message: impl Into<String>, kind: &'static str) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            loc: loc.into_iter().map(Into::into).collect(),
            message: message.into(),
            kind,
        }
    }
}

/// One or more field errors, reported together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// A single field error.
    pub fn one(error: FieldError) -> Self {
        Self(vec![error])
    }

    /// Shorthand for a single body-field error.
    pub fn body(field: &str, message: impl Into<String>) -> Self {
        Self::one(FieldError::body(field, message))
    }

    /// Adds the result's error, if any, and returns its value.
    pub fn collect<T>(&mut self, result: Result<T, ValidationErrors>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(errors) => {
                self.0.extend(errors.0);
                None
            }
        }
    }

    /// `Ok(())` when nothing was collected.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl From<FieldError> for ValidationErrors {
    fn from(error: FieldError) -> Self {
        Self::one(error)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.loc.join("."), e.message))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

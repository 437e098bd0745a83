//! Form errors by field and the form controls that show them next to the field.

use std::collections::HashMap;

use maud::{Markup, html};

use super::{CSRF_FIELD, PageError};
use crate::error::ApiError;

/// Why a form was refused: messages by field name, plus any not about one field.
#[derive(Debug, Default, Clone)]
pub struct FormErrors {
    by_field: HashMap<String, String>,
    general: Vec<String>,
}

impl FormErrors {
    /// Turns a service error into form errors: validation errors by field, a conflict on
    /// `conflict_field` (or the whole form). Any other error is not about the input and
    /// becomes an error page.
    pub fn from_api(error: ApiError, conflict_field: Option<&str>) -> Result<Self, PageError> {
        let mut errors = Self::default();
        match error {
            ApiError::Validation(fields) => {
                for field in fields.0 {
                    match field.loc.last() {
                        Some(name) if field.loc.len() > 1 => errors.add(name, field.message),
                        _ => errors.general.push(field.message),
                    }
                }
            }
            ApiError::Conflict(message) => match conflict_field {
                Some(name) => errors.add(name, message),
                None => errors.general.push(message),
            },
            other => return Err(PageError::Api(other)),
        }
        Ok(errors)
    }

    /// Records a message for `field` (the first one wins).
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.by_field
            .entry(field.to_owned())
            .or_insert_with(|| message.into());
    }

    /// Adds `other`'s messages (this form's own messages win for a field).
    pub fn merge(&mut self, other: Self) {
        for (field, message) in other.by_field {
            self.add(&field, message);
        }
        self.general.extend(other.general);
    }

    /// The message for `field`.
    pub fn field(&self, field: &str) -> Option<&str> {
        self.by_field.get(field).map(String::as_str)
    }

    /// Nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.by_field.is_empty() && self.general.is_empty()
    }

    /// The summary shown above a refused form.
    pub fn summary(&self) -> Markup {
        html! {
            @if !self.is_empty() {
                div class="form-errors" role="alert" {
                    p { "Nothing was saved. Please correct the fields marked below." }
                    @for message in &self.general { p { (message) } }
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

/// The kind of a text input.
#[derive(Debug, Clone, Copy)]
pub enum InputKind {
    /// Plain text.
    Text,
    /// A secret: never pre-filled.
    Password,
    /// A whole number.
    Number,
    /// A URL-like value.
    Url,
}

/// A labelled input with its error (if any) right below it.
pub fn input(
    label: &str,
    name: &str,
    value: &str,
    kind: InputKind,
    hint: Option<&str>,
    errors: &FormErrors,
) -> Markup {
    let id = format!("field-{name}");
    let error = errors.field(name);
    let described = match (hint.is_some(), error.is_some()) {
        (_, true) => Some(format!("{id}-error")),
        (true, false) => Some(format!("{id}-hint")),
        (false, false) => None,
    };
    let (type_, inputmode) = match kind {
        InputKind::Text => ("text", None),
        InputKind::Password => ("password", None),
        InputKind::Number => ("text", Some("numeric")),
        InputKind::Url => ("text", Some("url")),
    };
    let value = if matches!(kind, InputKind::Password) {
        ""
    } else {
        value
    };
    html! {
        div class={ "field" @if error.is_some() { " invalid" } } {
            label for=(id) { (label) }
            input id=(id) name=(name) type=(type_) value=(value) inputmode=[inputmode]
                autocomplete=[matches!(kind, InputKind::Password).then_some("new-password")]
                aria-invalid=[error.map(|_| "true")] aria-describedby=[described];
            @if let Some(message) = error {
                p class="field-error" id={ (id) "-error" } { (message) }
            } @else if let Some(hint) = hint {
                p class="hint" id={ (id) "-hint" } { (hint) }
            }
        }
    }
}

/// A labelled checkbox.
pub fn checkbox(label: &str, name: &str, checked: bool) -> Markup {
    let id = format!("field-{name}");
    html! {
        div class="field checkbox" {
            input id=(id) name=(name) type="checkbox" value="on" checked[checked];
            label for=(id) { (label) }
        }
    }
}

/// A labelled select with `(value, label)` options.
pub fn select(
    label: &str,
    name: &str,
    options: &[(String, String)],
    selected: &str,
    errors: &FormErrors,
) -> Markup {
    let id = format!("field-{name}");
    let error = errors.field(name);
    html! {
        div class={ "field" @if error.is_some() { " invalid" } } {
            label for=(id) { (label) }
            select id=(id) name=(name) aria-invalid=[error.map(|_| "true")]
                aria-describedby=[error.map(|_| format!("{id}-error"))] {
                @for (value, text) in options {
                    option value=(value) selected[value == selected] { (text) }
                }
            }
            @if let Some(message) = error {
                p class="field-error" id={ (id) "-error" } { (message) }
            }
        }
    }
}

/// An optional whole number from a form field: blank is `None`; anything else that is
/// not an integer is recorded as an error on the field.
pub fn optional_int(raw: Option<&str>, field: &str, errors: &mut FormErrors) -> Option<i64> {
    let text = raw.map(str::trim).filter(|t| !t.is_empty())?;
    match text.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.add(
                field,
                format!("{field} must be a whole number, got {text:?}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_domain::{FieldError, ValidationErrors};

    #[test]
    fn validation_errors_are_placed_by_field() {
        let error = ApiError::Validation(ValidationErrors(vec![
            FieldError::body("name", "name is required"),
            FieldError::new(["body"], "body is broken", "json_invalid"),
        ]));
        let errors = FormErrors::from_api(error, None).unwrap();
        assert_eq!(errors.field("name"), Some("name is required"));
        assert!(errors.summary().into_string().contains("body is broken"));
    }

    #[test]
    fn a_conflict_lands_on_the_named_field_and_other_errors_are_pages() {
        let errors =
            FormErrors::from_api(ApiError::Conflict("taken".into()), Some("slug")).unwrap();
        assert_eq!(errors.field("slug"), Some("taken"));
        assert!(FormErrors::from_api(ApiError::NotFound("Board not found"), None).is_err());
    }

    #[test]
    fn blank_numbers_are_absent_and_words_are_errors() {
        let mut errors = FormErrors::default();
        assert_eq!(optional_int(Some(" "), "max_uses", &mut errors), None);
        assert_eq!(optional_int(Some("3"), "max_uses", &mut errors), Some(3));
        assert_eq!(optional_int(Some("three"), "max_uses", &mut errors), None);
        assert!(errors.field("max_uses").unwrap().contains("whole number"));
    }
}

//! Request extractors whose every failure is an [`ApiError`] naming the offending input:
//! JSON bodies (422 by field, 413 over the limit), UUID path parameters and query strings.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use mc_domain::FieldError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. An empty body reads as `{}`; unknown fields are ignored.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Turns a serde error at `path` into a field error.
fn json_error(path: Vec<String>, error: &serde_json::Error) -> FieldError {
    use serde_json::error::Category;
    let message = error.to_string();
    let mut loc = vec!["body".to_owned()];
    loc.extend(
        path.into_iter()
            .filter(|segment| segment != "?" && !segment.is_empty()),
    );
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => FieldError {
            loc: vec!["body".into()],
            message: format!("request body is not valid JSON: {message}"),
            kind: "json_invalid",
        },
        Category::Data => {
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                loc.push(field.to_owned());
                let field_name = loc[1..].join(".");
                return FieldError {
                    loc,
                    message: format!("{field_name} is required"),
                    kind: "missing",
                };
            }
            let field_name = if loc.len() > 1 {
                loc[1..].join(".")
            } else {
                "body".to_owned()
            };
            let reason = message.split(" at line ").next().unwrap_or(&message);
            FieldError {
                loc,
                message: format!("{field_name}: {reason}"),
                kind: "type_error",
            }
        }
    }
}

/// Refuses a body with U+0000 in any string or key, naming where: PostgreSQL cannot store
/// it in text, so both backends refuse it the same way, up front, rather than one of them
/// failing at the database.
fn reject_nul_characters(value: &serde_json::Value) -> Result<(), ApiError> {
    fn find(value: &serde_json::Value, path: &mut Vec<String>) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(index, item)| {
                path.push(index.to_string());
                let found = find(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(key, item)| {
                path.push(key.clone());
                let found = key.contains('\0') || find(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = Vec::new();
    if !find(value, &mut path) {
        return Ok(());
    }
    let field = if path.is_empty() {
        "body".to_owned()
    } else {
        path.join(".")
    };
    let mut loc = vec!["body".to_owned()];
    loc.extend(path);
    Err(ApiError::field(FieldError {
        loc,
        message: format!("{field} must not contain NUL characters (\\u0000)"),
        kind: "string_nul",
    }))
}

/// Parses a JSON body into `T`, naming the field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // Syntax first: a broken body is `json_invalid` even when a value before the break
    // has the wrong type.
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ApiError::field(json_error(Vec::new(), &e)))?;
    reject_nul_characters(&value)?;
    let value = serde_path_to_error::deserialize(value).map_err(|e| {
        ApiError::field(json_error(
            e.path().iter().map(ToString::to_string).collect(),
            e.inner(),
        ))
    })?;
    Ok(value)
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::field(FieldError::new(
                    ["body"],
                    format!("request body could not be read: {rejection}"),
                    "body_error",
                ))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a path parameter `name` as an id (422 `uuid_parsing` when malformed).
pub fn path_id<T: FromStr>(raw: &str, name: &str) -> Result<T, ApiError> {
    T::from_str(raw).map_err(|_| {
        ApiError::field(FieldError::new(
            ["path", name],
            format!("{name} must be a UUID, got {raw:?}"),
            "uuid_parsing",
        ))
    })
}

/// The raw query string, parsed into named values with typed accessors.
#[derive(Debug, Clone, Default)]
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// Parses `application/x-www-form-urlencoded` text (a query string or a form body).
    pub fn parse(text: &str) -> Self {
        Self(serde_urlencoded_pairs(text).into_iter().collect())
    }

    fn invalid(name: &str, message: String, kind: &'static str) -> ApiError {
        ApiError::field(FieldError::new(["query", name], message, kind))
    }

    /// A text parameter, as given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.0
            .get(name)
            .map(|raw| {
                raw.trim().parse::<i64>().map_err(|_| {
                    Self::invalid(name, format!("{name} must be an integer"), "int_parsing")
                })
            })
            .transpose()
    }

    /// A UUID parameter.
    pub fn id<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .filter(|raw| !raw.is_empty())
            .map(|raw| {
                T::from_str(raw.trim()).map_err(|_| {
                    Self::invalid(name, format!("{name} must be a UUID"), "uuid_parsing")
                })
            })
            .transpose()
    }

    /// The page parameters `limit` and `offset`.
    pub fn page(&self) -> Result<mc_domain::page::PageRequest, ApiError> {
        Ok(mc_domain::page::PageRequest::parse(
            self.int("limit")?,
            self.int("offset")?,
        )?)
    }
}

impl FromIterator<(String, String)> for QueryParams {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::parse(parts.uri.query().unwrap_or_default()))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "fields exist to be deserialized")]
    struct Body {
        name: String,
        status: Option<String>,
    }

    fn error_of(body: &str) -> FieldError {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::Validation(errors)) => errors.0[0].clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let e = error_of("{}");
        assert_eq!(e.loc, vec!["body", "name"]);
        assert_eq!(e.kind, "missing");
        assert_eq!(error_of("").loc, vec!["body", "name"]);
    }

    #[test]
    fn wrong_types_are_named() {
        let e = error_of(r#"{"name": "a", "status": 5}"#);
        assert_eq!(e.loc, vec!["body", "status"]);
    }

    #[test]
    fn invalid_json_is_reported_on_the_body() {
        assert_eq!(error_of("{nope").kind, "json_invalid");
        assert_eq!(error_of(r#"{"name":"a"} trailing"#).kind, "json_invalid");
    }

    #[test]
    fn query_strings_are_percent_decoded() {
        assert_eq!(
            serde_urlencoded_pairs("a=b%20c&d=e+f&g"),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "e f".into()),
                ("g".into(), "".into())
            ]
        );
    }
}

//! Pagination: `limit` 1..=200 (default 200) and `offset` ≥ 0, as upstream.

use crate::error::{FieldError, ValidationErrors};

/// Largest and default page size.
pub const MAX_PAGE_LIMIT: u32 = 200;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows to return.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: MAX_PAGE_LIMIT,
            offset: 0,
        }
    }
}

impl PageRequest {
    /// Validates the query parameters `limit` and `offset`.
    pub fn parse(limit: Option<i64>, offset: Option<i64>) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let limit = limit.unwrap_or(i64::from(MAX_PAGE_LIMIT));
        if !(1..=i64::from(MAX_PAGE_LIMIT)).contains(&limit) {
            errors.0.push(FieldError::new(
                ["query", "limit"],
                format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
                "value_error",
            ));
        }
        let offset = offset.unwrap_or(0);
        if offset < 0 {
            errors.0.push(FieldError::new(
                ["query", "offset"],
                "offset must be 0 or more",
                "value_error",
            ));
        }
        errors.into_result()?;
        Ok(Self {
            limit: u32::try_from(limit).unwrap_or(MAX_PAGE_LIMIT),
            offset: u64::try_from(offset).unwrap_or(0),
        })
    }
}

/// One page of results and the total before paging.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Rows matching the query, before limit and offset.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            PageRequest::parse(None, None).unwrap(),
            PageRequest::default()
        );
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(Some(201), None).is_err());
        assert!(PageRequest::parse(Some(200), Some(-1)).is_err());
        assert_eq!(PageRequest::parse(Some(5), Some(10)).unwrap().offset, 10);
    }
}

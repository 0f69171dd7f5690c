//! The stored responses' routes: `GET` and `DELETE /v1/responses/{id}`, and
//! `GET /v1/responses/{id}/input_items` (the store itself: responses_store.rs).

use super::error::ApiError;
use super::responses_types::{InputItemList, ResponseDeleted, ResponseObject};
use super::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("response_not_found"),
        ..ApiError::invalid("response_id", format!("Response with id '{id}' not found."))
    }
}

/// Retrieves a stored response.
#[utoipa::path(get, path = "/v1/responses/{response_id}", operation_id = "getResponse", tag = "openai",
    params(("response_id" = String, Path)),
    responses((status = 200, body = ResponseObject), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResponseObject>, ApiError> {
    state
        .responses
        .get(&id)
        .map(|s| Json(s.response))
        .ok_or_else(|| not_found(&id))
}

/// Deletes a stored response.
#[utoipa::path(delete, path = "/v1/responses/{response_id}", operation_id = "deleteResponse", tag = "openai",
    params(("response_id" = String, Path)),
    responses((status = 200, body = ResponseDeleted), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResponseDeleted>, ApiError> {
    if !state.responses.delete(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(ResponseDeleted {
        id,
        object: "response.deleted",
        deleted: true,
    }))
}

/// `GET /v1/responses/{id}/input_items`' query: OpenAI's paging.
#[derive(Debug, utoipa::IntoParams)]
pub struct InputItemsQuery {
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `asc` or `desc` (default, newest first).
    pub order: Option<String>,
    /// The id of the item the page starts after.
    pub after: Option<String>,
    /// `include[]` (repeatable): accepted (input items carry no logprobs or reasoning to add).
    #[param(rename = "include[]")]
    pub include: Option<Vec<String>>,
}

impl InputItemsQuery {
    /// From the query's pairs: `include[]` may repeat, as the SDKs send a list (serde's
    /// query parser takes one value per key); anything else is a 400 naming it.
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut q = Self {
            limit: None,
            order: None,
            after: None,
            include: None,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    let limit = value.parse().map_err(|_| {
                        ApiError::invalid(
                            "limit",
                            format!("'limit' must be an integer, got '{value}'"),
                        )
                    })?;
                    q.limit = Some(limit);
                }
                "order" => q.order = Some(value),
                "after" => q.after = Some(value),
                "include[]" | "include" => q.include.get_or_insert_with(Vec::new).push(value),
                _ => {
                    return Err(ApiError {
                        code: Some("unknown_parameter"),
                        ..ApiError::invalid(&key, format!("unknown parameter '{key}'"))
                    })
                }
            }
        }
        Ok(q)
    }
}

/// Lists a stored response's input items.
#[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", operation_id = "listInputItems", tag = "openai",
    params(("response_id" = String, Path), InputItemsQuery),
    responses((status = 200, body = InputItemList), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn input_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<InputItemList>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = InputItemsQuery::from_pairs(pairs)?;
    const INCLUDES: [&str; 2] = [
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
    ];
    if let Some(inc) = q
        .include
        .iter()
        .flatten()
        .find(|i| !INCLUDES.contains(&i.as_str()))
    {
        return Err(ApiError::invalid(
            "include",
            format!("'include' can hold {}, got '{inc}'", INCLUDES.join(" and ")),
        ));
    }
    let limit = match q.limit {
        None => 20,
        Some(l @ 1..=100) => l as usize,
        Some(l) => {
            return Err(ApiError::invalid(
                "limit",
                format!("'limit' must be between 1 and 100, got {l}"),
            ))
        }
    };
    let mut items = state
        .responses
        .get(&id)
        .ok_or_else(|| not_found(&id))?
        .input;
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("'order' must be 'asc' or 'desc', got '{o}'"),
            ))
        }
    }
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    if let Some(after) = &q.after {
        let Some(at) = items
            .iter()
            .position(|v| id_of(v).as_deref() == Some(after))
        else {
            return Err(ApiError::invalid(
                "after",
                format!("no input item '{after}' in response '{id}'"),
            ));
        };
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(Json(InputItemList {
        object: "list",
        first_id: items.first().and_then(id_of),
        last_id: items.last().and_then(id_of),
        data: items,
        has_more,
    }))
}

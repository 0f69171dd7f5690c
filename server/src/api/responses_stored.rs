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
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InputItemsQuery {
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `asc` or `desc` (default, newest first).
    pub order: Option<String>,
    /// The id of the item the page starts after.
    pub after: Option<String>,
    /// Accepted (only `message.output_text.logprobs` exists here, and input has none).
    #[serde(rename = "include[]", alias = "include")]
    pub include: Option<String>,
}

/// Lists a stored response's input items.
#[utoipa::path(get, path = "/v1/responses/{response_id}/input_items", operation_id = "listInputItems", tag = "openai",
    params(("response_id" = String, Path), InputItemsQuery),
    responses((status = 200, body = InputItemList), (status = 400, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn input_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<InputItemsQuery>, QueryRejection>,
) -> Result<Json<InputItemList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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

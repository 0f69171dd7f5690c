//! `GET /v1/models` and `GET /v1/models/{id}`.

use super::error::ApiError;
use super::openai::{ModelCard, ModelList};
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;

fn card(state: &AppState, id: &str) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model",
        created: state.model.created,
        owned_by: "lowbit",
        max_model_len: state.engine.max_model_len(),
    }
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", operation_id = "listModels", tag = "openai", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![card(&state, state.model_name())],
    })
}

/// One model by id.
#[utoipa::path(get, path = "/v1/models/{id}", operation_id = "retrieveModel", tag = "openai", params(("id" = String, Path, description = "model id")), responses((status = 200, body = ModelCard), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    state.check_model(&id)?;
    Ok(Json(card(&state, &id)))
}

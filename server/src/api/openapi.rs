//! `GET /openapi.json`, generated from the request and response types (utoipa).

use super::error::{ErrorBody, ErrorDetail};
use super::openai::*;
use super::responses_types::*;
use axum::Json;
use utoipa::OpenApi;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lowbit",
        description = "OpenAI-compatible API of the lowbit inference server"
    ),
    paths(
        super::chat::create,
        super::completions::create,
        super::responses::create,
        super::responses_stored::get_one,
        super::responses_stored::delete,
        super::responses_stored::input_items,
        super::models::list,
        super::models::get_one,
        super::tokenize::tokenize,
        super::tokenize::detokenize,
        super::health::health,
        super::health::ready,
        super::health::metrics,
    ),
    components(schemas(
        ChatCompletionRequest,
        CompletionRequest,
        ChatCompletion,
        ChatCompletionChunk,
        Completion,
        ModelList,
        ModelCard,
        TokenizeRequest,
        TokenizeResponse,
        DetokenizeRequest,
        DetokenizeResponse,
        ErrorBody,
        ErrorDetail,
        UsageBody,
        ResponsesRequest,
        ResponseObject,
        ResponseDeleted,
        InputItemList
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

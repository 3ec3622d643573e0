//! Saved pipelines (CRUD) and the built-in templates. Specs are validated by
//! [`phoenix_wire::pipeline`] before they are stored. Every signed-in user
//! (viewer and up) reads; operators change, and every change is audited in
//! the same transaction.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Path, Rejection, json_body};
use phoenix_wire::pipeline::{PipelineSpec, SpecError, Template, templates};

/// Longest pipeline or experiment name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 2000;

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::bad_request(e.code, e.detail)
    }
}

/// A name shown to people: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters.
pub fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("a name has 1 to {MAX_NAME_CHARS} characters and no control characters"),
        ));
    }
    Ok(name.to_owned())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pipeline {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub spec: PipelineSpec,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A pipeline to create, or the whole new content of one (PUT).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineInput {
    /// Unique, case-insensitively.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[schema(value_type = PipelineSpec)]
    pub spec: serde_json::Value,
}

struct Validated {
    name: String,
    description: String,
    spec: PipelineSpec,
}

impl PipelineInput {
    fn validate(self) -> ApiResult<Validated> {
        let name = validate_name(&self.name)?;
        let control = |c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t');
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS
            || self.description.chars().any(control)
        {
            return Err(ApiError::bad_request(
                "invalid_description",
                format!(
                    "a description has at most {MAX_DESCRIPTION_CHARS} characters, and no control \
                     characters but line breaks and tabs"
                ),
            ));
        }
        let spec = PipelineSpec::from_json(&self.spec)?;
        Ok(Validated {
            name,
            description: self.description,
            spec,
        })
    }
}

const COLUMNS: &str = "id, name, description, spec, created_by, created_at, updated_at";

fn pipeline_from(row: &sqlx::postgres::PgRow) -> ApiResult<Pipeline> {
    let spec: serde_json::Value = row.get("spec");
    Ok(Pipeline {
        id: row.get("id"),
        name: row.get("name"),
        description: row.get("description"),
        spec: serde_json::from_value(spec)
            .map_err(|e| anyhow::anyhow!("a stored pipeline spec does not parse: {e}"))?,
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn name_taken(name: &str) -> impl FnOnce(sqlx::Error) -> ApiError + '_ {
    move |e| match ApiError::from(e) {
        ApiError::Conflict { .. } => ApiError::conflict(
            "pipeline_exists",
            format!("a pipeline named {name} already exists (names are case-insensitive)"),
        ),
        other => other,
    }
}

/// The built-in pipeline templates: full fidelity and common reductions.
#[utoipa::path(get, path = "/api/v1/pipeline-templates", tag = "pipelines",
    responses((status = 200, body = [Template]), (status = 401)), security(("bearer" = [])))]
pub async fn list_templates(_caller: Caller) -> Json<Vec<Template>> {
    Json(templates())
}

/// All saved pipelines, by name.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines",
    responses((status = 200, body = [Pipeline]), (status = 401)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<Pipeline>>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM pipelines ORDER BY lower(name)"
    ))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.iter().map(pipeline_from).collect::<ApiResult<_>>()?,
    ))
}

/// Save a pipeline (operator).
#[utoipa::path(post, path = "/api/v1/pipelines", tag = "pipelines", request_body = PipelineInput,
    responses((status = 201, body = Pipeline), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<PipelineInput>, Rejection>,
) -> ApiResult<(StatusCode, Json<Pipeline>)> {
    caller
        .require(Role::Operator, "pipelines.create", &state)
        .await?;
    let input = json_body(body)?.validate()?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO pipelines (name, description, spec, created_by) VALUES ($1, $2, $3, $4) \
         RETURNING {COLUMNS}"
    ))
    .bind(&input.name)
    .bind(&input.description)
    .bind(serde_json::to_value(&input.spec).map_err(anyhow::Error::from)?)
    .bind(caller.actor())
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken(&input.name))?;
    let pipeline = pipeline_from(&row)?;
    caller
        .event("pipelines.create", format!("pipeline:{}", pipeline.id))
        .details(serde_json::json!({ "name": pipeline.name, "spec": pipeline.spec }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(pipeline)))
}

/// One saved pipeline.
#[utoipa::path(get, path = "/api/v1/pipelines/{id}", tag = "pipelines", params(("id" = Uuid, Path)),
    responses((status = 200, body = Pipeline), (status = 401), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Pipeline>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM pipelines WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))?;
    Ok(Json(pipeline_from(&row)?))
}

/// Replace a saved pipeline (operator). Experiments keep the spec they were
/// created with.
#[utoipa::path(put, path = "/api/v1/pipelines/{id}", tag = "pipelines", params(("id" = Uuid, Path)),
    request_body = PipelineInput,
    responses((status = 200, body = Pipeline), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Result<Json<PipelineInput>, Rejection>,
) -> ApiResult<Json<Pipeline>> {
    caller
        .require(Role::Operator, "pipelines.update", &state)
        .await?;
    let input = json_body(body)?.validate()?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE pipelines SET name = $2, description = $3, spec = $4, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&input.name)
    .bind(&input.description)
    .bind(serde_json::to_value(&input.spec).map_err(anyhow::Error::from)?)
    .fetch_optional(&mut *tx)
    .await
    .map_err(name_taken(&input.name))?
    .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))?;
    let pipeline = pipeline_from(&row)?;
    caller
        .event("pipelines.update", format!("pipeline:{id}"))
        .details(serde_json::json!({ "name": pipeline.name, "spec": pipeline.spec }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(pipeline))
}

/// Delete a saved pipeline (operator). Experiments that used it keep their
/// snapshot of its spec.
#[utoipa::path(delete, path = "/api/v1/pipelines/{id}", tag = "pipelines", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    caller
        .require(Role::Operator, "pipelines.delete", &state)
        .await?;
    let mut tx = state.pool.begin().await?;
    let name: String = sqlx::query_scalar("DELETE FROM pipelines WHERE id = $1 RETURNING name")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pipeline {id}")))?;
    caller
        .event("pipelines.delete", format!("pipeline:{id}"))
        .details(serde_json::json!({ "name": name }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

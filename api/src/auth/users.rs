//! User management (admin only) and the first admin of a new installation.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Caller, Role, password};
use crate::AppState;
use crate::audit::Event;
use crate::error::{ApiError, ApiResult};
use crate::input::{Json, Path as UrlPath};

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UserChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// A new password; every session of the user is revoked.
    pub password: Option<String>,
}

fn user_from(r: &sqlx::postgres::PgRow) -> ApiResult<User> {
    Ok(User {
        id: r.get("id"),
        username: r.get("username"),
        role: Role::parse(r.get::<&str, _>("role"))
            .ok_or_else(|| anyhow::anyhow!("unknown role in the database"))?,
        disabled: r.get("disabled"),
        created_at: r.get("created_at"),
    })
}

fn validate_username(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_username",
            "username: 1 to 64 of letters, digits, '.', '_', '-', '@'",
        ))
    }
}

/// All users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = [User]), (status = 401), (status = 403)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require(Role::Admin, "users.list", &state).await?;
    let rows = sqlx::query(
        "SELECT id, username, role, disabled, created_at FROM users ORDER BY lower(username)",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.iter().map(user_from).collect::<ApiResult<_>>()?))
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 400), (status = 401), (status = 403), (status = 409)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require(Role::Admin, "users.create", &state).await?;
    validate_username(&new.username)?;
    password::validate_new(&new.password)?;
    let hash = password::hash(new.password).await?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) \
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(&new.username)
    .bind(&hash)
    .bind(new.role.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match ApiError::from(e) {
        ApiError::Conflict { .. } => ApiError::conflict(
            "user_exists",
            format!("a user named {} already exists", new.username),
        ),
        other => other,
    })?;
    let user = user_from(&row)?;
    caller
        .event("users.create", format!("user:{}", user.username))
        .details(serde_json::json!({ "role": user.role.as_str() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Change a user's role, enable or disable it, or set a new password.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = UserChange,
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<Uuid>,
    Json(change): Json<UserChange>,
) -> ApiResult<Json<User>> {
    caller.require(Role::Admin, "users.update", &state).await?;
    let hash = match change.password {
        Some(p) => {
            password::validate_new(&p)?;
            Some(password::hash(p).await?)
        }
        None => None,
    };
    let mut tx = state.pool.begin().await?;
    let current = sqlx::query("SELECT role, disabled FROM users WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    let demotes_admin = current.get::<&str, _>("role") == "admin"
        && (change.role.is_some_and(|r| r != Role::Admin) || change.disabled == Some(true));
    if demotes_admin {
        ensure_another_admin(&mut tx, id).await?;
    }
    let row = sqlx::query(
        "UPDATE users SET role = COALESCE($2, role), disabled = COALESCE($3, disabled), \
         password_hash = COALESCE($4, password_hash), updated_at = now() WHERE id = $1 \
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(id)
    .bind(change.role.map(Role::as_str))
    .bind(change.disabled)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    if hash.is_some() || change.disabled == Some(true) {
        sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'user changed' WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    let user = user_from(&row)?;
    caller
        .event("users.update", format!("user:{}", user.username))
        .details(serde_json::json!({
            "role": change.role.map(Role::as_str),
            "disabled": change.disabled,
            "password_changed": hash.is_some(),
        }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(user))
}

/// Delete a user (not yourself, not the last admin).
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<Uuid>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin, "users.delete", &state).await?;
    if id == caller.user_id {
        return Err(ApiError::conflict(
            "delete_self",
            "you cannot delete yourself",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query("SELECT username, role FROM users WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
    if row.get::<&str, _>("role") == "admin" {
        ensure_another_admin(&mut tx, id).await?;
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    caller
        .event(
            "users.delete",
            format!("user:{}", row.get::<&str, _>("username")),
        )
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ensure_another_admin(tx: &mut sqlx::PgConnection, except: Uuid) -> ApiResult<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled AND id <> $1",
    )
    .bind(except)
    .fetch_one(tx)
    .await?;
    if others == 0 {
        return Err(ApiError::conflict(
            "last_admin",
            "this is the last enabled admin; create another admin first",
        ));
    }
    Ok(())
}

/// On a database without users, create `admin` with the password from
/// `password_file` (generated by the supervisor, mode 0600). There is no
/// default password.
pub async fn ensure_initial_admin(
    pool: &sqlx::PgPool,
    password_file: Option<&Path>,
) -> anyhow::Result<()> {
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await?;
    if users > 0 {
        return Ok(());
    }
    let Some(path) = password_file else {
        tracing::warn!(
            "no users exist and no --initial-admin-password-file is set: nobody can log in yet"
        );
        return Ok(());
    };
    let password = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the initial admin password {}: {e}",
            path.display()
        )
    })?;
    let password = password.trim().to_string();
    password::validate_new(&password)
        .map_err(|e| anyhow::anyhow!("initial admin password in {}: {e}", path.display()))?;
    let hash = password::hash(password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO users (username, password_hash, role) VALUES ('admin', $1, 'admin') ON CONFLICT DO NOTHING")
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 1 {
        Event::new("system", "users.create", "user:admin", None)
            .details(serde_json::json!({ "role": "admin", "initial": true, "password_file": path.display().to_string() }))
            .record(&mut *tx)
            .await?;
        tracing::info!(password_file = %path.display(), "created the initial admin user `admin`");
    }
    tx.commit().await?;
    Ok(())
}

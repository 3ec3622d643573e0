//! The console's pages. Each reads through the JSON API's own handlers
//! with the signed-in caller, so it sees what that role may see; each
//! button it draws calls a JSON API route the role is allowed.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::{Html, Signed, error_page, layout, svg};
use crate::AppState;
use crate::agents::{enrollment, registry};
use crate::auth::Role;
use crate::charts::{self, Unit};
use crate::error::ApiResult;
use crate::experiment_state::Action;
use crate::experiments::{self, Experiment, ExperimentDetail};
use crate::input::{Path, Query};

/// How often the live parts of a page refresh, in seconds.
const REFRESH_SECS: u32 = 5;

fn page(signed: &Signed, title: &str, current: &str, content: Markup) -> Response {
    Html(layout(Some(signed), title, current, content)).into_response()
}

fn fragment(result: ApiResult<Markup>) -> Response {
    match result {
        Ok(markup) => Html(markup).into_response(),
        Err(error) => error_page(&error),
    }
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

fn ago(at: Option<DateTime<Utc>>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let secs = (Utc::now() - at).num_seconds().max(0) as u64;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn status_badge(status: &str) -> Markup {
    html! { span class=(format!("status status-{status}")) { (status.replace('_', " ")) } }
}

fn money(dollars: f64) -> String {
    format!("${dollars:.2}")
}

/// A form whose submission the script sends to a JSON API route.
fn api_button(route: &str, label: &str, class: &str, confirm: Option<&str>) -> Markup {
    html! {
        form data-api=(route) data-confirm=[confirm] {
            button type="submit" class=(class) { (label) }
            span class="error" data-report role="status" {}
        }
    }
}

// ---- overview -------------------------------------------------------------

/// The supervisor's health document, or why it cannot be shown.
async fn supervisor_health(state: &AppState) -> Result<serde_json::Value, String> {
    let Some(url) = state.settings.supervisor_health_url.clone() else {
        return Err("the supervisor's health endpoint is not configured \
                    (--supervisor-health-url)"
            .into());
    };
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("a default HTTP client builds")
    });
    let response = CLIENT
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("cannot reach the supervisor at {url}: {e}"))?;
    // 503 still carries the document: health is failing, and says why.
    response
        .json()
        .await
        .map_err(|e| format!("unreadable health document from {url}: {e}"))
}

const HEALTH_GROUPS: [(&str, &str); 5] = [
    ("service", "Services"),
    ("tls", "Certificate"),
    ("backup", "Backups"),
    ("scaling", "Capacity"),
    ("system", "Supervisor"),
];

fn health_tables(doc: &serde_json::Value) -> Markup {
    let checks = doc["checks"].as_object().cloned().unwrap_or_default();
    let group_of = |check: &serde_json::Value| {
        let kind = check["componentType"].as_str().unwrap_or("system");
        if kind == "certificate" || kind == "tls" {
            "tls"
        } else {
            kind
        }
        .to_owned()
    };
    html! {
        p {
            "Appliance health: " (status_badge(doc["status"].as_str().unwrap_or("unknown")))
            @if let Some(v) = doc["version"].as_str() { " · version " (v) }
        }
        @for (kind, title) in HEALTH_GROUPS {
            @let rows: Vec<(&String, &serde_json::Value)> = checks.iter()
                .filter_map(|(name, list)| list.get(0).map(|c| (name, c)))
                .filter(|(name, c)| group_of(c) == kind || (kind == "tls" && name.starts_with("tls:")))
                .collect();
            @if !rows.is_empty() {
                h2 { (title) }
                div class="table-wrap" tabindex="0" role="region" aria-label=(format!("{title} checks")) {
                    table {
                        thead { tr { th scope="col" { "Check" } th scope="col" { "Status" } th scope="col" { "Value" } th scope="col" { "Detail" } } }
                        tbody {
                            @for (name, c) in rows {
                                tr {
                                    td { (name) }
                                    td { (status_badge(c["status"].as_str().unwrap_or("unknown"))) }
                                    td {
                                        @match &c["observedValue"] {
                                            serde_json::Value::Null => "",
                                            serde_json::Value::String(s) => (s),
                                            v => (v.to_string()),
                                        }
                                        @if let Some(u) = c["observedUnit"].as_str() { " " (u) }
                                    }
                                    td { (c["output"].as_str().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn overview_content(state: &AppState, signed: &Signed) -> ApiResult<Markup> {
    let counts = registry::counts(&state.pool).await?;
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM experiments WHERE state IN ('deploying', 'running', 'analyzing')",
    )
    .fetch_one(&state.pool)
    .await?;
    let cost = crate::cost::summary(State(state.clone()), signed.caller.clone()).await;
    let health = supervisor_health(state).await;
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    Ok(html! {
        div class="cards" {
            div class="card" { div { "Agents online" } div class="figure" { (count("online")) }
                div { (count("offline")) " offline · " (count("revoked")) " revoked" } }
            div class="card" { div { "Experiments in progress" } div class="figure" { (running) } }
            @match &cost {
                Ok(c) => {
                    div class="card" { div { "Saved per month" } div class="figure" { (money(c.0.total.savings_per_month)) }
                        div { (format!("{:.1}", c.0.total.savings_pct)) " % fewer series" } }
                    div class="card" { div { "Series now" } div class="figure" { (svg::format_value(Unit::Series, c.0.total.after_series as f64)) }
                        div { "from " (c.0.total.before_series) " before" } }
                }
                Err(e) => div class="card" { div { "Cost" } p class="error" { (e.to_string()) } }
            }
        }
        @match &health {
            Ok(doc) => (health_tables(doc)),
            Err(e) => { h2 { "Appliance health" } p class="error" { (e) } }
        }
    })
}

/// `GET /`: health, agents, experiments and savings at a glance.
pub async fn overview(State(state): State<AppState>, signed: Signed) -> Response {
    let content = overview_content(&state, &signed).await;
    match content {
        Ok(content) => page(
            &signed,
            "Overview",
            "/",
            html! {
                h1 { "Overview" }
                div data-refresh="/fragments/overview" data-every=(REFRESH_SECS * 2) { (content) }
            },
        ),
        Err(e) => error_page(&e),
    }
}

pub async fn overview_live(State(state): State<AppState>, signed: Signed) -> Response {
    fragment(overview_content(&state, &signed).await)
}

// ---- agents ---------------------------------------------------------------

fn queue_cell(status: Option<&serde_json::Value>) -> Markup {
    let Some(queue) = status.map(|s| &s["queue"]).filter(|q| q.is_object()) else {
        return html! { "—" };
    };
    let n = |k: &str| queue[k].as_u64().unwrap_or(0);
    html! {
        (n("batches")) " batches, " (svg::format_value(Unit::Bytes, n("bytes") as f64))
        @if let Some(age) = queue["oldest_age_secs"].as_u64() { ", oldest " (age) " s" }
        @if n("evicted_batches") > 0 { ", " strong { (n("evicted_batches")) " evicted" } }
    }
}

async fn agents_content(state: &AppState, signed: &Signed) -> ApiResult<Markup> {
    let page = registry::list(
        State(state.clone()),
        signed.caller.clone(),
        Query(registry::AgentQuery {
            status: None,
            after: None,
            limit: Some(1000),
        }),
    )
    .await?
    .0;
    Ok(html! {
        @if page.agents.is_empty() {
            p { "No agent has enrolled yet." }
        } @else {
            div class="table-wrap" tabindex="0" role="region" aria-label="Agents" {
                table {
                    caption class="visually-hidden" { "Enrolled agents" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Last seen" }
                        th scope="col" class="hide-narrow" { "Host" } th scope="col" class="hide-narrow" { "Version" }
                        th scope="col" { "Queue" }
                    } }
                    tbody {
                        @for a in &page.agents {
                            @let status = serde_json::to_value(a.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                            tr {
                                td { (a.name) }
                                td { (status_badge(&status)) }
                                td { (ago(a.last_seen_at)) }
                                td class="hide-narrow" { (a.hostname) }
                                td class="hide-narrow" { (a.version) }
                                td { (queue_cell(a.reported_status.as_ref())) }
                            }
                        }
                    }
                }
            }
            @if page.next_after.is_some() { p { "The first 1,000 agents are shown; phoenixctl and the API page through all." } }
        }
    })
}

/// `GET /agents`: agents with their status and queue; enrollment tokens
/// for admins.
pub async fn agents(State(state): State<AppState>, signed: Signed) -> Response {
    let list = match agents_content(&state, &signed).await {
        Ok(list) => list,
        Err(e) => return error_page(&e),
    };
    let tokens = if signed.caller.role >= Role::Admin {
        match enrollment::list_tokens(State(state.clone()), signed.caller.clone()).await {
            Ok(tokens) => Some(tokens.0),
            Err(e) => return error_page(&e),
        }
    } else {
        None
    };
    page(
        &signed,
        "Agents",
        "/agents",
        html! {
            h1 { "Agents" }
            div data-refresh="/fragments/agents" data-every=(REFRESH_SECS) { (list) }
            @if let Some(tokens) = tokens {
                h2 { "Enrollment tokens" }
                p { "An agent enrolls once with a token (its " code { "enrollment_token_file" } "); the token is shown only when it is created." }
                form class="stack" data-api="/api/v1/enrollment-tokens" data-show="token" {
                    label for="token-description" { "What it is for" }
                    input id="token-description" name="description" maxlength="200";
                    label for="token-uses" { "Agents that may enroll with it" }
                    input id="token-uses" name="uses" type="number" min="1" max="10000" value="1";
                    label for="token-expiry" { "Valid for (seconds)" }
                    input id="token-expiry" name="expires_in_secs" type="number" min="60" max="2592000" value="86400";
                    button type="submit" { "Create enrollment token" }
                    output class="secret" hidden tabindex="-1" aria-live="polite" aria-label="New enrollment token" {}
                    span class="error" data-report role="status" {}
                }
                @if !tokens.is_empty() {
                    div class="table-wrap" tabindex="0" role="region" aria-label="Enrollment tokens" {
                        table {
                            caption class="visually-hidden" { "Enrollment tokens" }
                            thead { tr { th scope="col" { "Description" } th scope="col" { "State" } th scope="col" { "Uses left" } th scope="col" { "Expires" } th scope="col" { "Created by" } } }
                            tbody {
                                @for t in &tokens {
                                    @let token_state = serde_json::to_value(t.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                                    tr {
                                        td { (t.description) }
                                        td { (status_badge(&token_state)) }
                                        td { (t.uses_left) }
                                        td { (when(Some(t.expires_at))) }
                                        td { (t.created_by) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub async fn agents_live(State(state): State<AppState>, signed: Signed) -> Response {
    fragment(agents_content(&state, &signed).await)
}

// ---- experiments ----------------------------------------------------------

/// `GET /experiments`: the list, and a form to create one for operators.
pub async fn experiments(State(state): State<AppState>, signed: Signed) -> Response {
    let list = match experiments::list(
        State(state.clone()),
        signed.caller.clone(),
        Query(experiments::ExperimentQuery {
            state: None,
            limit: Some(200),
        }),
    )
    .await
    {
        Ok(list) => list.0,
        Err(e) => return error_page(&e),
    };
    let form = if signed.caller.role >= Role::Operator {
        match new_experiment_form(&state, &signed).await {
            Ok(form) => Some(form),
            Err(e) => return error_page(&e),
        }
    } else {
        None
    };
    page(
        &signed,
        "Experiments",
        "/experiments",
        html! {
            h1 { "Experiments" }
            @if list.is_empty() {
                p { "No experiment yet." }
            } @else {
                div class="table-wrap" tabindex="0" role="region" aria-label="Experiments" {
                    table {
                        caption class="visually-hidden" { "Experiments, newest first" }
                        thead { tr { th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Agents" }
                            th scope="col" class="hide-narrow" { "Created" } th scope="col" { "Recommendation" } } }
                        tbody {
                            @for e in &list {
                                tr {
                                    td { a href=(format!("/experiments/{}", e.id)) { (e.name) } }
                                    td { (status_badge(e.state.as_str())) }
                                    td { (e.agents.len()) }
                                    td class="hide-narrow" { (when(Some(e.created_at))) }
                                    td { (e.recommendation.as_deref().unwrap_or("—")) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(form) = form { (form) }
        },
    )
}

async fn new_experiment_form(state: &AppState, signed: &Signed) -> ApiResult<Markup> {
    let online = registry::list(
        State(state.clone()),
        signed.caller.clone(),
        Query(registry::AgentQuery {
            status: Some(registry::AgentStatus::Online),
            after: None,
            limit: Some(1000),
        }),
    )
    .await?
    .0
    .agents;
    let saved = crate::pipelines::list(State(state.clone()), signed.caller.clone())
        .await?
        .0;
    let templates = phoenix_wire::pipeline::templates();
    let choices: Vec<(String, String)> = templates
        .iter()
        .map(|t| {
            (
                serde_json::json!({ "spec": t.spec }).to_string(),
                format!("template: {} — {}", t.name, t.description),
            )
        })
        .chain(saved.iter().map(|p| {
            (
                serde_json::json!({ "pipeline_id": p.id }).to_string(),
                format!("saved: {}", p.name),
            )
        }))
        .collect();
    let select = |id: &str, name: &str, selected: usize| {
        html! {
            select id=(id) name=(name) data-json {
                @for (i, (value, label)) in choices.iter().enumerate() {
                    option value=(value) selected[i == selected] { (label) }
                }
            }
        }
    };
    let candidate_default = templates.len().min(2).saturating_sub(1);
    Ok(html! {
        h2 { "New experiment" }
        @if online.is_empty() {
            p class="notice" { "No agent is online: enroll one on the " a href="/agents" { "Agents" } " page first." }
        } @else {
            form class="stack" data-api="/api/v1/experiments" data-then="/experiments/{id}" {
                label for="exp-name" { "Name" }
                input id="exp-name" name="name" required maxlength="200";
                label for="exp-baseline" { "Baseline pipeline" }
                (select("exp-baseline", "baseline", 0))
                label for="exp-candidate" { "Candidate pipeline" }
                (select("exp-candidate", "candidate", candidate_default))
                fieldset {
                    legend { "Agents (online)" }
                    @for a in &online {
                        div {
                            input type="checkbox" id=(format!("agent-{}", a.id)) name="agents" value=(a.id.to_string()) checked;
                            " "
                            label for=(format!("agent-{}", a.id)) { (a.name) }
                        }
                    }
                }
                label for="exp-duration" { "Duration (e.g. 30m, 2h)" }
                input id="exp-duration" name="duration" required value="30m";
                label for="exp-reduction" { "Least series reduction to promote (%)" }
                input id="exp-reduction" name="min_reduction_pct" type="number" min="0" max="100" step="any" value="70";
                label for="exp-accuracy" { "Least accuracy of host totals to promote (%)" }
                input id="exp-accuracy" name="min_accuracy_pct" type="number" min="0" max="100" step="any" value="98";
                button type="submit" { "Create experiment" }
                span class="error" data-report role="status" {}
            }
        }
    })
}

const ACTIONS: [(Action, &str, &str, Option<&str>); 4] = [
    (Action::Start, "Start", "", None),
    (
        Action::Stop,
        "Stop",
        "secondary",
        Some("Stop this experiment? Both variants stop on every agent and no KPIs are measured."),
    ),
    (
        Action::Promote,
        "Promote the candidate",
        "",
        Some("Promote? The candidate pipeline becomes every target agent's live pipeline."),
    ),
    (
        Action::Rollback,
        "Roll back to the baseline",
        "danger",
        Some("Roll back? The baseline pipeline becomes every target agent's live pipeline."),
    ),
];

fn actions(e: &Experiment, role: Role) -> Markup {
    html! {
        @if role >= Role::Operator && !e.allowed_actions.is_empty() {
            div class="actions" {
                @for (action, label, class, confirm) in ACTIONS {
                    @if e.allowed_actions.contains(&action) {
                        (api_button(&format!("/api/v1/experiments/{}/{}", e.id, action.as_str()), label, class, confirm))
                    }
                }
            }
        }
    }
}

fn kpis(e: &Experiment) -> Markup {
    let Some(k) = &e.kpis else {
        return html! {
            @if let Some(error) = &e.error { p class="error" { (error) } }
        };
    };
    html! {
        h2 { "Measured" }
        div class="cards" {
            div class="card" { div { "Fewer series" } div class="figure" { (format!("{:.1} %", k.reduction_pct)) }
                div { (k.baseline.series) " → " (k.candidate.series) " (needs " (e.min_reduction_pct) " %)" } }
            div class="card" { div { "Accuracy of host totals" } div class="figure" { (format!("{:.2} %", k.accuracy_pct)) }
                div { "needs " (e.min_accuracy_pct) " %" } }
            div class="card" { div { "Samples per second" } div class="figure" { (format!("{:.2}", k.candidate.samples_per_second)) }
                div { "from " (format!("{:.2}", k.baseline.samples_per_second)) } }
            div class="card" { div { "Saved per month" } div class="figure" { (money(k.savings_per_month)) } }
        }
        p { "Recommendation: " strong { (k.recommendation.action) } }
        ul { @for reason in &k.recommendation.reasons { li { (reason) } } }
    }
}

/// Experiment `id`'s name, and the part of its page that refreshes.
async fn experiment_content(
    state: &AppState,
    signed: &Signed,
    id: Uuid,
) -> ApiResult<(String, Markup)> {
    let ExperimentDetail {
        experiment: e,
        events,
        ..
    } = experiments::get(State(state.clone()), signed.caller.clone(), Path(id))
        .await?
        .0;
    let charts = charts::experiment_charts(state, &e).await;
    let content = html! {
        p { "State: " (status_badge(e.state.as_str()))
            @if let Some(ends) = e.ends_at { " · window ends " (when(Some(ends))) } }
        (actions(&e, signed.caller.role))
        (kpis(&e))
        h2 { "Baseline against candidate" }
        @match &charts {
            Ok(c) if c.charts.is_empty() => p { (c.note.as_deref().unwrap_or("nothing to draw yet")) },
            Ok(c) => div class="charts" {
                @for chart in &c.charts {
                    (svg::line_chart(chart, c.start.timestamp() as f64, c.end.timestamp() as f64))
                }
            },
            Err(err) => p class="error" { (err.to_string()) },
        }
        h2 { "History" }
        div class="table-wrap" tabindex="0" role="region" aria-label="Experiment history" {
            table {
                thead { tr { th scope="col" { "When" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "By" } th scope="col" { "Why" } } }
                tbody {
                    @for ev in &events {
                        tr { td { (when(Some(ev.at))) } td { (ev.from_state.as_deref().unwrap_or("—")) } td { (ev.to_state) }
                             td { (ev.actor) } td { (ev.reason) } }
                    }
                }
            }
        }
    };
    Ok((e.name.clone(), content))
}

/// `GET /experiments/{id}`: state, actions, KPIs and charts, refreshed.
pub async fn experiment(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Response {
    match experiment_content(&state, &signed, id).await {
        Ok((name, content)) => page(
            &signed,
            &name,
            "/experiments",
            html! {
                p { a href="/experiments" { "← Experiments" } }
                h1 { (name) }
                div data-refresh=(format!("/experiments/{id}/live")) data-every=(REFRESH_SECS) { (content) }
            },
        ),
        Err(e) => error_page(&e),
    }
}

pub async fn experiment_live(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Response {
    fragment(
        experiment_content(&state, &signed, id)
            .await
            .map(|(_, content)| content),
    )
}

// ---- cost -----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostQuery {
    hours: Option<i64>,
}

/// `GET /cost`: savings over time, and per agent.
pub async fn cost(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<CostQuery>,
) -> Response {
    // The first hour by default: savings show as soon as a promotion lands.
    let hours = q.hours.unwrap_or(1);
    let summary = match crate::cost::summary(State(state.clone()), signed.caller.clone()).await {
        Ok(s) => s.0,
        Err(e) => return error_page(&e),
    };
    let history = charts::cost_history(&state, hours, Some(summary.total.before_series)).await;
    let mut per_agent: Vec<(String, f64, f64)> = summary
        .agents
        .iter()
        .map(|a| {
            (
                a.agent_name.clone(),
                a.before.series as f64,
                a.after.series as f64,
            )
        })
        .collect();
    per_agent.sort_by(|a, b| (b.1 - b.2).total_cmp(&(a.1 - a.2)));
    per_agent.truncate(20);
    let t = &summary.total;
    page(
        &signed,
        "Cost",
        "/cost",
        html! {
            h1 { "Cost" }
            div class="cards" {
                div class="card" { div { "Before promoted pipelines" } div class="figure" { (money(t.before_cost_per_month)) } div { (t.before_series) " series" } }
                div class="card" { div { "Now" } div class="figure" { (money(t.after_cost_per_month)) } div { (t.after_series) " series" } }
                div class="card" { div { "Saved per month" } div class="figure" { (money(t.savings_per_month)) } div { (format!("{:.1}", t.savings_pct)) " %" } }
            }
            p { "At " (money(summary.price_per_series_month)) " per series and month." }
            nav aria-label="Time range" {
                ul { @for (h, label) in [(1, "1 hour"), (6, "6 hours"), (24, "24 hours"), (168, "7 days")] {
                    li { @if h == hours { a href=(format!("/cost?hours={h}")) aria-current="true" { (label) } }
                         @else { a href=(format!("/cost?hours={h}")) { (label) } } }
                } }
            }
            @match &history {
                Ok(c) => div class="charts" { @for chart in &c.charts {
                    (svg::line_chart(chart, c.start.timestamp() as f64, c.end.timestamp() as f64)) } },
                Err(e) => p class="error" { (e.to_string()) },
            }
            @if !per_agent.is_empty() {
                h2 { "Per agent" }
                (svg::bars("Series before and after, the 20 agents saving most", &per_agent, Unit::Series))
                div class="table-wrap" tabindex="0" role="region" aria-label="Cost per agent" {
                    table {
                        thead { tr { th scope="col" { "Agent" } th scope="col" { "Before" } th scope="col" { "Now" } th scope="col" { "Saved per month" } th scope="col" class="hide-narrow" { "Promoted experiment" } } }
                        tbody { @for a in &summary.agents { tr {
                            td { (a.agent_name) } td { (a.before.series) } td { (a.after.series) }
                            td { (money(a.savings_per_month)) " (" (format!("{:.1}", a.savings_pct)) " %)" }
                            td class="hide-narrow" { @match &a.promoted_experiment {
                                Some(p) => a href=(format!("/experiments/{}", p.id)) { (p.name) },
                                None => "—",
                            } }
                        } } }
                    }
                }
            }
        },
    )
}

// ---- audit ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPageQuery {
    before_id: Option<i64>,
}

/// `GET /audit`: the audit log, 50 entries a page (admins).
pub async fn audit(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<AuditPageQuery>,
) -> Response {
    let query = crate::audit_admin::AuditQuery {
        actor: None,
        action: None,
        target: None,
        outcome: None,
        since: None,
        until: None,
        before_id: q.before_id,
        limit: Some(50),
    };
    let page_of =
        match crate::audit_admin::list(State(state.clone()), signed.caller.clone(), Query(query))
            .await
        {
            Ok(p) => p.0,
            Err(e) => return error_page(&e),
        };
    page(
        &signed,
        "Audit log",
        "/audit",
        html! {
            h1 { "Audit log" }
            div class="table-wrap" tabindex="0" role="region" aria-label="Audit entries" {
                table {
                    caption class="visually-hidden" { "Audit entries, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Target" }
                        th scope="col" { "Outcome" } th scope="col" class="hide-narrow" { "From" } th scope="col" class="hide-narrow" { "Details" } } }
                    tbody {
                        @for e in &page_of.entries {
                            tr {
                                td { (when(Some(e.at))) }
                                td { (e.actor) }
                                td { (e.action) @if e.count > 1 { " ×" (e.count) } }
                                td { (e.target) }
                                td { (status_badge(&e.outcome)) }
                                td class="hide-narrow" { (e.source_ip.as_deref().unwrap_or("")) }
                                td class="hide-narrow" { code { (e.details.to_string()) } }
                            }
                        }
                    }
                }
            }
            @if let Some(before) = page_of.next_before_id {
                p { a href=(format!("/audit?before_id={before}")) { "Older entries" } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_buttons_post_to_the_json_routes_and_ask_before_promoting() {
        let button = api_button(
            "/api/v1/experiments/x/promote",
            "Promote",
            "",
            Some("Sure?"),
        );
        let html = button.into_string();
        assert!(
            html.contains(r#"data-api="/api/v1/experiments/x/promote""#),
            "{html}"
        );
        assert!(html.contains(r#"data-confirm="Sure?""#), "{html}");
        let plain = api_button("/api/v1/experiments/x/start", "Start", "", None).into_string();
        assert!(!plain.contains("data-confirm"), "{plain}");
    }

    #[test]
    fn health_checks_are_grouped_and_escaped() {
        let doc = serde_json::json!({
            "status": "warn",
            "checks": {
                "postgres:state": [{"componentType": "service", "status": "pass", "observedValue": "ready"}],
                "tls:certificate": [{"componentType": "certificate", "status": "warn", "output": "<b>expires</b>"}],
                "scaling:disk": [{"componentType": "scaling", "status": "pass", "observedValue": 41.5, "observedUnit": "%"}],
            }
        });
        let html = health_tables(&doc).into_string();
        for heading in ["Services", "Certificate", "Capacity"] {
            assert!(html.contains(heading), "{heading}: {html}");
        }
        assert!(html.contains("&lt;b&gt;expires"), "{html}");
        assert!(html.contains("41.5 %"), "{html}");
    }
}

//! Sites pages: the list with each site's sync status and the creation
//! form, a site's page with its DHIS2 organisation unit (code and uid, edited
//! through the same function as `PATCH /api/v1/sites/{id}`), its devices
//! (revocation after a confirmation page) and enrollment tokens.
//!
//! An enrollment token is shown once, on the answer to the POST that made
//! it: the hub keeps only its hash, so there is no page to show it again
//! (reloading asks the browser to post again, which makes another token;
//! unused tokens simply expire).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use santerurale_server::web::see_other;
use santerurale_shared::{DeviceId, SiteId};
use uuid::Uuid;

use super::forms::{FormState, RawForm};
use super::session::Signed;
use super::{Fail, Page, UiError, https, render};
use crate::AppState;
use crate::sites::{DeviceSyncStatus, NewSite, Site, SiteError, SitePatch, SiteSyncStatus, SyncStatusError};

/// A site and how its sync stands.
#[derive(Debug)]
pub struct SiteRow {
    pub site: Site,
    pub status: SiteSyncStatus,
}

impl SiteRow {
    /// Devices not revoked.
    #[must_use]
    pub fn active_devices(&self) -> usize {
        self.status.devices.iter().filter(|d| d.revoked_at.is_none()).count()
    }
}

/// Every site with its sync status: a query per site, which is fine for the
/// tens of clinics a district has.
pub(super) async fn site_rows(state: &AppState, page: &Page) -> Result<Vec<SiteRow>, UiError> {
    let sites = crate::sites::list(&state.db).await.map_err(|e| page.internal(&e))?;
    let mut rows = Vec::with_capacity(sites.len());
    for site in sites {
        let status = match crate::sites::sync_status(&state.db, site.id).await {
            Ok(status) => status,
            // Deleted meanwhile (sites are not deleted today): not listed.
            Err(SyncStatusError::NotFound(_)) => continue,
            Err(SyncStatusError::Db(e)) => return Err(page.internal(&e)),
        };
        rows.push(SiteRow { site, status });
    }
    Ok(rows)
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesTpl<'a> {
    page: &'a Page,
    rows: Vec<SiteRow>,
    form: FormState,
}

pub async fn list(State(state): State<AppState>, Signed { mut page, .. }: Signed) -> Result<Response, UiError> {
    page.nav = "sites";
    let rows = site_rows(&state, &page).await?;
    Ok(render(StatusCode::OK, &page, &SitesTpl { page: &page, rows, form: FormState::default() }))
}

pub async fn create(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let form = signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "sites";
    let new = NewSite {
        name: Some(form.get("name").to_owned()),
        code: Some(form.get("code").to_owned()),
        dhis2_org_unit: form.present("dhis2_org_unit"),
        dhis2_org_unit_code: form.present("dhis2_org_unit_code"),
    };
    let mut shown = form.redisplay();
    match new.validate() {
        Ok(valid) => match crate::sites::insert(&state.db, &valid).await {
            Ok(site) => {
                tracing::info!(site = %site.id, code = %site.code, user = %signed.user.id, "site created (web)");
                return Ok(see_other(&format!("/sites/{}", site.id), &[]));
            }
            Err(SiteError::CodeTaken(_)) => shown.push(&page, "code", "site_code_taken", "already taken"),
            Err(SiteError::Db(e)) => return Err(page.internal(&e)),
        },
        Err(errors) => shown.push_all(&page, &errors),
    }
    let rows = site_rows(&state, &page).await?;
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &SitesTpl { page: &page, rows, form: shown }))
}

/// The site `raw` names, with its devices; a 404 page when there is none.
async fn find_site(state: &AppState, page: &Page, raw: &str) -> Result<SiteRow, UiError> {
    let id = raw.parse::<Uuid>().map(SiteId::from_uuid).map_err(|_| page.fail(Fail::NotFound))?;
    let rows = site_rows(state, page).await?;
    rows.into_iter().find(|r| r.site.id == id).ok_or_else(|| page.fail(Fail::NotFound))
}

#[derive(Template)]
#[template(path = "site.html")]
struct SiteTpl<'a> {
    page: &'a Page,
    row: SiteRow,
    /// A token just made, with its expiry and the command to type on the box.
    token: Option<(String, String, String)>,
    /// The edit form: the site's values, or what was typed and its errors.
    form: FormState,
}

/// The edit form filled with the site's current values.
fn edit_form(site: &Site) -> FormState {
    let mut form = FormState::default();
    form.set("name", &site.name);
    form.set("dhis2_org_unit", site.dhis2_org_unit.as_deref().unwrap_or_default());
    form.set("dhis2_org_unit_code", site.dhis2_org_unit_code.as_deref().unwrap_or_default());
    form
}

pub async fn show(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    page.nav = "sites";
    let row = find_site(&state, &page, &id).await?;
    let form = edit_form(&row.site);
    Ok(render(StatusCode::OK, &page, &SiteTpl { page: &page, row, token: None, form }))
}

/// `POST /sites/{id}`: the edit form. Every field is sent, so a blank
/// organisation unit field clears it.
pub async fn update(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    raw: RawForm,
) -> Result<Response, UiError> {
    let form = signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "sites";
    let row = find_site(&state, &page, &id).await?;
    let patch = SitePatch {
        name: Some(form.get("name").to_owned()),
        dhis2_org_unit: Some(form.present("dhis2_org_unit")),
        dhis2_org_unit_code: Some(form.present("dhis2_org_unit_code")),
    };
    let mut shown = form.redisplay();
    match patch.validate() {
        Ok(valid) => match crate::sites::update(&state.db, row.site.id, &valid).await {
            Ok(Some(site)) => {
                tracing::info!(site = %site.id, user = %signed.user.id, "site updated (web)");
                return Ok(see_other(&format!("/sites/{}", site.id), &[]));
            }
            Ok(None) => return Err(page.fail(Fail::NotFound)),
            Err(e) => return Err(page.internal(&e)),
        },
        Err(errors) => shown.push_all(&page, &errors),
    }
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &SiteTpl { page: &page, row, token: None, form: shown }))
}

pub async fn create_token(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawForm,
) -> Result<Response, UiError> {
    signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "sites";
    let row = find_site(&state, &page, &id).await?;
    let ttl = state.config.enrollment_token_ttl_minutes;
    let made = crate::devices::create_token(&state.db, row.site.id, ttl).await.map_err(|e| page.internal(&e))?;
    let made = made.ok_or_else(|| page.fail(Fail::NotFound))?;
    tracing::info!(site = %row.site.id, user = %signed.user.id, expires_at = %made.expires_at, "enrollment token created (web)");
    let command = format!("edge enroll --hub {} --token {}", hub_url(&state, &headers), made.token);
    let expires = page.when(&made.expires_at);
    let form = edit_form(&row.site);
    let tpl = SiteTpl { page: &page, row, token: Some((made.token, expires, command)), form };
    Ok(render(StatusCode::CREATED, &page, &tpl))
}

/// The hub's address as the admin's browser reached it: what the box will
/// reach too, in the usual case of one address for both.
fn hub_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("HUB-ADDRESS");
    let scheme = if https(&state.config) { "https" } else { "http" };
    format!("{scheme}://{host}")
}

#[derive(Template)]
#[template(path = "revoke.html")]
struct RevokeTpl<'a> {
    page: &'a Page,
    site: Site,
    device: DeviceSyncStatus,
}

/// The device `raw` names among the site's; a 404 page when it is not one.
async fn find_device(
    state: &AppState,
    page: &Page,
    site: &str,
    raw: &str,
) -> Result<(Site, DeviceSyncStatus), UiError> {
    let row = find_site(state, page, site).await?;
    let id = raw.parse::<Uuid>().map(DeviceId::from_uuid).map_err(|_| page.fail(Fail::NotFound))?;
    let device = row.status.devices.into_iter().find(|d| d.id == id).ok_or_else(|| page.fail(Fail::NotFound))?;
    Ok((row.site, device))
}

/// `GET`: the confirmation page (the UI has no script for a dialog).
pub async fn revoke_confirm(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    Path((site, id)): Path<(String, String)>,
) -> Result<Response, UiError> {
    page.nav = "sites";
    let (site, device) = find_device(&state, &page, &site, &id).await?;
    Ok(render(StatusCode::OK, &page, &RevokeTpl { page: &page, site, device }))
}

pub async fn revoke(
    State(state): State<AppState>,
    signed: Signed,
    Path((site, id)): Path<(String, String)>,
    raw: RawForm,
) -> Result<Response, UiError> {
    signed.form(raw)?;
    let page = &signed.page;
    let (site, device) = find_device(&state, page, &site, &id).await?;
    crate::devices::revoke(&state.db, device.id).await.map_err(|e| page.internal(&e))?;
    tracing::info!(device = %device.id, user = %signed.user.id, "device revoked (web)");
    Ok(see_other(&format!("/sites/{}", site.id), &[]))
}

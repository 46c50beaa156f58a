//! Hub integration tests: real PostgreSQL (a fresh database per test, see
//! [`support`]), real HTTP on loopback. One module per scenario.

mod auth;
mod browser;
mod cli;
mod conflicts;
mod dhis2_aggregate;
mod dhis2_api;
mod dhis2_client;
mod dhis2_jobs;
mod dhis2_late_data;
mod dhis2_mapping;
mod dhis2_periods;
mod dhis2_ui;
mod edge_doc;
mod embedded;
mod enrollment;
mod health_metrics;
mod lookup;
mod migrations;
mod openapi;
mod sites;
mod support;
mod sync_apply;
mod sync_pull;
mod sync_push;
mod sync_push_refusals;
mod sync_status;
mod tls;
mod ui;

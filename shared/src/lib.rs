//! Santé Rurale shared domain: ids, patients, encounters and their validation.
//!
//! This crate is pure (no I/O, no runtime): the edge and the hub both depend on
//! it, so the rules for what a valid patient or consultation is live in exactly
//! one place. Validation works on *drafts* (what a form or a JSON body carried,
//! as loosely typed as the caller may send it) and produces typed *fields* or a
//! list of [`FieldError`]s that name the offending field, so a web form can put
//! each message next to its input and an API can return them all at once.

pub mod encounter;
pub mod ids;
pub mod patient;
pub mod phone;
pub mod sync;
pub mod text;
pub mod validation;

pub use encounter::{AgeGroup, Encounter, EncounterDraft, EncounterFields, EncounterKind};
pub use ids::{DeviceId, EncounterId, PatientId, SiteId, UserId};
pub use patient::{Patient, PatientDraft, PatientFields, PatientPatch, Sex};
pub use phone::Phone;
pub use validation::{FieldError, ValidationErrors};

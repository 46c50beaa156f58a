//! The French and English of every label and message of the admin UI, in
//! one table looked up by key. A missing row shows the key itself, which the
//! `every_template_key_is_translated` test catches. Validation errors are
//! translated by their stable code (the JSON API's `fields[].code`), with
//! wording per field where it helps; an unknown code shows the validator's
//! English. French typography: a no-break space before `:`.

use santerurale_server::web::Lang;

/// The text of `key` in `lang`; the key itself when the table has no row.
#[must_use]
pub fn text(lang: Lang, key: &str) -> &str {
    row(key).map_or(key, |(fr, en)| lang.pick(fr, en))
}

/// The message for validation error `code` on `field`, when the table knows it.
#[must_use]
pub fn field_error(lang: Lang, field: &str, code: &str) -> Option<&'static str> {
    let (fr, en) = match (field, code) {
        (_, "required") => ("Ce champ est obligatoire.", "This field is required."),
        ("name", "too_long") => ("120 caractères au plus.", "At most 120 characters."),
        (_, "invalid_characters") => ("Contient des caractères non imprimables.", "Contains control characters."),
        ("code", "invalid_format") => (
            "2 à 32 lettres, chiffres, «\u{a0}-\u{a0}» ou «\u{a0}_\u{a0}», sans espace.",
            "2 to 32 letters, digits, '-' or '_', no spaces.",
        ),
        ("code", "site_code_taken") => ("Un site a déjà ce code.", "A site already has this code."),
        ("dhis2_org_unit", "invalid_format") => (
            "Un identifiant DHIS2\u{a0}: 11 lettres ou chiffres, commençant par une lettre.",
            "A DHIS2 uid: 11 letters or digits, starting with a letter.",
        ),
        (_, "already_resolved") => (
            "Ce conflit vient d'être résolu\u{a0}; rechargez la page.",
            "This conflict has just been resolved; reload the page.",
        ),
        (_, "field_missing") => {
            ("Ce champ n'existe plus dans le dossier du patient.", "This field is no longer in the patient's record.")
        }
        ("choice", "invalid_choice") => ("Choisissez une des valeurs proposées.", "Choose one of the values shown."),
        _ => return None,
    };
    Some(lang.pick(fr, en))
}

/// The table: key → (French, English).
#[allow(clippy::too_many_lines)]
fn row(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        // Layout and navigation.
        "app_name" => ("Santé Rurale · Hub", "Santé Rurale · Hub"),
        "language" => ("Langue", "Language"),
        "nav_label" => ("Menu principal", "Main menu"),
        "nav_sites" => ("Sites", "Sites"),
        "nav_conflicts" => ("Conflits", "Conflicts"),
        "nav_logout" => ("Déconnexion", "Sign out"),
        "signed_in_as" => ("Connecté\u{a0}:", "Signed in:"),
        "back_home" => ("Retour aux sites", "Back to the sites"),
        "cancel" => ("Annuler", "Cancel"),
        "never" => ("jamais", "never"),
        "form_has_errors" => (
            "Le formulaire contient des erreurs\u{a0}: corrigez les champs signalés. Rien n'a été enregistré.",
            "The form has errors: correct the fields marked. Nothing was saved.",
        ),

        // Sign-in.
        "login_title" => ("Connexion à l'administration", "Administration sign-in"),
        "login_button" => ("Se connecter", "Sign in"),
        "login_failed" => ("Nom d'utilisateur ou mot de passe incorrect.", "Wrong username or password."),
        "login_accounts_hint" => (
            "Les comptes d'administration se créent sur le serveur avec «\u{a0}hub user add\u{a0}».",
            "Administrator accounts are created on the server with 'hub user add'.",
        ),
        "username" => ("Nom d'utilisateur", "Username"),
        "password" => ("Mot de passe", "Password"),

        // Sites.
        "sites_title" => ("Sites", "Sites"),
        "no_sites" => ("Aucun site pour l'instant.", "No site yet."),
        "site" => ("Site", "Site"),
        "devices" => ("Postes", "Devices"),
        "device" => ("Poste", "Device"),
        "last_contact" => ("Dernier contact", "Last contact"),
        "outbox_depth" => ("Modifications en attente sur place", "Changes waiting on site"),
        "changes_received" => ("Modifications reçues", "Changes received"),
        "patients_held" => ("Patients suivis", "Patients held"),
        "open_conflicts" => ("Conflits ouverts", "Open conflicts"),
        "create_site" => ("Créer un site", "Create a site"),
        "name" => ("Nom", "Name"),
        "code" => ("Code", "Code"),
        "code_hint" => ("Code court unique, par exemple KATI-01.", "A short unique code, for example KATI-01."),
        "dhis2_org_unit" => ("Unité d'organisation DHIS2", "DHIS2 organisation unit"),
        "dhis2_hint" => (
            "Facultatif\u{a0}: l'identifiant (11 caractères) sous lequel le centre déclare.",
            "Optional: the uid (11 characters) the clinic reports under.",
        ),

        // A site's devices and enrollment.
        "no_devices" => ("Aucun poste inscrit.", "No device enrolled."),
        "enrolled_at" => ("Inscrit le", "Enrolled"),
        "state" => ("État", "State"),
        "active" => ("actif", "active"),
        "revoked" => ("révoqué", "revoked"),
        "revoke" => ("Révoquer…", "Revoke…"),
        "revoke_title" => ("Révoquer un poste", "Revoke a device"),
        "revoke_question" => ("Révoquer ce poste\u{a0}?", "Revoke this device?"),
        "revoke_warning" => (
            "Il ne pourra plus se synchroniser. Ses modifications déjà reçues restent. Cela ne peut pas être annulé\u{a0}: le poste devra être inscrit à nouveau.",
            "It will no longer sync. The changes already received stay. This cannot be undone: the device must be enrolled again.",
        ),
        "revoke_confirm" => ("Oui, révoquer", "Yes, revoke"),
        "enroll_title" => ("Inscrire un poste", "Enroll a device"),
        "enroll_hint" => (
            "Créez un jeton d'inscription à usage unique, puis tapez la commande affichée sur le poste du centre.",
            "Create a one-time enrollment token, then type the command shown on the clinic's box.",
        ),
        "create_token" => ("Créer un jeton d'inscription", "Create an enrollment token"),
        "token_made" => ("Jeton d'inscription créé", "Enrollment token created"),
        "token_once" => (
            "Notez-le maintenant\u{a0}: il ne sera plus jamais affiché, le hub n'en garde qu'une empreinte.",
            "Copy it now: it will never be shown again, the hub keeps only a hash of it.",
        ),
        "token_expires" => ("Valable jusqu'au", "Valid until"),
        "token_command" => ("Sur le poste du centre, tapez\u{a0}:", "On the clinic's box, type:"),

        // Conflicts.
        "conflicts_title" => ("Conflits", "Conflicts"),
        "conflicts_intro" => (
            "Un champ modifié en même temps sur deux postes\u{a0}: la valeur retenue automatiquement est marquée. Choisissez la bonne valeur, ou tapez-la.",
            "A field changed at the same time on two devices: the value picked automatically is marked. Choose the right value, or type it.",
        ),
        "filter" => ("Filtre", "Filter"),
        "status_open" => ("Ouverts", "Open"),
        "status_resolved" => ("Résolus", "Resolved"),
        "status_all" => ("Tous", "All"),
        "no_conflicts" => ("Aucun conflit.", "No conflict."),
        "unknown_patient" => ("Patient inconnu", "Unknown patient"),
        "patient_id" => ("Identifiant du patient", "Patient id"),
        "detected_at" => ("Détecté le", "Detected"),
        "resolved_at" => ("Résolu le", "Resolved"),
        "resolved_by" => ("Résolu par", "Resolved by"),
        "resolved_by_merge" => ("une modification plus récente sur un poste", "a later edit on a device"),
        "values" => ("Valeurs en concurrence", "Competing values"),
        "winner" => ("retenue", "picked"),
        "written_by" => ("écrite par", "written by"),
        "unknown_site" => ("site inconnu", "unknown site"),
        "other_value_choice" => ("Une autre valeur (à taper ci-dessous)", "Another value (type it below)"),
        "other_value" => ("Autre valeur", "Other value"),
        "other_value_hint" => {
            ("Seulement si vous avez choisi «\u{a0}une autre valeur\u{a0}».", "Only if you chose 'another value'.")
        }
        "resolve" => ("Résoudre", "Resolve"),

        // Error pages.
        "bad_request_title" => ("Demande incorrecte", "Bad request"),
        "bad_request_text" => ("La demande n'a pas pu être lue.", "The request could not be read."),
        "csrf_title" => ("Formulaire expiré", "Form expired"),
        "csrf_text" => (
            "Ce formulaire n'est plus valable. Rechargez la page et recommencez\u{a0}; rien n'a été modifié.",
            "This form is no longer valid. Reload the page and try again; nothing was changed.",
        ),
        "not_found_title" => ("Page introuvable", "Page not found"),
        "not_found_text" => ("Cette page n'existe pas.", "This page does not exist."),
        "gone_title" => ("Déjà traité", "Already dealt with"),
        "gone_text" => (
            "Ce conflit a déjà été résolu, par un autre administrateur ou par une modification plus récente.",
            "This conflict was already resolved, by another administrator or by a later edit.",
        ),
        "internal_title" => ("Erreur interne", "Internal error"),
        "internal_text" => (
            "Une erreur s'est produite sur le hub. Réessayez plus tard\u{a0}; le journal du hub en donne la cause.",
            "Something went wrong on the hub. Try again later; the hub's log has the cause.",
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted strings in `src` after each `marker`, up to the next `)`.
    fn keys_after<'a>(src: &'a str, marker: &str) -> Vec<&'a str> {
        src.split(marker)
            .skip(1)
            .flat_map(|call| call.split(')').next().unwrap_or_default().split('"').skip(1).step_by(2))
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Every key the templates and the error pages use has a row.
    #[test]
    fn every_template_key_is_translated() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(dir).expect("templates") {
            let src = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            keys.extend(keys_after(&src, "page.t(").into_iter().map(str::to_owned));
            keys.extend(keys_after(&src, "text_field(page, ").into_iter().map(str::to_owned));
        }
        let errors = include_str!("mod.rs");
        // The error pages' keys (plain strings there, like "not found", are not keys).
        let is_key = |k: &&str| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        keys.extend(keys_after(errors, "=> (").into_iter().filter(is_key).map(str::to_owned));
        assert!(keys.len() > 50, "the scan found the keys: {keys:?}");
        for key in &keys {
            assert!(row(key).is_some(), "no translation for {key:?}");
        }
    }

    #[test]
    fn field_errors_follow_the_language() {
        assert_eq!(
            field_error(Lang::En, "code", "invalid_format"),
            Some("2 to 32 letters, digits, '-' or '_', no spaces.")
        );
        assert!(field_error(Lang::Fr, "code", "site_code_taken").is_some_and(|m| m.starts_with("Un site")));
        assert_eq!(field_error(Lang::Fr, "x", "unknown"), None);
    }
}

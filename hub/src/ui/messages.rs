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
        ("dhis2_org_unit_code", "too_long") => {
            ("50 caractères au plus (limite de DHIS2).", "At most 50 characters (DHIS2's limit).")
        }
        ("period", "invalid_format") => (
            "Une période DHIS2\u{a0}: mois en AAAAMM (202404) ou semaine en AAAAWn (2024W15).",
            "A DHIS2 period: a month as yyyyMM (202404) or a week as yyyyWn (2024W15).",
        ),
        ("period", "out_of_range") => (
            "Cette période n'existe pas\u{a0}: mois de 01 à 12, semaine de 1 à la dernière de l'année.",
            "This period does not exist: month 01 to 12, week 1 to the year's last.",
        ),
        ("period", "wrong_period_type") => (
            "L'ensemble de données DHIS2 n'a pas ce type de période (mensuelle ou hebdomadaire, voir la correspondance).",
            "The DHIS2 data set does not have this period type (monthly or weekly, see the mapping).",
        ),
        ("period", "future_period") => (
            "Cette période n'a pas encore commencé\u{a0}: rien à déclarer.",
            "This period has not started yet: nothing to report.",
        ),
        ("site", "unknown_site") => ("Ce site n'existe pas (ou plus).", "This site does not exist (any more)."),
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
        "nav_dhis2" => ("Rapports DHIS2", "DHIS2 reports"),
        "nav_dhis2_mapping" => ("Correspondance DHIS2", "DHIS2 mapping"),
        "save" => ("Enregistrer", "Save"),
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
        "dhis2_org_unit_short" => ("Unité DHIS2", "DHIS2 unit"),
        "dhis2_org_unit_code" => ("Code de l'unité d'organisation DHIS2", "DHIS2 organisation unit code"),
        "dhis2_code_hint" => (
            "Facultatif\u{a0}: le code DHIS2 de l'unité (par exemple OU_KATI). «\u{a0}Résoudre les codes dans DHIS2\u{a0}» en déduit l'identifiant.",
            "Optional: the unit's DHIS2 code (for example OU_KATI). 'Resolve the codes in DHIS2' finds its uid.",
        ),
        "dhis2_edit_hint" => (
            "L'identifiant (11 caractères). Laissé vide, il sera rempli en résolvant les codes. Changer le code sans l'identifiant efface l'identifiant.",
            "The uid (11 characters). Left blank, resolving the codes fills it. Changing the code without the uid clears the uid.",
        ),
        "edit_site" => ("Modifier le site", "Edit the site"),
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

        // DHIS2: connection and exports.
        "dhis2_title" => ("Rapports DHIS2", "DHIS2 reports"),
        "dhis2_server" => ("Serveur DHIS2", "DHIS2 server"),
        "dhis2_not_configured" => (
            "Non configuré\u{a0}: définissez HUB_DHIS2_URL, et HUB_DHIS2_USERNAME avec HUB_DHIS2_PASSWORD ou HUB_DHIS2_TOKEN (ou la section [dhis2] du fichier de configuration), puis redémarrez le hub.",
            "Not configured: set HUB_DHIS2_URL, and HUB_DHIS2_USERNAME with HUB_DHIS2_PASSWORD or HUB_DHIS2_TOKEN (or the [dhis2] section of the configuration file), then restart the hub.",
        ),
        "dhis2_auth" => ("Authentification", "Authentication"),
        "dhis2_auth_token" => ("jeton d'accès personnel", "personal access token"),
        "dhis2_auth_basic" => ("nom d'utilisateur et mot de passe", "username and password"),
        "dhis2_auth_none" => ("aucune", "none"),
        "dhis2_schedule" => ("Export automatique", "Automatic export"),
        "dhis2_schedule_off" => ("désactivé", "off"),
        "export_start" => ("Lancer un export", "Start an export"),
        "period" => ("Période", "Period"),
        "period_hint" => (
            "Un mois en AAAAMM, par exemple 202404 (par défaut le mois dernier).",
            "A month as yyyyMM, for example 202404 (the previous month by default).",
        ),
        "all_sites" => ("Tous les sites", "All sites"),
        "dry_run" => ("Essai (dry run)", "Trial (dry run)"),
        "dry_run_hint" => (
            "DHIS2 vérifie les valeurs et répond comme pour un vrai envoi, mais n'enregistre rien.",
            "DHIS2 checks the values and answers as for a real send, but stores nothing.",
        ),
        "dry_run_tag" => ("essai", "trial"),
        "export_button" => ("Exporter vers DHIS2", "Export to DHIS2"),
        "exports_list" => ("Exports", "Exports"),
        "no_exports" => ("Aucun export pour l'instant.", "No export yet."),
        "status" => ("État", "Status"),
        "attempts" => ("Tentatives", "Attempts"),
        "counts_short" => ("Importées / mises à jour / ignorées", "Imported / updated / ignored"),
        "counts_legend" => (
            "Valeurs importées, mises à jour et ignorées par DHIS2. Un export remplacé a été refait depuis pour la même période et le même site.",
            "Values DHIS2 imported, updated and ignored. A superseded export was done again since for the same period and site.",
        ),
        "conflicts_count" => ("Conflits", "Conflicts"),
        "created_finished" => ("Créé / terminé", "Created / finished"),
        "job_pending" => ("en attente", "waiting"),
        "job_running" => ("en cours", "running"),
        "job_succeeded" => ("réussi", "succeeded"),
        "job_succeeded_with_conflicts" => ("réussi avec des conflits", "succeeded with conflicts"),
        "job_failed" => ("échoué", "failed"),
        "job_superseded" => ("remplacé", "superseded"),
        "superseded" => ("Remplacé", "Superseded"),
        "superseded_by" => ("remplacé par un export plus récent →", "superseded by a later export →"),
        "mapping_unusable" => (
            "La correspondance DHIS2 en vigueur est inutilisable (voir la page Correspondance DHIS2)\u{a0}:",
            "The DHIS2 mapping in force cannot be used (see the DHIS2 mapping page):",
        ),

        // DHIS2: where each period stands.
        "periods_summary" => ("Où en est chaque période", "Where each period stands"),
        "periods_summary_hint" => (
            "Selon le dernier export de chaque site (hors essais). «\u{a0}Sans export\u{a0}»\u{a0}: sites qui n'ont encore rien envoyé pour cette période.",
            "By each site's latest export (trials left out). 'Not exported': sites that have sent nothing for this period yet.",
        ),
        "col_succeeded" => ("Réussis", "Succeeded"),
        "col_conflicts" => ("Avec conflits", "With conflicts"),
        "col_failed" => ("Échoués", "Failed"),
        "col_in_progress" => ("En cours", "In progress"),
        "col_not_exported" => ("Sans export", "Not exported"),
        "filtered" => ("Exports affichés\u{a0}:", "Exports shown:"),
        "show_all" => ("tout afficher", "show all"),
        "no_matching_exports" => ("Aucun export ne correspond.", "No export matches."),

        // DHIS2: late data.
        "late_data_title" => ("Données arrivées après l'envoi", "Data that arrived after the export"),
        "late_data_link" => (
            "Données arrivées après l'envoi (consultations synchronisées en retard, corrections) →",
            "Data that arrived after the export (consultations synced late, corrections) →",
        ),
        "late_data_intro" => (
            "Les consultations comptent dans le mois de leur date, même quand elles arrivent au hub après l'export. Le hub compare chaque jour les derniers exports des périodes récentes avec ce qu'il compte maintenant et renvoie à DHIS2 celles qui ont changé.",
            "Consultations count in the month of their date, even when they reach the hub after the export. Every day the hub compares the latest exports of recent periods with what it counts now and sends DHIS2 those that changed.",
        ),
        "late_data_periods" => ("Périodes vérifiées", "Periods checked"),
        "late_data_schedule" => ("Vérification des données tardives", "Late-data check"),
        "late_data_none" => (
            "Tout est à jour\u{a0}: DHIS2 a les valeurs que le hub compte maintenant.",
            "Everything is up to date: DHIS2 holds the values the hub counts now.",
        ),
        "late_data_nothing_sent" => {
            ("Rien à renvoyer\u{a0}: tout est à jour.", "Nothing to send: everything is up to date.")
        }
        "late_data_exported" => ("L'export que DHIS2 a reçu →", "The export DHIS2 received →"),
        "late_data_never_sent" => (
            "Jamais envoyé\u{a0}: ce site a rejoint le hub après l'export automatique de cette période.",
            "Never sent: this site joined the hub after the automatic export of this period.",
        ),
        "late_data_sent" => ("Envoyé", "Sent"),
        "late_data_now" => ("Maintenant", "Now"),
        "late_data_send" => ("Envoyer les corrections à DHIS2", "Send the corrections to DHIS2"),
        "late_data_tag" => ("données tardives", "late data"),

        // DHIS2: one export.
        "export_title" => ("Export", "Export"),
        "rerun_of" => ("Relance de", "Re-run of"),
        "earlier_export" => ("l'export précédent", "the earlier export"),
        "created_at" => ("Créé le", "Created"),
        "started_at" => ("Commencé le", "Started"),
        "finished_at" => ("Terminé le", "Finished"),
        "next_attempt" => ("Prochaine tentative", "Next attempt"),
        "imported" => ("Importées", "Imported"),
        "updated" => ("Mises à jour", "Updated"),
        "ignored" => ("Ignorées", "Ignored"),
        "deleted" => ("Supprimées", "Deleted"),
        "http_status" => ("Réponse HTTP", "HTTP status"),
        "job_error" => ("Erreur", "Error"),
        "rerun" => ("Relancer", "Re-run"),
        "rerun_hint" => (
            "Crée un nouvel export de la même période et du même site\u{a0}: DHIS2 met les valeurs à jour, sans les compter deux fois.",
            "Creates a new export of the same period and site: DHIS2 updates the values, it does not count them twice.",
        ),
        "rerun_refused" => ("Impossible de relancer cet export\u{a0}:", "This export cannot be re-run:"),
        "conflicts_dhis2" => ("Conflits signalés par DHIS2", "Conflicts DHIS2 reported"),
        "no_error_code" => ("Sans code d'erreur", "No error code"),
        "dhis2_says" => ("Message de DHIS2\u{a0}:", "DHIS2's message:"),
        "payload" => ("Valeurs envoyées", "Values sent"),
        "data_set" => ("Ensemble de données", "Data set"),
        "org_unit" => ("Unité d'organisation", "Organisation unit"),
        "complete_date" => ("Date de complétude", "Complete date"),
        "indicator" => ("Indicateur", "Indicator"),
        "data_element" => ("Élément de données", "Data element"),
        "coc" => ("Combinaison d'options de catégorie", "Category option combo"),
        "value" => ("Valeur", "Value"),
        "no_payload" => (
            "Pas encore de valeurs\u{a0}: elles sont calculées à la première tentative.",
            "No values yet: they are computed at the first attempt.",
        ),
        "raw_payload" => ("Le dataValueSet envoyé (JSON)", "The dataValueSet sent (JSON)"),
        "response" => ("Réponse de DHIS2", "DHIS2's answer"),
        "no_response" => ("Pas de réponse reçue.", "No answer received."),
        "raw_response" => ("La réponse telle que reçue (JSON)", "The answer as received (JSON)"),

        // DHIS2: the mapping.
        "mapping_title" => ("Correspondance DHIS2", "DHIS2 mapping"),
        "mapping_intro" => (
            "Pour chaque indicateur\u{a0}: l'élément de données DHIS2, sa ventilation (combinaison d'options de catégorie) et ce qui est compté dans les consultations synchronisées.",
            "For each indicator: the DHIS2 data element, its disaggregation (category option combo) and what is counted from the synced encounters.",
        ),
        "mapping_source" => ("Source", "Source"),
        "mapping_source_db" => ("enregistrée dans le hub le", "saved in the hub on"),
        "mapping_source_file" => ("fichier", "file"),
        "mapping_source_default" => ("correspondance par défaut du hub", "the hub's default mapping"),
        "period_type" => ("Type de période", "Period type"),
        "monthly" => ("mensuelle", "monthly"),
        "weekly" => ("hebdomadaire", "weekly"),
        "id_scheme" => ("Identifiants envoyés", "Identifiers sent"),
        "id_scheme_uid" => ("identifiants DHIS2 (UID)", "DHIS2 uids (UID)"),
        "id_scheme_code" => ("codes (CODE)", "codes (CODE)"),
        "uid_missing" => ("identifiant manquant", "uid missing"),
        "missing_uids" => (
            "Identifiants manquants\u{a0}: un export échouera tant qu'ils ne sont pas remplis. Utilisez «\u{a0}Résoudre les codes dans DHIS2\u{a0}».",
            "Missing uids: exports will fail until they are filled. Use 'Resolve the codes in DHIS2'.",
        ),
        "counted" => ("Ce qui est compté", "What is counted"),
        "resolve_title" => ("Résoudre les codes dans DHIS2", "Resolve the codes in DHIS2"),
        "resolve_hint" => (
            "Cherche dans DHIS2 l'ensemble de données, les éléments, les combinaisons et les unités d'organisation des sites par leur code, remplit leurs identifiants et enregistre la correspondance.",
            "Looks the data set, elements, combos and the sites' organisation units up in DHIS2 by code, fills in their uids and saves the mapping.",
        ),
        "resolve_needs_config" => (
            "Indisponible\u{a0}: le hub ne connaît pas de serveur DHIS2. Définissez HUB_DHIS2_URL, et HUB_DHIS2_USERNAME avec HUB_DHIS2_PASSWORD ou HUB_DHIS2_TOKEN, puis redémarrez le hub.",
            "Unavailable: the hub knows no DHIS2 server. Set HUB_DHIS2_URL, and HUB_DHIS2_USERNAME with HUB_DHIS2_PASSWORD or HUB_DHIS2_TOKEN, then restart the hub.",
        ),
        "resolve_button" => ("Résoudre les codes dans DHIS2", "Resolve the codes in DHIS2"),
        "resolve_done" => ("Codes résolus, correspondance enregistrée", "Codes resolved, mapping saved"),
        "resolve_nothing_new" => ("Aucun identifiant nouveau ou changé.", "No new or changed uid."),
        "resolve_filled" => ("Identifiants remplis ou changés\u{a0}:", "Uids filled in or changed:"),
        "resolve_sites" => ("Unités d'organisation des sites\u{a0}:", "The sites' organisation units:"),
        "resolve_missing" => (
            "Codes introuvables dans DHIS2 (corrigez-les ou demandez à l'administrateur DHIS2 de les créer)\u{a0}:",
            "Codes DHIS2 does not know (fix them or ask the DHIS2 administrator to create them):",
        ),
        "kind_data_set" => ("ensemble de données", "data set"),
        "kind_data_element" => ("élément de données", "data element"),
        "kind_coc" => ("combinaison d'options de catégorie", "category option combo"),
        "kind_org_unit" => ("unité d'organisation", "organisation unit"),
        "kind_other" => ("objet", "object"),
        "mapping_edit" => ("Modifier la correspondance", "Edit the mapping"),
        "mapping_not_saved" => (
            "Correspondance non enregistrée\u{a0}: corrigez ces problèmes. Celle en vigueur n'a pas changé.",
            "Mapping not saved: fix these problems. The one in force has not changed.",
        ),
        "mapping_toml" => ("Correspondance (TOML)", "Mapping (TOML)"),
        "mapping_toml_hint" => (
            "Le format est décrit dans fixtures/dhis2/mapping.example.toml. Enregistrée ici, elle remplace le fichier jusqu'à ce que vous reveniez au fichier.",
            "The format is described in fixtures/dhis2/mapping.example.toml. Saved here, it replaces the file until you go back to the file.",
        ),
        "mapping_reset" => ("Revenir au fichier", "Back to the file"),
        "mapping_reset_hint" => (
            "Supprime la correspondance enregistrée dans le hub\u{a0}: le fichier HUB_DHIS2_MAPPING (ou la correspondance par défaut) s'applique de nouveau.",
            "Deletes the mapping saved in the hub: the HUB_DHIS2_MAPPING file (or the default mapping) applies again.",
        ),

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

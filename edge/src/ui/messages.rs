//! The French and English text of every UI label and validation message,
//! looked up by key (see [`super::i18n::Texts::t`]). French uses no-break
//! spaces before `:` and `;` and inside guillemets, as French typography does.

/// The table: key → (French, English).
#[allow(clippy::too_many_lines)]
pub(super) fn lookup(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        // Layout and navigation.
        "app_name" => ("Santé Rurale", "Santé Rurale"),
        "language" => ("Langue", "Language"),
        "nav_label" => ("Menu principal", "Main menu"),
        "nav_search" => ("Rechercher", "Search"),
        "nav_new_patient" => ("Nouveau patient", "New patient"),
        "nav_sync" => ("Synchronisation", "Sync"),
        "nav_users" => ("Comptes", "Accounts"),
        "nav_logout" => ("Déconnexion", "Sign out"),
        "signed_in_as" => ("Connecté\u{a0}:", "Signed in:"),
        "required_note" => ("* champ obligatoire", "* required field"),
        "save" => ("Enregistrer", "Save"),
        "cancel" => ("Annuler", "Cancel"),
        "yes" => ("Oui", "Yes"),
        "no" => ("Non", "No"),
        "form_has_errors" => (
            "Le formulaire contient des erreurs\u{a0}: corrigez les champs signalés ci-dessous. Rien n'a été enregistré.",
            "The form has errors: correct the fields marked below. Nothing was saved.",
        ),

        // Sign-in and first-run setup.
        "login_title" => ("Connexion", "Sign in"),
        "login_button" => ("Se connecter", "Sign in"),
        "login_failed" => ("Nom d'utilisateur ou mot de passe incorrect.", "Wrong username or password."),
        "username" => ("Nom d'utilisateur", "Username"),
        "password" => ("Mot de passe", "Password"),
        "password_confirm" => ("Confirmer le mot de passe", "Confirm the password"),
        "password_hint" => ("Au moins 8 caractères.", "At least 8 characters."),
        "username_hint" => (
            "2 à 40 lettres, chiffres, «\u{a0}.\u{a0}», «\u{a0}_\u{a0}» ou «\u{a0}-\u{a0}».",
            "2 to 40 letters, digits, '.', '_' or '-'.",
        ),
        "setup_title" => ("Première mise en service", "First-time setup"),
        "setup_intro" => (
            "Aucun compte n'existe encore sur ce poste. Créez le compte administrateur\u{a0}: il servira ensuite à créer les comptes du personnel.",
            "No account exists on this box yet. Create the administrator account; it is then used to create the staff accounts.",
        ),
        "setup_button" => ("Créer le compte administrateur", "Create the administrator account"),

        // Search.
        "search_title" => ("Rechercher un patient", "Find a patient"),
        "search_label" => ("Nom, téléphone ou numéro d'identité", "Name, phone or ID number"),
        "search_button" => ("Rechercher", "Search"),
        "recent_patients" => ("Patients récents", "Recent patients"),
        "results" => ("Résultats", "Results"),
        "no_results" => ("Aucun patient trouvé.", "No patient found."),
        "no_patients_yet" => ("Aucun patient enregistré pour l'instant.", "No patient registered yet."),
        "register_new" => ("Enregistrer un nouveau patient", "Register a new patient"),

        // Search on the hub (a patient registered at another clinic).
        "hub_search_title" => ("Chercher sur le hub", "Search the hub"),
        "hub_search_intro" => (
            "Patient enregistré dans un autre centre\u{a0}? Entrez son numéro de téléphone complet ou son identifiant patient.",
            "Patient registered at another clinic? Enter their full phone number or patient ID.",
        ),
        "hub_search_label" => ("Téléphone ou identifiant patient", "Phone or patient ID"),
        "hub_search_button" => ("Chercher sur le hub", "Search the hub"),
        "hub_no_results" => (
            "Aucun patient trouvé sur le hub avec ce numéro ou cet identifiant.",
            "No patient found on the hub with this number or ID.",
        ),
        "hub_registered_at" => ("enregistré à", "registered at"),
        "hub_fetch_button" => ("Récupérer ce dossier", "Fetch this record"),
        "hub_open_local" => ("Ouvrir le dossier", "Open the chart"),
        "hub_invalid_query" => (
            "Entrez un numéro de téléphone complet (par exemple 76\u{a0}12\u{a0}34\u{a0}56) ou un identifiant patient. La recherche par nom ne se fait qu'ici, dans ce centre.",
            "Enter a full phone number (for example 76 12 34 56) or a patient ID. Searching by name works only here, in this clinic.",
        ),
        "hub_offline" => (
            "Le hub est injoignable pour l'instant (pas de connexion). Réessayez plus tard\u{a0}; en attendant, vous pouvez enregistrer le patient ici.",
            "The hub cannot be reached right now (no connection). Try again later; meanwhile you can register the patient here.",
        ),
        "hub_not_enrolled" => (
            "Ce poste n'est pas encore relié au hub\u{a0}: un administrateur doit d'abord l'inscrire.",
            "This box is not linked to a hub yet: an administrator must enroll it first.",
        ),
        "hub_unknown_patient" => ("Le hub ne connaît pas ce patient.", "The hub does not know this patient."),
        "hub_failed" => (
            "Le hub n'a pas pu répondre. Réessayez plus tard\u{a0}; si cela continue, prévenez l'administrateur.",
            "The hub could not answer. Try again later; if it keeps happening, tell the administrator.",
        ),

        // Patient fields.
        "patient_label" => ("Patient\u{a0}:", "Patient:"),
        "given_name" => ("Prénom", "Given name"),
        "family_name" => ("Nom de famille", "Family name"),
        "sex" => ("Sexe", "Sex"),
        "sex_female" => ("Féminin", "Female"),
        "sex_male" => ("Masculin", "Male"),
        "birth_date" => ("Date de naissance", "Date of birth"),
        "birth_date_estimated" => ("Date de naissance estimée", "Estimated date of birth"),
        "age_years" => ("ou âge estimé (années)", "or estimated age (years)"),
        "age_hint" => ("Si la date de naissance est inconnue.", "If the date of birth is unknown."),
        "age" => ("Âge", "Age"),
        "estimated" => ("estimée", "estimated"),
        "phone" => ("Téléphone", "Phone"),
        "village" => ("Village ou quartier", "Village or neighbourhood"),
        "national_id" => ("Numéro d'identité (NINA)", "National ID number"),
        "whatsapp" => ("WhatsApp", "WhatsApp"),
        "whatsapp_consent" => ("Accepte de recevoir des messages WhatsApp", "Agrees to receive WhatsApp messages"),
        "whatsapp_consent_date" => ("Date du consentement", "Date of consent"),
        "consent_given" => ("Consentement donné le", "Consent given on"),
        "consent_none" => ("Pas de consentement", "No consent"),
        "new_patient_title" => ("Nouveau patient", "New patient"),
        "edit_patient_title" => ("Modifier le patient", "Edit patient"),
        "duplicate_title" => ("Ce patient est peut-être déjà enregistré", "This patient may already be registered"),
        "duplicate_intro" => (
            "Des patients semblables existent déjà. Ouvrez leur dossier pour vérifier s'il s'agit de la même personne avant d'en créer un nouveau.",
            "Similar patients already exist. Open their charts to check whether this is the same person before creating a new one.",
        ),
        "duplicate_reason_phone" => ("même numéro de téléphone", "same phone number"),
        "duplicate_reason_name_and_birth_year" => {
            ("même nom et même année de naissance", "same name and year of birth")
        }
        "confirm_duplicate" => (
            "J'ai vérifié\u{a0}: c'est une autre personne, enregistrer quand même",
            "I have checked: this is a different person, register anyway",
        ),

        // Chart.
        "chart_details" => ("Identité", "Patient details"),
        "edit_patient" => ("Modifier", "Edit"),
        "new_encounter" => ("Nouvelle consultation", "New consultation"),
        "encounters" => ("Consultations", "Consultations"),
        "no_encounters" => ("Aucune consultation enregistrée.", "No consultation recorded."),
        "encounter_date" => ("Date", "Date"),
        "kind" => ("Type de visite", "Type of visit"),
        "complaint" => ("Motif de consultation", "Presenting complaint"),
        "diagnosis" => ("Diagnostic", "Diagnosis"),
        "icd10" => ("Code CIM-10", "ICD-10 code"),
        "icd10_hint" => ("Par exemple B54 (paludisme).", "For example B54 (malaria)."),
        "vitals" => ("Constantes", "Vital signs"),
        "weight_kg" => ("Poids (kg)", "Weight (kg)"),
        "temperature_c" => ("Température (°C)", "Temperature (°C)"),
        "blood_pressure" => ("Tension artérielle (mmHg)", "Blood pressure (mmHg)"),
        "bp_systolic" => ("Systolique", "Systolic"),
        "bp_diastolic" => ("Diastolique", "Diastolic"),
        "bp_short" => ("TA", "BP"),
        "notes" => ("Notes", "Notes"),
        "clinician" => ("Soignant", "Clinician"),
        "age_group" => ("Tranche d'âge", "Age group"),
        "encounter_title" => ("Nouvelle consultation", "New consultation"),
        "back_to_chart" => ("Retour au dossier", "Back to the chart"),

        // Sync.
        "sync_title" => ("Synchronisation", "Sync"),
        "outbox_depth" => ("Modifications en attente d'envoi", "Changes waiting to be sent"),
        "enrolled" => ("Poste inscrit auprès du serveur central", "Box enrolled with the hub"),
        "device_id" => ("Identifiant du poste", "Box id"),
        "site_id" => ("Identifiant du site", "Site id"),
        "hub_url" => ("Adresse du serveur central", "Hub address"),
        "last_success" => ("Dernière synchronisation réussie", "Last successful sync"),
        "last_error" => ("Dernière erreur", "Last error"),
        "never" => ("Jamais", "Never"),
        "not_set" => ("Non défini", "Not set"),
        "none" => ("Aucune", "None"),
        "not_enrolled_note" => (
            "Ce poste n'est pas encore inscrit auprès du serveur central. Les dossiers sont enregistrés ici en toute sécurité et seront envoyés dès que le poste sera inscrit.",
            "This box is not enrolled with the hub yet. Records are kept safely here and will be sent once the box is enrolled.",
        ),
        "enrolled_note" => (
            "Les modifications sont envoyées au serveur central dès qu'une connexion est disponible.",
            "Changes are sent to the hub whenever a connection is available.",
        ),
        "site" => ("Site", "Site"),
        "last_error_detail" => ("Détail technique\u{a0}:", "Technical detail:"),
        "sync_now" => ("Synchroniser maintenant", "Sync now"),
        "sync_now_hint" => (
            "Envoie tout de suite au serveur central les modifications en attente. La synchronisation se fait aussi automatiquement.",
            "Sends the waiting changes to the hub right away. Syncing also happens automatically.",
        ),
        "sync_done" => ("Synchronisation réussie. Modifications envoyées\u{a0}:", "Sync done. Changes sent:"),
        "sync_failed" => ("La synchronisation a échoué.", "The sync failed."),
        "sync_err_revoked" => (
            "Cet appareil a été révoqué par le hub\u{a0}: contactez l'administrateur.",
            "This box has been revoked by the hub: contact the administrator.",
        ),
        "sync_err_unknown_device" => (
            "Le serveur central ne connaît pas ce poste\u{a0}: il faut l'inscrire à nouveau. Contactez l'administrateur.",
            "The hub does not know this box: it must be enrolled again. Contact the administrator.",
        ),
        "sync_err_device_key" => (
            "La clé de ce poste n'est pas acceptée ou est illisible\u{a0}: il faut l'inscrire à nouveau. Contactez l'administrateur.",
            "This box's key is refused or unreadable: it must be enrolled again. Contact the administrator.",
        ),
        "sync_err_clock" => (
            "L'horloge de ce poste n'est pas à l'heure\u{a0}: corrigez la date et l'heure, puis réessayez.",
            "This box's clock is wrong: correct the date and time, then try again.",
        ),
        "sync_err_protocol" => (
            "Ce poste et le serveur central n'ont pas la même version\u{a0}: mettez le logiciel à jour.",
            "This box and the hub run different versions: update the software.",
        ),
        "sync_err_too_large" => (
            "Une modification est trop volumineuse pour le serveur central\u{a0}: contactez l'administrateur.",
            "A change is too large for the hub: contact the administrator.",
        ),
        "sync_err_unreachable" => (
            "Le serveur central est injoignable (pas de connexion Internet\u{a0}?). Les modifications restent ici en sécurité et partiront d'elles-mêmes au retour de la connexion.",
            "The hub cannot be reached (no internet connection?). Changes stay safely here and will be sent by themselves once the connection is back.",
        ),
        "sync_err_hub_problem" => (
            "Le serveur central a rencontré un problème. Les modifications restent ici en sécurité\u{a0}; un nouvel essai aura lieu automatiquement.",
            "The hub ran into a problem. Changes stay safely here; it will be tried again automatically.",
        ),
        "sync_err_change_refused" => (
            "Le serveur central refuse une des modifications de ce poste (voir le détail technique pour son numéro). Elle est gardée ici, ainsi que les suivantes\u{a0}: contactez l'administrateur.",
            "The hub refuses one of this box's changes (see the technical detail for its number). It is kept here, with the ones after it: contact the administrator.",
        ),
        "sync_retry_at" => ("Nouvel essai automatique à", "Will retry automatically at"),
        "sync_retry_later" => (
            "Problème passager\u{a0}: la prochaine synchronisation devrait aboutir.",
            "A passing problem: the next sync should get through.",
        ),
        "sync_action_needed" => ("Action nécessaire\u{a0}:", "Action needed:"),
        "last_run" => ("Dernière synchronisation", "Last sync"),
        "changes_sent" => ("modifications envoyées", "changes sent"),
        "changes_received" => ("modifications reçues", "changes received"),
        "next_sync" => ("Prochaine synchronisation automatique", "Next automatic sync"),
        "sync_err_other" => (
            "La synchronisation n'a pas abouti. Les modifications restent ici en sécurité. Si cela continue, contactez l'administrateur.",
            "The sync did not complete. Changes stay safely here. If this continues, contact the administrator.",
        ),

        // Accounts.
        "users_title" => ("Comptes du personnel", "Staff accounts"),
        "role" => ("Rôle", "Role"),
        "create_user" => ("Créer un compte", "Create an account"),
        "user_created" => ("Compte créé.", "Account created."),
        "role_help_registrar" => (
            "Accueil\u{a0}: rechercher, enregistrer et modifier les patients.",
            "Registrar: find, register and edit patients.",
        ),
        "role_help_clinician" => (
            "Soignant\u{a0}: comme l'accueil, et enregistrer les consultations.",
            "Clinician: as a registrar, and record consultations.",
        ),
        "role_help_admin" => (
            "Administrateur\u{a0}: tout, plus les comptes et la synchronisation.",
            "Administrator: everything, plus accounts and sync.",
        ),

        // Error pages.
        "forbidden_title" => ("Accès refusé", "Access denied"),
        "forbidden_text" => (
            "Votre rôle ne permet pas cette action. Demandez à un administrateur si vous en avez besoin.",
            "Your role does not allow this. Ask an administrator if you need it.",
        ),
        "csrf_title" => ("Requête refusée", "Request refused"),
        "csrf_text" => (
            "Le formulaire a expiré ou ne provient pas de cette application. Rien n'a été enregistré. Revenez en arrière, rechargez la page et réessayez (les cookies doivent être autorisés).",
            "The form has expired or did not come from this application. Nothing was saved. Go back, reload the page and try again (cookies must be allowed).",
        ),
        "not_found_title" => ("Page introuvable", "Page not found"),
        "not_found_text" => ("Ce patient ou cette page n'existe pas.", "This patient or page does not exist."),
        "bad_request_title" => ("Requête invalide", "Invalid request"),
        "bad_request_text" => (
            "Le formulaire envoyé n'a pas pu être lu. Rien n'a été enregistré. Rechargez la page et réessayez.",
            "The form sent could not be read. Nothing was saved. Reload the page and try again.",
        ),
        "internal_title" => ("Erreur interne", "Internal error"),
        "internal_text" => (
            "L'opération n'a pas abouti. Réessayez\u{a0}; si le problème continue, prévenez l'administrateur (le détail est dans le journal du poste).",
            "The operation did not complete. Try again; if the problem persists, tell the administrator (the details are in the box's log).",
        ),
        "back_home" => ("Retour à la recherche", "Back to search"),

        // Validation codes (`err_` + code).
        "err_required" => ("Ce champ est obligatoire.", "This field is required."),
        "err_too_long" => ("Texte trop long.", "Too long."),
        "err_invalid_date" => ("Date invalide (format AAAA-MM-JJ).", "Invalid date (YYYY-MM-DD)."),
        "err_in_future" => ("Cette date est dans le futur.", "This date is in the future."),
        "err_out_of_range" => ("Valeur hors des limites acceptées.", "Value out of the accepted range."),
        "err_invalid_phone" => (
            "Numéro invalide\u{a0}: numéro local (76 12 34 56) ou international (+223 76 12 34 56).",
            "Invalid number: local (76 12 34 56) or international (+223 76 12 34 56).",
        ),
        "err_required_for_whatsapp" => {
            ("Le consentement WhatsApp nécessite un numéro de téléphone.", "WhatsApp consent needs a phone number.")
        }
        "err_before_birth" => {
            ("Cette date est antérieure à la naissance du patient.", "This date is before the patient's birth.")
        }
        "err_invalid_icd10" => (
            "Code CIM-10 invalide (exemples\u{a0}: A09, B54, O80.0).",
            "Invalid ICD-10 code (examples: A09, B54, O80.0).",
        ),
        "err_not_below_systolic" => (
            "La tension diastolique doit être inférieure à la systolique.",
            "Diastolic pressure must be below systolic.",
        ),
        "err_not_whole" => ("Nombre entier attendu.", "A whole number is expected."),
        "err_required_with_systolic" => ("Indiquez aussi la tension diastolique.", "Give the diastolic pressure too."),
        "err_required_with_diastolic" => ("Indiquez aussi la tension systolique.", "Give the systolic pressure too."),
        "err_ambiguous" => (
            "Indiquez soit la date de naissance, soit l'âge estimé, pas les deux.",
            "Give either the date of birth or the estimated age, not both.",
        ),
        "err_birth_date_required" => {
            ("Indiquez la date de naissance ou l'âge estimé.", "Give the date of birth or the estimated age.")
        }
        "err_invalid_choice" => ("Choix invalide.", "Invalid choice."),
        "err_invalid_characters" => {
            ("Ce champ contient des caractères non autorisés.", "This field contains characters that are not allowed.")
        }
        "err_national_id_characters" => (
            "Lettres, chiffres, espaces, «\u{a0}-\u{a0}» et «\u{a0}/\u{a0}» uniquement.",
            "Letters, digits, spaces, '-' and '/' only.",
        ),
        "err_not_a_number" => ("Nombre attendu (par exemple 38,5).", "A number is expected (for example 38.5)."),
        "err_age_not_a_number" => (
            "Nombre entier d'années attendu (par exemple 30).",
            "A whole number of years is expected (for example 30).",
        ),
        "err_password_mismatch" => ("Les deux mots de passe ne correspondent pas.", "The two passwords differ."),
        "err_username_taken" => ("Ce nom d'utilisateur est déjà pris.", "This username is already taken."),
        "err_invalid_username" => (
            "De 2 à 40 lettres, chiffres, «\u{a0}.\u{a0}», «\u{a0}_\u{a0}» ou «\u{a0}-\u{a0}».",
            "2 to 40 letters, digits, '.', '_' or '-'.",
        ),
        _ => return None,
    })
}

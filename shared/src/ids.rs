//! Newtype identifiers. Ids we mint are UUIDv7 (time-ordered, so B-tree
//! indexes stay append-mostly); all are serde-transparent strings on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim()).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A patient: also the id of the patient's Automerge document.
    PatientId
);
uuid_id!(
    /// One encounter (consultation, antenatal visit, ...) inside a patient document.
    EncounterId
);
uuid_id!(
    /// A user account local to one edge (or to the hub).
    UserId
);
uuid_id!(
    /// A clinic site, as registered on the hub.
    SiteId
);
uuid_id!(
    /// One installed edge box. Its bytes are also the Automerge actor id of the
    /// changes it makes, so every change carries its provenance.
    DeviceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_plain_strings() {
        let id = PatientId::new();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{id}\""));
        let back: PatientId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        assert_eq!(id.to_string().parse::<PatientId>().expect("parse"), id);
    }

    #[test]
    fn new_ids_are_version_7_and_ordered() {
        let a = EncounterId::new();
        let b = EncounterId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
    }
}

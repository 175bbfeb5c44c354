//! `graph.timezone`: the names Graph accepts in `Prefer: outlook.timezone`.
//!
//! Graph's `dateTimeTimeZone` documentation: "any of the time zones currently supported by
//! Windows", plus IANA names ("additional time zones" it lists). Windows names are those of
//! the CLDR mapping (`common/supplemental/windowsZones.xml`, the `other` attribute), which
//! follows the Windows time zone registry; IANA names are checked against the tz database
//! compiled into `chrono-tz`. Names are matched exactly, as Graph is sent them: a name
//! differing only in case is refused with the right spelling suggested.

use std::str::FromStr;

/// Windows time zone ids (CLDR `windowsZones.xml`), as Windows spells them.
pub const WINDOWS_ZONES: &[&str] = &[
    "Dateline Standard Time",
    "UTC-11",
    "Aleutian Standard Time",
    "Hawaiian Standard Time",
    "Marquesas Standard Time",
    "Alaskan Standard Time",
    "UTC-09",
    "Pacific Standard Time (Mexico)",
    "UTC-08",
    "Pacific Standard Time",
    "US Mountain Standard Time",
    "Mountain Standard Time (Mexico)",
    "Mountain Standard Time",
    "Yukon Standard Time",
    "Central America Standard Time",
    "Central Standard Time",
    "Easter Island Standard Time",
    "Central Standard Time (Mexico)",
    "Canada Central Standard Time",
    "SA Pacific Standard Time",
    "Eastern Standard Time (Mexico)",
    "Eastern Standard Time",
    "Haiti Standard Time",
    "Cuba Standard Time",
    "US Eastern Standard Time",
    "Turks And Caicos Standard Time",
    "Paraguay Standard Time",
    "Atlantic Standard Time",
    "Venezuela Standard Time",
    "Central Brazilian Standard Time",
    "SA Western Standard Time",
    "Pacific SA Standard Time",
    "Newfoundland Standard Time",
    "Tocantins Standard Time",
    "E. South America Standard Time",
    "SA Eastern Standard Time",
    "Argentina Standard Time",
    "Greenland Standard Time",
    "Montevideo Standard Time",
    "Magallanes Standard Time",
    "Saint Pierre Standard Time",
    "Bahia Standard Time",
    "UTC-02",
    "Azores Standard Time",
    "Cape Verde Standard Time",
    "UTC",
    "GMT Standard Time",
    "Greenwich Standard Time",
    "Sao Tome Standard Time",
    "Morocco Standard Time",
    "W. Europe Standard Time",
    "Central Europe Standard Time",
    "Romance Standard Time",
    "Central European Standard Time",
    "W. Central Africa Standard Time",
    "Jordan Standard Time",
    "GTB Standard Time",
    "Middle East Standard Time",
    "Egypt Standard Time",
    "E. Europe Standard Time",
    "Syria Standard Time",
    "West Bank Standard Time",
    "South Africa Standard Time",
    "FLE Standard Time",
    "Israel Standard Time",
    "South Sudan Standard Time",
    "Kaliningrad Standard Time",
    "Sudan Standard Time",
    "Libya Standard Time",
    "Namibia Standard Time",
    "Arabic Standard Time",
    "Turkey Standard Time",
    "Arab Standard Time",
    "Belarus Standard Time",
    "Russian Standard Time",
    "E. Africa Standard Time",
    "Iran Standard Time",
    "Arabian Standard Time",
    "Astrakhan Standard Time",
    "Azerbaijan Standard Time",
    "Russia Time Zone 3",
    "Mauritius Standard Time",
    "Saratov Standard Time",
    "Georgian Standard Time",
    "Volgograd Standard Time",
    "Caucasus Standard Time",
    "Afghanistan Standard Time",
    "West Asia Standard Time",
    "Ekaterinburg Standard Time",
    "Pakistan Standard Time",
    "Qyzylorda Standard Time",
    "India Standard Time",
    "Sri Lanka Standard Time",
    "Nepal Standard Time",
    "Central Asia Standard Time",
    "Bangladesh Standard Time",
    "Omsk Standard Time",
    "Myanmar Standard Time",
    "SE Asia Standard Time",
    "Altai Standard Time",
    "W. Mongolia Standard Time",
    "North Asia Standard Time",
    "N. Central Asia Standard Time",
    "Tomsk Standard Time",
    "China Standard Time",
    "North Asia East Standard Time",
    "Singapore Standard Time",
    "W. Australia Standard Time",
    "Taipei Standard Time",
    "Ulaanbaatar Standard Time",
    "Aus Central W. Standard Time",
    "Transbaikal Standard Time",
    "Tokyo Standard Time",
    "North Korea Standard Time",
    "Korea Standard Time",
    "Yakutsk Standard Time",
    "Cen. Australia Standard Time",
    "AUS Central Standard Time",
    "E. Australia Standard Time",
    "AUS Eastern Standard Time",
    "West Pacific Standard Time",
    "Tasmania Standard Time",
    "Vladivostok Standard Time",
    "Lord Howe Standard Time",
    "Bougainville Standard Time",
    "Russia Time Zone 10",
    "Magadan Standard Time",
    "Norfolk Standard Time",
    "Sakhalin Standard Time",
    "Central Pacific Standard Time",
    "Russia Time Zone 11",
    "New Zealand Standard Time",
    "UTC+12",
    "Fiji Standard Time",
    "Chatham Islands Standard Time",
    "UTC+13",
    "Tonga Standard Time",
    "Samoa Standard Time",
    "Line Islands Standard Time",
];

/// `Ok` for a Windows or IANA time zone name; else why not, with the right spelling when
/// only the case differs.
pub fn check(name: &str) -> Result<(), String> {
    if WINDOWS_ZONES.contains(&name) || chrono_tz::Tz::from_str(name).is_ok() {
        return Ok(());
    }
    let near = WINDOWS_ZONES
        .iter()
        .copied()
        .chain(chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()))
        .find(|z| z.eq_ignore_ascii_case(name.trim()));
    Err(match near {
        Some(z) => format!("'{name}' is not a time zone name: did you mean '{z}'?"),
        None => format!(
            "'{name}' is not a time zone Graph knows: use a Windows name (\"W. Europe Standard Time\") or an IANA name (\"Europe/Berlin\")"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_iana_names_and_nothing_else() {
        assert_eq!(WINDOWS_ZONES.len(), 139);
        let unique: std::collections::HashSet<_> = WINDOWS_ZONES.iter().collect();
        assert_eq!(unique.len(), WINDOWS_ZONES.len());
        for ok in [
            "UTC",
            "Pacific Standard Time",
            "W. Europe Standard Time",
            "Pacific Standard Time (Mexico)",
            "UTC+12",
            "Europe/Berlin",
            "America/Indiana/Indianapolis",
            "Etc/GMT+12",
            "Asia/Calcutta",
        ] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in ["Mars/Olympus_Mons", "PST", "", "Europe/Berln", "CEST"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let e = check("europe/berlin").unwrap_err();
        assert!(e.contains("did you mean 'Europe/Berlin'"), "{e}");
        let e = check("pacific standard time").unwrap_err();
        assert!(e.contains("'Pacific Standard Time'"), "{e}");
    }
}

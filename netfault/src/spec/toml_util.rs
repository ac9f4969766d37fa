//! Small TOML helpers shared by every file format netfault reads (rule sets, the agent's JSON
//! through them, cluster and scenario files): each error names the key path it came from.
use toml::{Table, Value};

use crate::spec::SpecError;

pub fn err(path: &str, msg: impl Into<String>) -> SpecError {
    SpecError::new(path, msg)
}

pub fn parse_doc(text: &str) -> Result<Table, SpecError> {
    text.parse()
        .map_err(|e: toml::de::Error| err("FILE", e.message().to_string()))
}

pub fn string<'a>(path: &str, v: &'a Value) -> Result<&'a str, SpecError> {
    v.as_str()
        .ok_or_else(|| err(path, format!("expected a string, found {}", v.type_str())))
}

/// A list of strings; a lone string stands for a list of one (as in rule-set files).
pub fn strings<'a>(path: &str, v: &'a Value) -> Result<Vec<(String, &'a str)>, SpecError> {
    match v {
        Value::String(s) => Ok(vec![(format!("{path}[0]"), s.as_str())]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let p = format!("{path}[{i}]");
                let s = string(&p, e)?;
                Ok((p, s))
            })
            .collect(),
        _ => Err(err(
            path,
            format!("expected a list of strings, found {}", v.type_str()),
        )),
    }
}

pub fn table<'a>(path: &str, v: &'a Value) -> Result<&'a Table, SpecError> {
    v.as_table()
        .ok_or_else(|| err(path, format!("expected a table, found {}", v.type_str())))
}

/// `[[key]]` entries: an array of tables.
pub fn tables<'a>(path: &str, v: &'a Value) -> Result<Vec<(String, &'a Table)>, SpecError> {
    let a = v
        .as_array()
        .ok_or_else(|| err(path, format!("expected [[{path}]] tables")))?;
    a.iter()
        .enumerate()
        .map(|(i, e)| {
            let p = format!("{path}[{i}]");
            let t = table(&p, e)?;
            Ok((p, t))
        })
        .collect()
}

pub fn check_keys(path: &str, t: &Table, allowed: &[&str]) -> Result<(), SpecError> {
    for k in t.keys() {
        if !allowed.contains(&k.as_str()) {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            return Err(err(
                &p,
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `path.key`, or `key` at the top level.
pub fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A value parsed from a string with `FromStr` (`"10mbit"`, `"normal"`).
pub fn parsed<T: std::str::FromStr<Err = String>>(path: &str, v: &Value) -> Result<T, SpecError> {
    string(path, v)?.parse().map_err(|m: String| err(path, m))
}

/// A probability: `"30%"`, `0.3` or `1`.
pub fn prob(path: &str, v: &Value) -> Result<super::Prob, SpecError> {
    match v {
        Value::Float(f) => format!("{f}").parse(),
        Value::Integer(i) => format!("{i}").parse(),
        Value::String(s) => s.parse(),
        _ => Err("expected a probability (\"30%\" or 0.3)".to_string()),
    }
    .map_err(|m: String| err(path, m))
}

/// A duration greater than zero (`"50ms"`).
pub fn duration(path: &str, v: &Value) -> Result<std::time::Duration, SpecError> {
    super::parse_duration(string(path, v)?).map_err(|m| err(path, m))
}

pub fn boolean(path: &str, v: &Value) -> Result<bool, SpecError> {
    v.as_bool()
        .ok_or_else(|| err(path, "expected true or false"))
}

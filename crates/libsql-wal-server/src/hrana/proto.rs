//! The JSON structures of Hrana over HTTP (versions 2 and 3), as the public specification
//! (`docs/HRANA_3_SPEC.md` in libSQL's repository) defines them. Plain data: decoding and
//! encoding only, no behaviour. `docs/FORMAT.md` (*Hrana over HTTP*) lists what we accept.
//!
//! Decoding is lenient where clients differ and strict where a mistake would change a value:
//! an integer may come as a JSON string or number, base64 with or without padding; an
//! unknown request `type` is a 400, never a guess.

use serde::{Deserialize, Serialize};

/// `POST /v2/pipeline`, `/v3/pipeline`.
#[derive(Debug, Deserialize)]
pub struct PipelineRequest {
    #[serde(default)]
    pub baton: Option<String>,
    pub requests: Vec<StreamRequest>,
}

#[derive(Debug, Serialize)]
pub struct PipelineResponse {
    pub baton: Option<String>,
    pub base_url: Option<String>,
    pub results: Vec<StreamResult>,
}

/// `POST /v3/cursor`.
#[derive(Debug, Deserialize)]
pub struct CursorRequest {
    #[serde(default)]
    pub baton: Option<String>,
    pub batch: Batch,
}

/// The first line of a cursor response.
#[derive(Debug, Serialize)]
pub struct CursorResponse {
    pub baton: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    Close,
    Execute {
        stmt: Stmt,
    },
    Batch {
        batch: Batch,
    },
    Sequence {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql {
        sql_id: i32,
        sql: String,
    },
    CloseSql {
        sql_id: i32,
    },
    GetAutocommit,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResult {
    Ok { response: StreamResponse },
    Error { error: Error },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamResponse {
    Close,
    Execute { result: StmtResult },
    Batch { result: BatchResult },
    Sequence,
    Describe { result: DescribeResult },
    StoreSql,
    CloseSql,
    GetAutocommit { is_autocommit: bool },
}

/// A protocol error: `message` for people, `code` for programs (the codes libSQL's server
/// uses, listed in `docs/FORMAT.md`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Error {
    pub message: String,
    pub code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stmt {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub sql_id: Option<i32>,
    #[serde(default)]
    pub args: Vec<Value>,
    #[serde(default)]
    pub named_args: Vec<NamedArg>,
    #[serde(default)]
    pub want_rows: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedArg {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Serialize, Default)]
pub struct StmtResult {
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Value>>,
    pub affected_row_count: u64,
    pub last_insert_rowid: Option<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub query_duration_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Col {
    pub name: Option<String>,
    pub decltype: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchStep {
    #[serde(default)]
    pub condition: Option<BatchCond>,
    pub stmt: Stmt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: u32 },
    Error { step: u32 },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
    Or { conds: Vec<BatchCond> },
    IsAutocommit,
}

#[derive(Debug, Serialize, Default)]
pub struct BatchResult {
    pub step_results: Vec<Option<StmtResult>>,
    pub step_errors: Vec<Option<Error>>,
}

/// One line of a cursor response after the first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CursorEntry {
    StepBegin { step: u32, cols: Vec<Col> },
    StepEnd { affected_row_count: u64, last_insert_rowid: Option<String> },
    StepError { step: u32, error: Error },
    Row { row: Vec<Value> },
    Error { error: Error },
}

#[derive(Debug, Serialize)]
pub struct DescribeResult {
    pub params: Vec<DescribeParam>,
    pub cols: Vec<DescribeCol>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

#[derive(Debug, Serialize)]
pub struct DescribeParam {
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DescribeCol {
    pub name: String,
    pub decltype: Option<String>,
}

/// An SQLite value. In JSON an integer is a string (a 64-bit integer does not survive a
/// double), a float a number, a blob base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    Null,
    Integer {
        #[serde(with = "integer_as_string")]
        value: i64,
    },
    Float {
        #[serde(with = "float_as_number")]
        value: f64,
    },
    Text {
        value: String,
    },
    Blob {
        #[serde(with = "bytes_as_base64")]
        base64: Vec<u8>,
    },
}

/// Integers are written as strings and read from a string or a number.
mod integer_as_string {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &i64, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(value)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Number(i64),
        #[serde(borrow)]
        Text(std::borrow::Cow<'a, str>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
        match Either::deserialize(de)? {
            Either::Number(n) => Ok(n),
            Either::Text(text) => text
                .parse()
                .map_err(|_| de::Error::invalid_value(de::Unexpected::Str(&text), &"a 64-bit signed integer")),
        }
    }
}

/// JSON has no NaN or infinity. SQLite stores NaN as NULL, so only ±Inf (`SELECT 1e999`)
/// reaches here: it goes out as the largest finite double of its sign, the nearest value
/// JSON can carry (serde_json would otherwise write `null`, which clients reject as a float).
mod float_as_number {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, ser: S) -> Result<S::Ok, S::Error> {
        match *value {
            v if v.is_finite() => ser.serialize_f64(v),
            v if v > 0.0 => ser.serialize_f64(f64::MAX),
            v if v < 0.0 => ser.serialize_f64(f64::MIN),
            _ => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<f64, D::Error> {
        f64::deserialize(de)
    }
}

/// Written without padding (as libSQL's server does), read with or without it.
mod bytes_as_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &[u8], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&STANDARD_NO_PAD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<u8>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(de)?;
        STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| de::Error::invalid_value(de::Unexpected::Str(&text), &"binary data encoded as base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_exactly() {
        let json = r#"[{"type":"null"},{"type":"integer","value":"-9223372036854775808"},
            {"type":"integer","value":9007199254740993},{"type":"float","value":0.1},
            {"type":"text","value":"héllo"},{"type":"blob","base64":"AAEC/w=="},{"type":"blob","base64":"AAEC/w"}]"#;
        let values: Vec<Value> = serde_json::from_str(json).unwrap();
        assert_eq!(
            values,
            vec![
                Value::Null,
                Value::Integer { value: i64::MIN },
                Value::Integer { value: 9007199254740993 },
                Value::Float { value: 0.1 },
                Value::Text { value: "héllo".into() },
                Value::Blob { base64: vec![0, 1, 2, 255] },
                Value::Blob { base64: vec![0, 1, 2, 255] },
            ]
        );
        let out = serde_json::to_string(&values[1..3]).unwrap();
        assert_eq!(
            out,
            r#"[{"type":"integer","value":"-9223372036854775808"},{"type":"integer","value":"9007199254740993"}]"#
        );
    }

    #[test]
    fn a_wrong_value_is_refused_not_guessed() {
        for bad in [
            r#"{"type":"integer","value":"12x"}"#,
            r#"{"type":"integer","value":"9223372036854775808"}"#,
            r#"{"type":"integer","value":1.5}"#,
            r#"{"type":"blob","base64":"!!"}"#,
            r#"{"type":"nope"}"#,
        ] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_request_type_is_refused() {
        assert!(serde_json::from_str::<PipelineRequest>(r#"{"requests":[{"type":"drop_everything"}]}"#).is_err());
        let ok: PipelineRequest = serde_json::from_str(r#"{"baton":null,"requests":[{"type":"close"}]}"#).unwrap();
        assert!(matches!(ok.requests[..], [StreamRequest::Close]));
    }
}

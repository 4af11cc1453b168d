//! The request body's rewrite: its top-level fields are read as raw JSON
//! (checked, not built into a tree), `model` is replaced by the engine's
//! served name and, for a stream, `stream_options.include_usage` is set; the
//! other fields go to the engine byte for byte. A long prompt is therefore
//! scanned once and copied, never turned into a document and written back.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A request body's top-level fields, in their order; a repeated name keeps
/// its last value (as a parsed document would) in its first place.
#[derive(Debug)]
pub struct RequestBody<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RequestBody<'a> {
    /// Reads `bytes`: 400 when it is not JSON or not an object.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        // A value of any other kind is refused as "not an object" below.
        let first = text.trim_start().as_bytes().first().copied();
        if first != Some(b'{') {
            serde_json::from_str::<&RawValue>(text)
                .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            return Err(ApiError::InvalidJson("not an object".into()));
        }
        serde_json::from_str(text).map_err(|e| ApiError::InvalidJson(e.to_string()))
    }

    /// The raw value of the field `name`.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// The string value of the field `name`, when it is a string: borrowed
    /// from the body unless it has escapes.
    pub fn string(&self, name: &str) -> Option<Cow<'a, str>> {
        let raw = self.get(name)?.get();
        if !raw.starts_with('"') {
            return None;
        }
        serde_json::from_str::<Key<'a>>(raw).ok().map(|key| key.0)
    }

    /// Whether `stream` is `true`.
    pub fn is_stream(&self) -> bool {
        self.get("stream").is_some_and(|v| v.get() == "true")
    }

    /// The prompt's fields (`messages`, `prompt`, `input`) parsed, for the
    /// prefix hash; the rest stays raw.
    pub fn prompt_fields(&self) -> Value {
        let mut object = Map::new();
        for name in ["messages", "prompt", "input"] {
            if let Some(raw) = self.get(name)
                && let Ok(value) = serde_json::from_str(raw.get())
            {
                object.insert(name.to_owned(), value);
            }
        }
        Value::Object(object)
    }

    /// The body for the engine: `model` set to `served_name`; for a stream,
    /// `stream_options.include_usage` set to true (added, or set in the
    /// client's options, or replacing options that are not an object).
    pub fn rewrite(&self, served_name: &str) -> Vec<u8> {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + served_name.len() + 48);
        out.push(b'{');
        let stream = self.is_stream();
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_string(out, key);
            out.push(b':');
            out.extend_from_slice(value);
        };
        let mut options_seen = false;
        for (key, value) in &self.fields {
            match key.as_ref() {
                "model" => {
                    let mut name = Vec::with_capacity(served_name.len() + 2);
                    write_string(&mut name, served_name);
                    field(&mut out, key, &name);
                }
                "stream_options" if stream => {
                    options_seen = true;
                    field(&mut out, key, &with_usage(value));
                }
                _ => field(&mut out, key, value.get().as_bytes()),
            }
        }
        if stream && !options_seen {
            field(&mut out, "stream_options", br#"{"include_usage":true}"#);
        }
        out.push(b'}');
        out
    }
}

/// Stream options asking for usage: the client's, with `include_usage` true.
fn with_usage(options: &RawValue) -> Vec<u8> {
    let mut object = match serde_json::from_str::<Value>(options.get()) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    object.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&object).unwrap_or_else(|_| br#"{"include_usage":true}"#.to_vec())
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

impl<'de: 'a, 'a> Deserialize<'de> for RequestBody<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Fields<'a> {
            type Value = RequestBody<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                // Room for what a request usually has, so that it is not regrown.
                let mut fields: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::with_capacity(12);
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    match fields.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => fields.push((key, value)),
                    }
                }
                Ok(RequestBody { fields })
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// A JSON string borrowed from the input when it has no escapes (serde's
/// own `Cow<str>` is always owned), copied only when it has.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Text<'a> {
            type Value = Key<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Text(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(body: &str, served: &str) -> Value {
        let parsed = RequestBody::parse(body.as_bytes()).expect("parses");
        serde_json::from_slice(&parsed.rewrite(served)).expect("the rewrite is JSON")
    }

    /// What the rewrite must equal: the old way, through a whole document.
    fn through_a_document(body: &str, served: &str) -> Value {
        let mut json: Value = serde_json::from_str(body).expect("JSON");
        let object = json.as_object_mut().expect("an object");
        object.insert("model".into(), Value::String(served.into()));
        if object.get("stream").and_then(Value::as_bool) == Some(true) {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(options) = options.as_object_mut() {
                options.insert("include_usage".into(), Value::Bool(true));
            } else {
                *options = serde_json::json!({"include_usage": true});
            }
        }
        json
    }

    #[test]
    fn the_rewrite_equals_the_documents_on_every_case() {
        for body in [
            r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"chat","stream":true,"messages":[]}"#,
            r#"{"model":"chat","stream":false,"stream_options":{"x":1}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"x":[1,2]},"model":"chat"}"#,
            r#"{"stream":true,"stream_options":null,"model":"chat"}"#,
            r#"{"stream":true,"stream_options":"yes","model":"chat"}"#,
            r#"{"model":"a","model":"b","temperature":0.5e1,"n":1}"#,
            r#" { "model" : "ch\"at\u00e9" , "prompt" : "x\ny" , "stream" : true } "#,
            r#"{"model":"chat","stream":"true"}"#,
            r#"{"model":"chat","input":["a","b"],"big":12345678901234567890123}"#,
        ] {
            assert_eq!(
                rewritten(body, "served\"name"),
                through_a_document(body, "served\"name"),
                "{body}"
            );
        }
    }

    #[test]
    fn fields_the_gateway_does_not_touch_pass_byte_for_byte() {
        let body = r#"{"model":"chat","messages":[{"content":"a\u0041 b"}],"x":1.50}"#;
        let parsed = RequestBody::parse(body.as_bytes()).expect("parses");
        let out = String::from_utf8(parsed.rewrite("m")).expect("UTF-8");
        assert_eq!(
            out,
            r#"{"model":"m","messages":[{"content":"a\u0041 b"}],"x":1.50}"#
        );
    }

    #[test]
    fn the_model_and_the_stream_flag_are_read() {
        let parsed = RequestBody::parse(br#"{"model":"a\u002fb","stream":true}"#).expect("parses");
        assert_eq!(parsed.string("model").as_deref(), Some("a/b"));
        let parsed = RequestBody::parse(br#"{"model":"plain","stream":true}"#).expect("parses");
        assert!(matches!(
            parsed.string("model"),
            Some(Cow::Borrowed("plain"))
        ));
        assert!(parsed.is_stream());
        let parsed = RequestBody::parse(br#"{"model":7,"stream":1}"#).expect("parses");
        assert_eq!(parsed.string("model"), None);
        assert!(!parsed.is_stream());
    }

    #[test]
    fn bad_bodies_are_refused_as_before() {
        for (body, says) in [
            ("", "EOF"),
            ("[1]", "not an object"),
            ("\"x\"", "not an object"),
            ("{\"model\":\"a\",}", "trailing comma"),
            ("{\"model\":\"a\",\"m\":[1,}", "expected value"),
            ("{\"model\":\"a\"} x", "trailing characters"),
            ("{\"model\":\"a\",\"m\":tru}", "expected ident"),
        ] {
            match RequestBody::parse(body.as_bytes()) {
                Err(ApiError::InvalidJson(message)) => {
                    assert!(message.contains(says), "{body}: {message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_prompt_fields_feed_the_prefix_hash_as_before() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"abcdef"}],"n":1}"#;
        let parsed = RequestBody::parse(body.as_bytes()).expect("parses");
        let whole: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            crate::route::prompt_prefix(&parsed.prompt_fields(), 4),
            crate::route::prompt_prefix(&whole, 4)
        );
    }
}

//! Local decision rules (`--rules FILE`, TOML): an ordered list, the first rule that matches a
//! blocking callback decides it. A rule `when = "always"` decides before the bus is asked; a
//! rule `when = "fallback"` only when no valid reply came in time. Conditions are JSON
//! pointers into the body, one operator each, all of which must hold; a condition on a field
//! the body does not have does not hold (except `exists = false`).

use serde_json::Value;

/// When a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Decided here; the bus is not asked.
    Always,
    /// Only when no valid reply came: timeout, no responders, bus down, invalid reply.
    Fallback,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(Value),
    Ne(Value),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Prefix(String),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    /// The JSON pointer's reference tokens, unescaped once at load (`~1` is `/`, `~0` is `~`).
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique: a metric label and a log field.
    pub name: String,
    pub command: String,
    pub when: When,
    conditions: Vec<Condition>,
    /// The ErrorCode answered: 0 allow, 1 deny, or another code valid for the command.
    pub code: i64,
}

/// A rules file that cannot be used: the line and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

impl Invalid {
    pub fn new(reason: String) -> Invalid {
        Invalid(reason)
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<toml::Table>>,
}

impl Rules {
    /// Reads and checks the rules in `text` (from `path`, for messages). `valid_code(command,
    /// code)` is `None` when the command is not blocking, else whether it takes the ErrorCode.
    pub fn parse(path: &str, text: &str, valid_code: impl Fn(&str, i64) -> Option<bool>) -> Result<Rules, Invalid> {
        let file: RulesFile = toml::from_str(text).map_err(|error| {
            let line = error.span().map_or(0, |span| line_of(text, span.start));
            Invalid(format!("{path}:{line}: {}", error.message()))
        })?;
        let mut rules: Vec<Rule> = Vec::new();
        for spanned in file.rule {
            let line = line_of(text, spanned.span().start);
            let fail = |reason: String| Invalid(format!("{path}:{line}: rule: {reason}"));
            let rule = rule(spanned.into_inner()).map_err(fail)?;
            if rules.iter().any(|other| other.name == rule.name) {
                return Err(fail(format!("the name {:?} is used twice", rule.name)));
            }
            match valid_code(&rule.command, rule.code) {
                None => {
                    return Err(fail(format!(
                        "{} is not a blocking command (use --blocking for a new one)",
                        rule.command
                    )))
                }
                Some(false) => return Err(fail(format!("ErrorCode {} is not valid for {}", rule.code, rule.command))),
                Some(true) => {}
            }
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule of `command` applies `when`: the body is parsed only then.
    pub fn has(&self, command: &str, when: When) -> bool {
        self.rules.iter().any(|rule| rule.when == when && rule.command == command)
    }

    /// The first rule of `command` that applies `when` and whose conditions hold for `body`.
    pub fn first(&self, command: &str, when: When, body: &Value) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.when == when && rule.command == command && rule.matches(body))
    }

    /// The commands the rules are about.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.command.as_str())
    }

    /// Every rule's name, for metrics that start at zero.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }
}

impl Rule {
    fn matches(&self, body: &Value) -> bool {
        self.conditions.iter().all(|condition| condition.holds(body))
    }
}

impl Condition {
    fn holds(&self, body: &Value) -> bool {
        let Some(value) = lookup(body, &self.path) else {
            return self.test == Test::Exists(false);
        };
        let number = value.as_f64();
        match &self.test {
            Test::Eq(expected) => same(value, expected),
            Test::Ne(expected) => !same(value, expected),
            Test::Lt(limit) => number.is_some_and(|n| n < *limit),
            Test::Le(limit) => number.is_some_and(|n| n <= *limit),
            Test::Gt(limit) => number.is_some_and(|n| n > *limit),
            Test::Ge(limit) => number.is_some_and(|n| n >= *limit),
            Test::In(values) => values.iter().any(|expected| same(value, expected)),
            Test::NotIn(values) => !values.iter().any(|expected| same(value, expected)),
            Test::Prefix(prefix) => value.as_str().is_some_and(|text| text.starts_with(prefix.as_str())),
            Test::Exists(exists) => *exists,
        }
    }
}

/// A JSON pointer's reference tokens, unescaped.
fn path_of(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(|token| token.replace("~1", "/").replace("~0", "~")).collect()
}

/// What a JSON pointer's tokens point at, as `Value::pointer` reads them (array indices in
/// decimal without a sign or leading zeros), without splitting and unescaping it again for each
/// body: a decision may check 50 rules.
fn lookup<'a>(body: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(body, |value, token| match value {
        Value::Object(fields) => fields.get(token),
        Value::Array(items) if !token.starts_with('+') && (token == "0" || !token.starts_with('0')) => {
            items.get(token.parse::<usize>().ok()?)
        }
        _ => None,
    })
}

/// JSON equality, with numbers compared by value (`100` and `100.0` are the same).
fn same(value: &Value, expected: &Value) -> bool {
    match (value.as_f64(), expected.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => value == expected,
    }
}

fn rule(mut table: toml::Table) -> Result<Rule, String> {
    let mut text = |key: &str| -> Result<String, String> {
        match table.remove(key) {
            Some(toml::Value::String(text)) if !text.is_empty() => Ok(text),
            Some(_) => Err(format!("{key} must be a non-empty string")),
            None => Err(format!("{key} is missing")),
        }
    };
    let name = text("name")?;
    let command = text("command")?;
    let when = match text("when")?.as_str() {
        "always" => When::Always,
        "fallback" => When::Fallback,
        other => return Err(format!("when = {other:?}: write \"always\" or \"fallback\"")),
    };
    let code = match table.remove("decision") {
        Some(toml::Value::String(text)) if text == "allow" => 0,
        Some(toml::Value::String(text)) if text == "deny" => 1,
        Some(toml::Value::Integer(code)) => code,
        Some(other) => return Err(format!("decision = {other}: write \"allow\", \"deny\" or an ErrorCode")),
        None => return Err("decision is missing".into()),
    };
    let conditions = match table.remove("if") {
        Some(toml::Value::Array(conditions)) => conditions.into_iter().map(condition).collect::<Result<_, _>>()?,
        Some(_) => return Err("if must be a list of conditions".into()),
        None => Vec::new(),
    };
    if let Some(key) = table.keys().next() {
        return Err(format!("unknown key {key} (name, command, when, if, decision)"));
    }
    Ok(Rule { name, command, when, conditions, code })
}

fn condition(value: toml::Value) -> Result<Condition, String> {
    let toml::Value::Table(mut table) = value else { return Err("a condition is a table".into()) };
    let pointer = match table.remove("field") {
        Some(toml::Value::String(pointer)) if pointer.is_empty() || pointer.starts_with('/') => pointer,
        Some(other) => return Err(format!("field = {other}: write a JSON pointer such as \"/GiftWater/Coins\"")),
        None => return Err("a condition has no field".into()),
    };
    let mut operators = table.into_iter();
    let (Some((operator, operand)), None) = (operators.next(), operators.next()) else {
        return Err(format!("the condition on {pointer} needs exactly one operator"));
    };
    let json = |operand: toml::Value| serde_json::to_value(operand).map_err(|error| error.to_string());
    let number = |operand: &toml::Value| match operand {
        toml::Value::Integer(n) => Ok(*n as f64),
        toml::Value::Float(n) => Ok(*n),
        other => Err(format!("{operator} on {pointer} needs a number, not {other}")),
    };
    let list = |operand: toml::Value| match operand {
        toml::Value::Array(values) => values.into_iter().map(json).collect::<Result<Vec<_>, _>>(),
        other => Err(format!("{operator} on {pointer} needs a list, not {other}")),
    };
    let test = match operator.as_str() {
        "eq" => Test::Eq(json(operand)?),
        "ne" => Test::Ne(json(operand)?),
        "lt" => Test::Lt(number(&operand)?),
        "le" => Test::Le(number(&operand)?),
        "gt" => Test::Gt(number(&operand)?),
        "ge" => Test::Ge(number(&operand)?),
        "in" => Test::In(list(operand)?),
        "not_in" => Test::NotIn(list(operand)?),
        "prefix" => match operand {
            toml::Value::String(prefix) => Test::Prefix(prefix),
            other => return Err(format!("prefix on {pointer} needs a string, not {other}")),
        },
        "exists" => match operand {
            toml::Value::Boolean(exists) => Test::Exists(exists),
            other => return Err(format!("exists on {pointer} needs true or false, not {other}")),
        },
        other => return Err(format!("unknown operator {other} (eq, ne, lt, le, gt, ge, in, not_in, prefix, exists)")),
    };
    Ok(Condition { path: path_of(&pointer), test })
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gift_codes(command: &str, code: i64) -> Option<bool> {
        (command == "Live.CallbackBeforeSendGift").then_some(matches!(code, 0 | 1 | 102100..=102200))
    }

    fn parse(text: &str) -> Result<Rules, Invalid> {
        Rules::parse("rules.toml", text, gift_codes)
    }

    fn one(condition: &str) -> Rules {
        parse(&format!(
            "[[rule]]\nname = \"r\"\ncommand = \"Live.CallbackBeforeSendGift\"\nwhen = \"always\"\nif = [{condition}]\ndecision = \"deny\"\n"
        ))
        .unwrap()
    }

    fn matches(condition: &str, body: Value) -> bool {
        one(condition).first("Live.CallbackBeforeSendGift", When::Always, &body).is_some()
    }

    #[test]
    fn every_operator() {
        let gift = json!({"GiftWater": {"From_Account": "spammer1", "Coins": 100, "GiftId": "rose-7"}});
        let cases = [
            (r#"{ field = "/GiftWater/From_Account", eq = "spammer1" }"#, true),
            (r#"{ field = "/GiftWater/From_Account", eq = "someone" }"#, false),
            (r#"{ field = "/GiftWater/Coins", eq = 100 }"#, true),
            (r#"{ field = "/GiftWater/Coins", eq = 100.0 }"#, true),
            (r#"{ field = "/GiftWater/From_Account", ne = "someone" }"#, true),
            (r#"{ field = "/GiftWater/Coins", lt = 100 }"#, false),
            (r#"{ field = "/GiftWater/Coins", le = 100 }"#, true),
            (r#"{ field = "/GiftWater/Coins", gt = 99.5 }"#, true),
            (r#"{ field = "/GiftWater/Coins", ge = 101 }"#, false),
            (r#"{ field = "/GiftWater/From_Account", in = ["a", "spammer1"] }"#, true),
            (r#"{ field = "/GiftWater/From_Account", not_in = ["a", "spammer1"] }"#, false),
            (r#"{ field = "/GiftWater/GiftId", prefix = "rose-" }"#, true),
            (r#"{ field = "/GiftWater/Coins", prefix = "1" }"#, false),
            (r#"{ field = "/GiftWater/Coins", exists = true }"#, true),
            (r#"{ field = "/GiftWater/Nope", exists = false }"#, true),
            (r#"{ field = "/GiftWater/From_Account", lt = 5 }"#, false),
        ];
        for (condition, expected) in cases {
            assert_eq!(matches(condition, gift.clone()), expected, "{condition}");
        }
        // A condition on a field the body does not have does not hold, whatever the operator.
        for operator in [r#"eq = 1"#, r#"ne = 1"#, r#"lt = 1"#, r#"not_in = [1]"#, r#"prefix = "x""#, "exists = true"] {
            assert!(!matches(&format!(r#"{{ field = "/Missing", {operator} }}"#), gift.clone()), "{operator}");
        }
    }

    #[test]
    fn the_first_rule_that_matches_decides_and_all_conditions_must_hold() {
        let rules = parse(
            r#"
[[rule]]
name = "banned"
command = "Live.CallbackBeforeSendGift"
when = "always"
if = [{ field = "/From", in = ["bad"] }, { field = "/Coins", gt = 10 }]
decision = "deny"

[[rule]]
name = "small"
command = "Live.CallbackBeforeSendGift"
when = "fallback"
if = [{ field = "/Coins", le = 100 }]
decision = "allow"

[[rule]]
name = "limit"
command = "Live.CallbackBeforeSendGift"
when = "always"
decision = 102150
"#,
        )
        .unwrap();
        let gift = "Live.CallbackBeforeSendGift";
        let name = |body, when| rules.first(gift, when, &body).map(|rule| rule.name.clone());
        assert_eq!(name(json!({"From": "bad", "Coins": 50}), When::Always).as_deref(), Some("banned"));
        assert_eq!(name(json!({"From": "bad", "Coins": 5}), When::Always).as_deref(), Some("limit"));
        assert_eq!(name(json!({"Coins": 50}), When::Fallback).as_deref(), Some("small"));
        assert_eq!(name(json!({"Coins": 500}), When::Fallback), None);
        assert!(rules.has(gift, When::Fallback) && !rules.has("Group.CallbackBeforeSendMsg", When::Always));
        assert_eq!(rules.first(gift, When::Always, &json!({})).unwrap().code, 102150);
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_the_reason() {
        let rule =
            |body: &str| format!("\n[[rule]]\nname = \"r\"\ncommand = \"Live.CallbackBeforeSendGift\"\n{body}\n");
        let cases = [
            (
                rule("when = \"always\"\nif = [{ field = \"/a\", like = \"x\" }]\ndecision = \"deny\""),
                "unknown operator like",
            ),
            (rule("when = \"always\"\nif = [{ field = \"a\", eq = 1 }]\ndecision = \"deny\""), "JSON pointer"),
            (rule("when = \"always\"\nif = [{ field = \"/a\", eq = 1, ne = 2 }]\ndecision = \"deny\""), "exactly one"),
            (rule("when = \"always\"\ndecision = 7"), "ErrorCode 7 is not valid"),
            (rule("when = \"sometimes\"\ndecision = \"deny\""), "always"),
            (rule("when = \"always\"\ndecision = \"maybe\""), "decision"),
            (rule("when = \"always\"\ndecision = \"deny\"\ncolour = \"red\""), "unknown key colour"),
            (
                rule("when = \"always\"\ndecision = \"deny\"") + &rule("when = \"always\"\ndecision = \"deny\""),
                "used twice",
            ),
            (
                rule("when = \"always\"\ndecision = \"deny\"").replace("Live.CallbackBeforeSendGift", "Live.X"),
                "not a blocking",
            ),
            ("[[rule]\nname = 1".to_owned(), "rules.toml:1"),
        ];
        for (text, reason) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(reason), "{reason}: {error}");
            assert!(error.starts_with("rules.toml:"), "{error}");
        }
        let error =
            parse(&(rule("when = \"always\"\ndecision = \"deny\"") + &rule("when = \"always\"\ndecision = \"deny\"")))
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("rules.toml:8:"), "the line of the second rule: {error}");
    }

    #[test]
    fn fields_are_found_as_json_pointers_find_them() {
        let body = serde_json::json!({"a": {"b/c": [10, {"~d": true}], "": 1}, "0": "zero"});
        for pointer in
            ["", "/a", "/a/b~1c", "/a/b~1c/0", "/a/b~1c/1/~0d", "/a/b~1c/01", "/a/b~1c/+1", "/a/", "/0", "/x/y"]
        {
            assert_eq!(lookup(&body, &path_of(pointer)), body.pointer(pointer), "{pointer}");
        }
    }
}

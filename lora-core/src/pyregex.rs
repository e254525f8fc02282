//! Python `re` semantics for the patterns in PEFT configs.
//!
//! `target_modules` strings, `exclude_modules` strings, `rank_pattern`/`alpha_pattern` keys,
//! `layers_pattern` and `modules_to_save` entries are Python regular expressions in PEFT, and
//! configs in the wild use what Python offers (look-around such as
//! `^(?!.*vision).*\.(q|v)_proj$`, backreferences, lazy quantifiers). fancy-regex reads that
//! syntax with Python's meaning. Where the two dialects read the same text differently, the
//! pattern is refused with an error that names the construct, so a config never selects other
//! modules here than in PEFT:
//! - character-class set operations `&&`, `--`, `~~` (literal characters in Python);
//! - `[` inside a class (a nested class in fancy-regex, a literal `[` in Python);
//! - the verbose flag `x` (Python only allows it at the very start, and its `#` comments would
//!   swallow the anchors added here).

use fancy_regex::Regex;

use crate::error::{LoraError, Result};

/// A compiled config pattern with Python's `re` meaning.
#[derive(Debug, Clone)]
pub(crate) struct PyRegex {
    re: Regex,
    field: String,
    pattern: String,
}

impl PyRegex {
    /// `re.fullmatch(pattern, text)`: the whole text must match.
    pub(crate) fn fullmatch(field: &str, pattern: &str) -> Result<Self> {
        Self::compile(field, pattern, &format!("^(?:{pattern})$"))
    }

    /// `re.match(pattern, text)`: anchored at the start only.
    pub(crate) fn prefix(field: &str, pattern: &str) -> Result<Self> {
        Self::compile(field, pattern, &format!("^(?:{pattern})"))
    }

    fn compile(field: &str, pattern: &str, anchored: &str) -> Result<Self> {
        let error = |reason: String| LoraError::Regex {
            field: field.into(),
            pattern: pattern.into(),
            reason,
        };
        // `pattern` is what Python compiles: for `re.match` callers pass PEFT's whole regex,
        // with the user's part embedded in it.
        check_dialect(pattern).map_err(|c| error(format!("{c} is read differently by Python")))?;
        let re = Regex::new(anchored).map_err(|e| error(e.to_string()))?;
        Ok(Self {
            re,
            field: field.into(),
            pattern: pattern.into(),
        })
    }

    /// Whether the pattern matches `text` (as anchored at construction).
    pub(crate) fn is_match(&self, text: &str) -> Result<bool> {
        self.re.is_match(text).map_err(|e| self.run_error(e))
    }

    /// `None` when the pattern does not match; else the text of group `name` in the first match
    /// (`Some(None)` when that group took no part in it).
    pub(crate) fn named_group<'t>(
        &self,
        text: &'t str,
        name: &str,
    ) -> Result<Option<Option<&'t str>>> {
        let caps = self.re.captures(text).map_err(|e| self.run_error(e))?;
        Ok(caps.map(|c| c.name(name).map(|m| m.as_str())))
    }

    /// A match can fail at run time (fancy-regex's backtracking limit).
    fn run_error(&self, e: fancy_regex::Error) -> LoraError {
        LoraError::Regex {
            field: self.field.clone(),
            pattern: self.pattern.clone(),
            reason: e.to_string(),
        }
    }
}

/// Finds the first construct that Python's `re` and fancy-regex read differently.
fn check_dialect(pattern: &str) -> std::result::Result<(), &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    // Index of the first member of the open character class, if one is open.
    let mut class: Option<usize> = None;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\\' {
            match next {
                Some('N') => return Err("the named-character escape `\\N`"),
                Some('0') => return Err("an octal escape"),
                Some(d)
                    if d.is_ascii_digit()
                        && chars.get(i + 2).is_some_and(char::is_ascii_digit)
                        && chars.get(i + 3).is_some_and(char::is_ascii_digit) =>
                {
                    return Err("an octal escape");
                }
                _ => {}
            }
            i += 2;
            continue;
        }
        match class {
            // A `]` as a class's first member is a literal in both dialects.
            Some(first) if c == ']' && i > first => class = None,
            Some(_) if c == '[' => return Err("`[` inside a character class"),
            Some(_) if matches!(c, '&' | '-' | '~') && next == Some(c) => {
                return Err("a character-class set operation (`&&`, `--` or `~~`)");
            }
            Some(_) => {}
            None if c == '[' => class = Some(i + 1 + usize::from(next == Some('^'))),
            None if c == '(' && next == Some('?') => {
                let flags: Vec<char> = chars[i + 2..]
                    .iter()
                    .copied()
                    .take_while(|f| f.is_ascii_alphabetic() || *f == '-')
                    .collect();
                if flags.contains(&'x') {
                    return Err("the verbose flag `x`");
                }
                // `(?i)` applies to the whole pattern: Python allows it only at the very start
                // (PEFT embeds pattern keys in a larger regex, so there it is an error).
                let global = !flags.is_empty() && chars.get(i + 2 + flags.len()) == Some(&')');
                if global && i > 0 {
                    return Err("a global flag group not at the start of the pattern");
                }
            }
            None => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(p: &str, text: &str) -> Result<bool> {
        PyRegex::fullmatch("target_modules", p)?.is_match(text)
    }

    #[test]
    fn look_around_has_pythons_meaning() {
        let p = r"^(?!.*vision).*\.(q|v)_proj$";
        assert!(full(p, "model.layers.0.q_proj").unwrap());
        assert!(!full(p, "vision.layers.0.q_proj").unwrap());
        assert!(!full(r".*(?<!lm_)head", "lm_head").unwrap());
        assert!(full(r"(?P<x>a)(?P=x)", "aa").unwrap());
    }

    #[test]
    fn constructs_read_differently_are_refused_by_name() {
        for (p, word) in [
            ("[a&&b]", "set operation"),
            ("[a--b]", "set operation"),
            ("[[]", "inside a character class"),
            ("(?x)a b", "verbose"),
        ] {
            let e = full(p, "a").unwrap_err().to_string();
            assert!(e.contains(word) && e.contains(p), "{p}: {e}");
        }
        // Literal `]` first in a class, escaped brackets and `-` ranges are the same in both.
        assert!(full(r"[]a]", "]").unwrap());
        assert!(full(r"[\[x]", "[").unwrap());
        assert!(full(r"[a-c]", "b").unwrap());
    }
}

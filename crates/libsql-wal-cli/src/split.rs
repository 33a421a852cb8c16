//! Splits a SQL script into statements where `sqlite3` does, in one forward pass over the
//! bytes (safe code, no FFI).
//!
//! `sqlite3` ends a statement at a `;` once `sqlite3_complete` calls the text so far
//! complete. Asking it again on every growing prefix is quadratic (an 80,000-value INSERT
//! whose strings hold `;` took 29 s), so this module follows the same rules itself:
//!
//! - a `;` counts only outside string literals (`'...'`), quoted identifiers (`"..."`,
//!   `[...]`, `` `...` ``) and comments (`-- ...` to the end of the line, `/* ... */`);
//! - inside `CREATE [TEMP|TEMPORARY] TRIGGER` (also after a leading `EXPLAIN`), a `;` ends
//!   the statement only when it follows `; END`, since the trigger's body holds `;`s;
//! - something left open at the end of the script (a string, a comment, a trigger body)
//!   completes nothing: the rest is handed to SQLite as is, which reports it.
//!
//! The unit tests below compare this with `sqlite3_complete` on tricky and random scripts.

/// A token, as far as the completeness rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Semi,
    /// Whitespace or a comment.
    Space,
    Explain,
    Create,
    /// `TEMP` or `TEMPORARY`.
    Temp,
    Trigger,
    End,
    /// Anything else: identifiers, keywords, literals, operators (and what is left open).
    Other,
}

/// Where the current statement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Only whitespace and comments so far.
    Empty,
    /// An ordinary statement: its next `;` ends it.
    Normal,
    /// After a leading `EXPLAIN` (and whatever follows it up to a `CREATE`).
    Explain,
    /// After a leading `CREATE` (and `TEMP`): `TRIGGER` next starts a trigger.
    Create,
    /// In a trigger's text: a `;` does not end it.
    Trigger,
    /// In a trigger, just after a `;`.
    TriggerSemi,
    /// In a trigger, after `; END`: the next `;` ends it.
    TriggerEnd,
}

impl State {
    /// The state after `token`, or `None` when the token is a `;` ending the statement.
    fn next(self, token: Token) -> Option<State> {
        use State::*;
        Some(match (self, token) {
            (_, Token::Space) => self,
            (Trigger | TriggerSemi, Token::Semi) => TriggerSemi,
            (_, Token::Semi) => return None,
            (TriggerSemi, Token::End) => TriggerEnd,
            (Trigger | TriggerSemi | TriggerEnd, _) => Trigger,
            (Empty, Token::Explain) => Explain,
            (Empty | Explain, Token::Create) => Create,
            (Explain, Token::Other) => Explain,
            (Create, Token::Temp) => Create,
            (Create, Token::Trigger) => Trigger,
            (Empty | Normal | Explain | Create, _) => Normal,
        })
    }
}

/// The statements of `sql`, each with its `;`, in order; a trailing part without one is the
/// last statement unless it holds only whitespace and comments. Slices of `sql`: together
/// with the whitespace and comments dropped at the end they are the whole script.
pub fn statements(sql: &[u8]) -> Vec<&[u8]> {
    let mut result = Vec::new();
    let (mut start, mut pos, mut state) = (0, 0, State::Empty);
    while pos < sql.len() {
        let (token, end) = token_at(sql, pos);
        #[cfg(test)]
        tests::count_consumed(end - pos);
        pos = end;
        match state.next(token) {
            Some(next) => state = next,
            None => {
                result.push(&sql[start..pos]);
                (start, state) = (pos, State::Empty);
            }
        }
    }
    if state != State::Empty {
        result.push(&sql[start..]);
    }
    result
}

/// The token starting at `pos` (< `sql.len()`) and where it ends. What is left open (a
/// string, a quoted name, a block comment) runs to the end of the script.
fn token_at(sql: &[u8], pos: usize) -> (Token, usize) {
    let rest = &sql[pos + 1..];
    let through = |found: Option<usize>, close_len: usize| found.map_or(sql.len(), |i| pos + 1 + i + close_len);
    match sql[pos] {
        b';' => (Token::Semi, pos + 1),
        // The whitespace `sqlite3_complete` knows (not \v).
        b' ' | b'\t' | b'\n' | b'\r' | 0x0c => (Token::Space, pos + 1),
        b'-' if rest.first() == Some(&b'-') => (Token::Space, through(find_byte(rest, b'\n'), 1)),
        b'/' if rest.first() == Some(&b'*') => match find_pair(&rest[1..], b'*', b'/') {
            Some(i) => (Token::Space, pos + 2 + i + 2),
            None => (Token::Other, sql.len()),
        },
        b'[' => (Token::Other, through(find_byte(rest, b']'), 1)),
        quote @ (b'\'' | b'"' | b'`') => (Token::Other, through(find_byte(rest, quote), 1)),
        b if is_word_byte(b) => {
            let len = 1 + rest.iter().take_while(|&&b| is_word_byte(b)).count();
            (keyword(&sql[pos..pos + len]), pos + len)
        }
        _ => (Token::Other, pos + 1),
    }
}

/// Letters, digits, `_`, `$` and every byte of a non-ASCII character: what makes up an
/// identifier or keyword for `sqlite3_complete`.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn keyword(word: &[u8]) -> Token {
    let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
    if is("create") {
        Token::Create
    } else if is("temp") || is("temporary") {
        Token::Temp
    } else if is("trigger") {
        Token::Trigger
    } else if is("end") {
        Token::End
    } else if is("explain") {
        Token::Explain
    } else {
        Token::Other
    }
}

fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Where `first` followed by `second` starts in `haystack`.
fn find_pair(haystack: &[u8], first: u8, second: u8) -> Option<usize> {
    haystack.windows(2).position(|w| w[0] == first && w[1] == second)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::ffi::CString;

    use libsql_sys::rusqlite::ffi;

    use super::statements;

    thread_local! {
        /// Bytes consumed by tokens on this thread, to check the scan is a single pass.
        static CONSUMED: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn count_consumed(n: usize) {
        CONSUMED.with(|c| c.set(c.get() + n));
    }

    /// The splitting `sqlite3` does (and this CLI did): at each `;` where the text since the
    /// last split is complete according to `sqlite3_complete`. Quadratic: small inputs only.
    fn reference(sql: &str) -> Vec<&[u8]> {
        let mut result = Vec::new();
        let mut start = 0;
        for (i, c) in sql.char_indices() {
            if c != ';' {
                continue;
            }
            let candidate = CString::new(&sql[start..=i]).expect("no NUL in test scripts");
            // SAFETY: `candidate` is a valid NUL-terminated string that outlives the call;
            // sqlite3_complete only reads it.
            if unsafe { ffi::sqlite3_complete(candidate.as_ptr()) } != 0 {
                result.push(&sql.as_bytes()[start..=i]);
                start = i + 1;
            }
        }
        let rest = &sql.as_bytes()[start..];
        if !no_token(rest) {
            result.push(rest);
        }
        result
    }

    /// Whether `rest` holds only whitespace and closed comments (then it is no statement;
    /// the old splitter trimmed Unicode whitespace instead, which `sqlite3` does not).
    fn no_token(rest: &[u8]) -> bool {
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
                b'-' if rest.get(i + 1) == Some(&b'-') => {
                    i = rest[i..].iter().position(|&b| b == b'\n').map_or(rest.len(), |p| i + p + 1)
                }
                b'/' if rest.get(i + 1) == Some(&b'*') => match rest[i + 2..].windows(2).position(|w| w == b"*/") {
                    Some(p) => i += 2 + p + 2,
                    None => return false,
                },
                _ => return false,
            }
        }
        true
    }

    fn check(sql: &str) {
        assert_eq!(
            statements(sql.as_bytes()).iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>(),
            reference(sql).iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>(),
            "script: {sql:?}"
        );
    }

    #[test]
    fn agrees_with_sqlite3_complete_on_tricky_scripts() {
        for sql in [
            "",
            ";",
            "  ;  ; select 1;select 2",
            "select 1; select 2;\n",
            "select 'a;b'; select \"c;d\"; select [e;f]; select `g;h`;",
            "select 'it''s; here'; select 2;",
            "select 1 -- a; comment\n; select 2; -- trailing; comment",
            "select 1 /* a; comment */; select /* ; */ 2;",
            "select 1; /* unterminated; comment",
            "select 'unterminated; string",
            "select [unterminated; name",
            "CREATE TRIGGER t AFTER INSERT ON x BEGIN INSERT INTO y VALUES(1); UPDATE y SET a=2; END; select 3;",
            "create temp trigger t after insert on x begin select 1; end; select 2;",
            "CREATE TEMPORARY TRIGGER t AFTER INSERT ON x BEGIN SELECT 'END;'; END ; SELECT 4;",
            "create trigger t after insert on x begin select case when 1 then 2 end; select 3; end; select 5;",
            "create trigger t after insert on x begin select 1; end select; end; select 6;",
            "create trigger t after insert on x begin select 1; /* end; */ end; select 7;",
            "create trigger t after insert on x begin select 1; -- end;\n end; select 8;",
            "create trigger t after insert on x begin select 1;end;select 9;",
            "explain create trigger t after insert on x begin select 1; end; select 10;",
            "explain query plan create trigger t after insert on x begin select 1; end; select 11;",
            "create table trigger(a); select 12;",
            "create temp table t(a); create trigger; select 13;",
            "select 1 as trigger; create view v as select 1; end; select 14;",
            "create trigger t after insert on x begin select 'é;ü'; select \"名;前\"; end; select 'ß';",
            "select 'é'; select 名前 from テーブル; select 15",
            "create trigger endx after insert on x begin select endx; end; select 16;",
            "create trigger t after insert on x begin select 1; end",
            "create trigger t after insert on x begin select 1; end; ; select 17;",
            "select $end; select _end; select end_; select 18;",
            "CrEaTe TeMp TrIgGeR t AFTER INSERT ON x BEGIN SELECT 1; EnD; SELECT 19;",
            "select 1;\x0b;select 20;",
            "select 1;\x0b",
            "create\x0btrigger t after insert on x begin select 1; end; select 20;",
            "explain $create trigger t after insert on x begin select 1; end; select 20;",
            "explain 1create trigger t after insert on x begin select 1; end; select 20;",
            "explain écreate trigger t after insert on x begin select 1; end; select 20;",
            "select 1 - -1; select 2/ *3; select 4 /* */ ; select -/**/-5;",
            "select x'00;ff'; select 21;",
            "create trigger t after insert on x begin select 1; end;\n-- done",
            "select 1;   \n\t  ",
            "select 1; /* closed */ -- and a line",
        ] {
            check(sql);
        }
    }

    #[test]
    fn agrees_with_sqlite3_complete_on_random_scripts() {
        // Mostly the words and closed literals the rules care about, so that triggers,
        // EXPLAIN and comments meet `;` often; now and then something left open.
        const COMMON: &[&str] = &[
            ";",
            ";",
            ";",
            "create",
            "CREATE",
            "temp",
            "temporary",
            "trigger",
            "TRIGGER",
            "begin",
            "end",
            "END",
            "explain",
            "case",
            "select",
            "x",
            "$",
            "$create",
            "1create",
            "écreate",
            "endx",
            "end$",
            "'a;b'",
            "\"c;d\"",
            "[e;f]",
            "`g;h`",
            "'END;'",
            "/* ; end; */",
            "-- ; end;\n",
            "\n",
            "\t",
            "\x0b",
            "(",
            ")",
        ];
        const RARE: &[&str] = &["'", "\"", "[", "]", "`", "--", "/*", "*/", "-", "/", "*", "名"];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..30_000 {
            let n = rng.usize(0..40);
            let mut sql = String::new();
            for _ in 0..n {
                let pieces = if rng.u8(..) < 12 { RARE } else { COMMON };
                sql.push_str(pieces[rng.usize(..pieces.len())]);
                if rng.u8(..) < 200 {
                    sql.push(' ');
                }
            }
            check(&sql);
        }
    }

    /// The scan is one pass: each byte is consumed by exactly one token, found by searching
    /// forward only. (The previous splitter handed every growing prefix to
    /// `sqlite3_complete`: about n²/2 bytes for this script; it took 29 s.)
    #[test]
    fn one_pass_over_a_large_insert_whose_strings_hold_semicolons() {
        let mut sql = String::from("CREATE TABLE t(a);\nINSERT INTO t VALUES ");
        for i in 0..80_000 {
            sql.push_str(if i == 0 { "" } else { "," });
            sql.push_str(&format!("('row {i}; with a ; or two;')"));
        }
        sql.push_str(";\nSELECT count(*) FROM t;\n");
        CONSUMED.with(|c| c.set(0));
        let split = statements(sql.as_bytes());
        assert_eq!(split.len(), 3);
        assert_eq!(CONSUMED.with(Cell::get), sql.len(), "every byte consumed once");
    }
}

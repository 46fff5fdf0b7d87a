//! Named parameters (`:name`) in an export's SQL, rewritten to the driver's numbered ones.
//!
//! Values are always bound, never spliced: this module only finds where the names are,
//! skipping string literals, quoted identifiers, comments, dollar quotes and `::` casts.

/// How the database numbers its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `$1` (PostgreSQL).
    Dollar,
    /// `?1` (SQLite).
    Question,
}

/// Why a query's parameters could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unterminated {what} starting on line {line}")]
    Unterminated { what: &'static str, line: usize },
    #[error(
        "numbered parameter at byte {at}: name it instead (`:name`), its value then comes from the query string"
    )]
    Numbered { at: usize },
}

/// A query with its named parameters found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedQuery {
    /// Text between parameters; one more piece than `uses`.
    pieces: Vec<String>,
    /// For each parameter occurrence, its index in `names`.
    uses: Vec<usize>,
    /// Distinct names, in order of first appearance; name `i` is parameter `i + 1`.
    names: Vec<String>,
}

impl NamedQuery {
    /// Finds the `:name` parameters of `sql`; fails on an unterminated quote or comment
    /// and on numbered parameters (`$1`), which would collide with the rewritten ones.
    pub fn parse(sql: &str) -> Result<Self, QueryError> {
        let b = sql.as_bytes();
        let mut query = NamedQuery {
            pieces: Vec::new(),
            uses: Vec::new(),
            names: Vec::new(),
        };
        let mut piece_start = 0;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\'' => {
                    let escapes =
                        i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !is_ident(b[i - 2]));
                    i = skip_quoted(b, i, b'\'', escapes)
                        .ok_or_else(|| unterminated(sql, i, "string literal"))?;
                }
                b'"' => {
                    i = skip_quoted(b, i, b'"', false)
                        .ok_or_else(|| unterminated(sql, i, "quoted identifier"))?
                }
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    i = b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(b.len(), |p| i + p + 1);
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i = sql[i + 2..]
                        .find("*/")
                        .map(|p| i + 2 + p + 2)
                        .ok_or_else(|| unterminated(sql, i, "comment"))?;
                }
                b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    return Err(QueryError::Numbered { at: i });
                }
                b'$' if i == 0 || !is_ident(b[i - 1]) => {
                    i = skip_dollar_quote(sql, i)
                        .ok_or_else(|| unterminated(sql, i, "dollar-quoted string"))?;
                }
                b':' if b.get(i + 1) == Some(&b':') => i += 2,
                b':' if b
                    .get(i + 1)
                    .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_') =>
                {
                    let end = b[i + 1..]
                        .iter()
                        .position(|&c| !is_ident(c))
                        .map_or(b.len(), |p| i + 1 + p);
                    let name = &sql[i + 1..end];
                    let index = match query.names.iter().position(|n| n == name) {
                        Some(k) => k,
                        None => {
                            query.names.push(name.to_string());
                            query.names.len() - 1
                        }
                    };
                    query.pieces.push(sql[piece_start..i].to_string());
                    query.uses.push(index);
                    piece_start = end;
                    i = end;
                }
                _ => i += 1,
            }
        }
        query.pieces.push(sql[piece_start..].to_string());
        Ok(query)
    }

    /// The parameter names, in the order of their numbers.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The query with every `:name` replaced by its number in `style`.
    pub fn to_sql(&self, style: Placeholder) -> String {
        let mut sql = self.pieces[0].clone();
        for (index, piece) in self.uses.iter().zip(&self.pieces[1..]) {
            sql.push(match style {
                Placeholder::Dollar => '$',
                Placeholder::Question => '?',
            });
            sql.push_str(&(index + 1).to_string());
            sql.push_str(piece);
        }
        sql
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn unterminated(sql: &str, at: usize, what: &'static str) -> QueryError {
    let line = sql[..at].matches('\n').count() + 1;
    QueryError::Unterminated { what, line }
}

/// The index just past the quote closing the one at `start` (a doubled quote is part
/// of the text; with `escapes`, so is a backslash-escaped one).
fn skip_quoted(b: &[u8], start: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            c if c == quote && b.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// PostgreSQL's `$tag$ … $tag$`: the index past the closing tag; `$` not starting a
/// tag (`$` followed by something that is not a tag) is passed over.
fn skip_dollar_quote(sql: &str, start: usize) -> Option<usize> {
    let rest = &sql.as_bytes()[start + 1..];
    let tag_len = rest
        .iter()
        .position(|&c| !is_ident(c))
        .unwrap_or(rest.len());
    if rest.get(tag_len) != Some(&b'$') {
        return Some(start + 1);
    }
    let tag = &sql[start..start + tag_len + 2];
    let body = start + tag.len();
    sql[body..].find(tag).map(|p| body + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_numbers_and_repeat() {
        let q = NamedQuery::parse("SELECT * FROM t WHERE a >= :min AND (b < :max OR a = :min)")
            .unwrap();
        assert_eq!(q.names(), ["min", "max"]);
        assert_eq!(
            q.to_sql(Placeholder::Dollar),
            "SELECT * FROM t WHERE a >= $1 AND (b < $2 OR a = $1)"
        );
        assert_eq!(
            q.to_sql(Placeholder::Question),
            "SELECT * FROM t WHERE a >= ?1 AND (b < ?2 OR a = ?1)"
        );
    }

    #[test]
    fn quotes_comments_and_casts_are_not_parameters() {
        let sql = "SELECT ':no', \"a:b\", E'it\\'s :no', x::text, $$ :no $$, $t$ :no $t$ \
                   -- :no\n /* :no */ FROM t WHERE y = :yes";
        let q = NamedQuery::parse(sql).unwrap();
        assert_eq!(q.names(), ["yes"]);
        assert!(q.to_sql(Placeholder::Dollar).ends_with("WHERE y = $1"));
        assert!(q.to_sql(Placeholder::Dollar).starts_with(&sql[..40]));
    }

    #[test]
    fn doubled_quotes_stay_inside_the_literal() {
        let q = NamedQuery::parse("SELECT 'it''s :no' AS a, :p").unwrap();
        assert_eq!(q.names(), ["p"]);
    }

    #[test]
    fn bad_queries_are_explained() {
        let e = NamedQuery::parse("SELECT 1\nWHERE a = 'open")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unterminated string literal") && e.contains("line 2"),
            "{e}"
        );
        let e = NamedQuery::parse("SELECT * FROM t WHERE a = $1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("numbered parameter"), "{e}");
        assert!(NamedQuery::parse("SELECT /* open").is_err());
    }

    #[test]
    fn no_parameters_is_the_query_itself() {
        let q = NamedQuery::parse("SELECT 1").unwrap();
        assert!(q.names().is_empty());
        assert_eq!(q.to_sql(Placeholder::Question), "SELECT 1");
    }
}

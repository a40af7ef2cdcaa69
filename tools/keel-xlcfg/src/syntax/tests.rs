use super::*;
use crate::testutil::Rng;

fn parse(text: &str) -> Config {
    Config::parse("t.cfg", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> Diagnostic {
    Config::parse("t.cfg", text.as_bytes()).expect_err("should fail")
}

fn atom<'a>(c: &'a Config, key: &str) -> &'a str {
    c.get(key).unwrap().value.as_atom().unwrap()
}

fn atoms(value: &Value) -> Vec<&str> {
    value
        .as_list()
        .unwrap()
        .iter()
        .map(|v| v.as_atom().unwrap())
        .collect()
}

#[test]
fn strings_numbers_and_order() {
    let c = parse("name = \"web\"\nmemory=512\nkernel='/k'\n");
    let keys: Vec<&str> = c.settings().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["name", "memory", "kernel"]);
    assert_eq!(
        c.get("name").unwrap().value.kind,
        ValueKind::String("web".into())
    );
    assert_eq!(
        c.get("memory").unwrap().value.kind,
        ValueKind::Number("512".into())
    );
    assert_eq!(atom(&c, "kernel"), "/k");
    assert_eq!(c.get("kernel").unwrap().location.line, 3);
}

#[test]
fn keys_may_hold_dots_underscores_digits() {
    let c = parse("a.b_c9 = 1");
    assert_eq!(atom(&c, "a.b_c9"), "1");
}

#[test]
fn empty_and_comment_only_files() {
    assert!(parse("").settings().is_empty());
    assert!(parse("\n\n# nothing\n   \t\n").settings().is_empty());
}

#[test]
fn comments_anywhere_a_newline_may_be() {
    let c = parse("# head\nname = \"a\" # trailing\ndisk = [ # open\n 'x', # item\n]\n# tail");
    assert_eq!(atom(&c, "name"), "a");
    assert_eq!(atoms(&c.get("disk").unwrap().value), ["x"]);
}

#[test]
fn hash_inside_a_string_is_not_a_comment() {
    assert_eq!(atom(&parse("extra = \"a # b\""), "extra"), "a # b");
}

#[test]
fn semicolons_separate_settings() {
    let c = parse("name=\"h0\"; type=\"hvm\";;\n;\nmemory=1;");
    assert_eq!(atom(&c, "name"), "h0");
    assert_eq!(atom(&c, "type"), "hvm");
    assert_eq!(atom(&c, "memory"), "1");
}

#[test]
fn last_setting_needs_no_newline() {
    assert_eq!(atom(&parse("memory = 5"), "memory"), "5");
}

#[test]
fn multi_line_lists_with_trailing_commas() {
    let c = parse("disk = [\n  'a',\n\n  \"b\" ,\n]\nvif=['x',]\nempty = []\nempty2 = [\n\n]");
    let disk = &c.get("disk").unwrap().value;
    assert_eq!(atoms(disk), ["a", "b"]);
    assert_eq!(disk.as_list().unwrap()[1].location.line, 4);
    assert_eq!(atoms(&c.get("vif").unwrap().value), ["x"]);
    assert!(c.get("empty").unwrap().value.as_list().unwrap().is_empty());
    assert!(c.get("empty2").unwrap().value.as_list().unwrap().is_empty());
}

#[test]
fn nested_and_mixed_lists() {
    let c = parse("vnuma = [ [\"pnode=0\", \"size=512\"], 1, 'x' ]");
    let items = c.get("vnuma").unwrap().value.as_list().unwrap();
    assert_eq!(atoms(&items[0]), ["pnode=0", "size=512"]);
    assert_eq!(items[1].kind, ValueKind::Number("1".into()));
}

#[test]
fn escapes() {
    let c = parse(r#"a = "q\"s\'b\\n\n t\t r\r a\a b\b f\f v\v" "#);
    assert_eq!(atom(&c, "a"), "q\"s'b\\n\n t\t r\r a\x07 b\x08 f\x0c v\x0b");
    assert_eq!(atom(&parse(r"b = 'it\'s'"), "b"), "it's");
    assert_eq!(atom(&parse("c = 'say \"hi\"'"), "c"), "say \"hi\"");
}

#[test]
fn numeric_and_unknown_escapes_are_refused() {
    for bad in [r#"a = "\x41""#, r#"a = "\101""#, r#"a = "\q""#] {
        let e = error(bad);
        assert_eq!(e.line, Some(1), "{bad}");
    }
    assert!(error(r#"a = "\x41""#).message.contains("numeric escapes"));
    assert!(error(r#"a = "\q""#).message.contains("after backslash"));
}

#[test]
fn unterminated_strings_name_their_line() {
    let e = error("name = \"a\"\nkernel = \"/boot\n");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("unterminated string"), "{e}");
    assert_eq!(
        e.to_string().split(':').take(2).collect::<Vec<_>>(),
        ["t.cfg", "2"]
    );
    assert!(error("a = 'x").message.contains("unterminated"));
    assert!(error("a = 'x\\\n'").message.contains("unterminated"));
}

#[test]
fn bad_lists_name_their_line() {
    let e = error("disk = [ 'a',\n 'b'\n 'c' ]");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("expected `,' or `]'"), "{e}");
    let e = error("x = 1\ndisk = [ 'a',\n");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("no closing"), "{e}");
    assert!(error("disk = [ , ]").message.contains("expected a value"));
    assert!(error("disk = [ 'a',, 'b' ]")
        .message
        .contains("expected a value"));
    assert!(error("disk = ]").message.contains("expected a value"));
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        "a = {}{}",
        "[".repeat(MAX_LIST_DEPTH + 1),
        "]".repeat(MAX_LIST_DEPTH + 1)
    );
    assert!(error(&deep).message.contains("nested"));
    let ok = format!(
        "a = {}{}",
        "[".repeat(MAX_LIST_DEPTH),
        "]".repeat(MAX_LIST_DEPTH)
    );
    parse(&ok);
}

#[test]
fn statement_errors() {
    assert!(error("name \"x\"").message.contains("expected `='"));
    assert!(error("name =\n\"x\"").message.contains("expected a value"));
    assert!(error("a = 1 b = 2")
        .message
        .contains("after the value of `a'"));
    assert!(error("= 1").message.contains("expected a setting"));
    assert!(error("'a' = 1").message.contains("expected a setting"));
    assert!(error("name = web").message.contains("bare word `web'"));
}

#[test]
fn lexical_errors() {
    assert!(error("Name = \"x\"").message.contains("lowercase"));
    assert!(error("a = 1\r\n").message.contains("carriage return"));
    assert!(error("a = (1)").message.contains("Python"));
    assert!(error("a = 1.5").message.contains("Python"));
    assert!(error("a = @").message.contains("lexical error"));
    let e = error("x = 1\n\ny = $foo bar");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("near `$foo'"), "{e}");
}

#[test]
fn non_utf8_is_refused_with_its_line() {
    let e = Config::parse("t.cfg", b"a = 1\nb = \"\xff\"\n").unwrap_err();
    assert_eq!(e.line, Some(2));
}

#[test]
fn later_assignment_wins_with_a_warning() {
    let c = parse("memory = 1\nname = \"a\"\nmemory = 2\n");
    assert_eq!(atom(&c, "memory"), "2");
    assert_eq!(c.settings()[0].key, "memory");
    assert_eq!(c.warnings().len(), 1);
    assert_eq!(c.warnings()[0].line, Some(3));
    assert!(c.warnings()[0].message.contains("before on line 1"));
}

#[test]
fn append_concatenates_strings_and_lists() {
    let c = parse("extra = \"a\"\nextra += \" b\"\ndisk = ['x']\ndisk += ['y', 'z']\nnew += 'n'");
    assert_eq!(atom(&c, "extra"), "a b");
    assert!(c.get("extra").unwrap().appended);
    assert_eq!(atoms(&c.get("disk").unwrap().value), ["x", "y", "z"]);
    assert_eq!(atom(&c, "new"), "n");
    assert!(c.warnings().is_empty());
}

#[test]
fn append_refuses_mixing_lists_and_strings() {
    let e = error("disk = ['x']\ndisk += 'y'");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("can't add"));
}

#[test]
fn numbers_read_as_strtol_base_0() {
    assert_eq!(parse_number("512"), Ok(512));
    assert_eq!(parse_number("0x200"), Ok(512));
    assert_eq!(parse_number("0X1f"), Ok(31));
    assert_eq!(parse_number("010"), Ok(8));
    assert_eq!(parse_number("0"), Ok(0));
    assert_eq!(parse_number(" -5"), Ok(-5));
    assert_eq!(parse_number("+7"), Ok(7));
    assert_eq!(parse_number("-9223372036854775808"), Ok(i64::MIN));
    assert!(parse_number("9223372036854775808").is_err());
    for bad in ["", "08", "12abc", "0x", "1 ", "x1", "- 1"] {
        assert!(parse_number(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn typed_getters_name_the_key() {
    let c = parse("memory = 'lots'\ndisk = 'x'\nname = ['a']\nm = 0x10\nq = 1\nq += 2");
    assert!(c.number("memory").unwrap_err().message.contains("`memory'"));
    assert!(c
        .list("disk")
        .unwrap_err()
        .message
        .contains("`disk' is a single value"));
    assert!(c
        .atom("name")
        .unwrap_err()
        .message
        .contains("`name' is a list"));
    assert_eq!(c.number("m").unwrap().unwrap().0, 16);
    assert!(c.number("q").unwrap_err().message.contains("+="));
    assert!(c.number("absent").unwrap().is_none());
    assert!(c.list("absent").unwrap().is_none());
}

#[test]
fn overrides_apply_after_the_file() {
    let mut c = parse("name = \"a\"\nmemory = 512\nextra = \"quiet\"\n");
    c.apply_override("memory=1024").unwrap();
    c.apply_override("extra += \" debug\"").unwrap();
    c.apply_override("vcpus=2; maxvcpus=4").unwrap();
    c.apply_override("memory=2048").unwrap();
    assert_eq!(atom(&c, "memory"), "2048");
    assert_eq!(atom(&c, "extra"), "quiet debug");
    assert_eq!(atom(&c, "maxvcpus"), "4");
    assert!(c.warnings().is_empty(), "overrides are meant to replace");
    let loc = &c.get("memory").unwrap().location;
    assert_eq!(&*loc.source, "command line `memory=2048'");
}

#[test]
fn a_failed_override_changes_nothing() {
    let mut c = parse("disk = ['a']\n");
    let e = c.apply_override("name=web").unwrap_err();
    assert!(e.message.contains("quotes"), "{e}");
    assert!(
        e.to_string().starts_with("command line `name=web':1:"),
        "{e}"
    );
    assert!(c.apply_override("memory=1; disk += 'b'").is_err());
    assert!(c.get("memory").is_none());
    assert_eq!(c.settings().len(), 1);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Config::parse("fuzz", &bytes);
    }
}

#[test]
fn random_token_soup_never_panics() {
    const PIECES: &[&str] = &[
        "a", "disk", "=", "+=", "[", "]", ",", ";", "\n", "#c\n", "'s'", "\"d\"", "1", "0x", " ",
        "\\", "'", "\"", "\t", "\r", "'\\n'", "\"\\x4\"", "Z", "(", "é",
    ];
    let mut rng = Rng(12345);
    for _ in 0..20_000 {
        let n = rng.below(24);
        let text: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        if let Ok(mut c) = Config::parse("fuzz", text.as_bytes()) {
            let _ = c.apply_override(&text);
            for s in c.settings().to_vec() {
                let _ = (c.number(&s.key), c.list(&s.key), c.atom(&s.key));
            }
        }
    }
}

//! The SAFETY-comment rule for the kernel programs: every use of `unsafe` in `agent-ebpf/src`
//! (a block, an `unsafe fn` / `unsafe impl` / `unsafe extern`, an unsafe attribute such as
//! `#[unsafe(no_mangle)]`) has a `// SAFETY:` comment directly above its line, in the run of
//! `//` lines that ends there (attribute lines in between are skipped). Clippy's
//! `undocumented_unsafe_blocks` (denied in the workspace) says the same, but the eBPF crate is
//! only linted when clippy is run for its target by hand; this check needs no toolchain, and
//! runs with the unit tests.

use std::path::Path;

use anyhow::{Context as _, bail};

/// The code of a line: without its `//` comment, and with string and character literals
/// blanked (a line-based approximation: literals spanning lines are not followed).
fn code_part(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut code = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => break,
            '"' => {
                // Skip to the closing quote.
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                code.push_str("\"\"");
            }
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                // An escaped character literal: skip the escape, then to the closing quote.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                code.push_str("' '");
            }
            '\'' if chars.get(i + 2) == Some(&'\'') => {
                i += 2;
                code.push_str("' '");
            }
            c => code.push(c),
        }
        i += 1;
    }
    code
}

/// Whether the code has the keyword `unsafe` (not as part of an identifier).
fn has_unsafe(code: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices("unsafe").any(|(i, _)| {
        !code[..i].chars().next_back().is_some_and(ident)
            && !code[i + "unsafe".len()..].chars().next().is_some_and(ident)
    })
}

/// Line numbers (1-based) of the uses of `unsafe` in `source` with no `// SAFETY:` comment
/// directly above.
pub fn undocumented(source: &str) -> Vec<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut missing = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if !has_unsafe(&code_part(line)) {
            continue;
        }
        let mut above = lines[..n].iter().rev().map(|l| l.trim_start());
        let mut documented = false;
        for l in above.by_ref() {
            if l.starts_with("#[") {
                continue;
            }
            if l.starts_with("//") && !l.starts_with("///") && !l.starts_with("//!") {
                documented |= l.starts_with("// SAFETY:");
                continue;
            }
            break;
        }
        if !documented {
            missing.push(n + 1);
        }
    }
    missing
}

/// Checks every `.rs` file directly in `dir`; the error lists each undocumented `unsafe`.
pub fn check(dir: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        missing.extend(
            undocumented(&source)
                .into_iter()
                .map(|n| format!("{}:{n}", path.display())),
        );
    }
    if files == 0 {
        bail!("no Rust sources in {}", dir.display());
    }
    if !missing.is_empty() {
        bail!(
            "`unsafe` without a `// SAFETY:` comment directly above: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_uses_pass() {
        let src = r#"
/// Docs.
// SAFETY: the reason, over
// two lines.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn f() {
    // SAFETY: why.
    let v = unsafe { g() };
    h(|p| {
        // SAFETY: why here.
        u16::from_be(unsafe { p.read() })
    });
    let s = "unsafe { in a string \" }"; // and unsafe { in a comment }
    let q = (b'"', '\'', '\\', "x", b'/', '\u{22}'); let name: &'static str = "unsafe";
    let unsafe_name = 1;
}
"#;
        assert_eq!(undocumented(src), Vec::<usize>::new());
    }

    #[test]
    fn undocumented_uses_are_found() {
        let src = r#"
fn a() {
    // A comment without the word.
    unsafe { b() };
    // SAFETY: this one is documented.
    let x = 1;
    unsafe { c() };
}
/// SAFETY: a doc comment is not a SAFETY comment.
unsafe fn d() {}
unsafe impl Send for E {}
"#;
        assert_eq!(undocumented(src), vec![4, 7, 10, 11]);
    }

    #[test]
    fn kernel_programs_document_every_unsafe() {
        check(&crate::root().join("agent-ebpf").join("src")).unwrap();
    }
}

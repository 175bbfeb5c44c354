//! Realistic-looking text for generated items: titles and 1–3 KB HTML bodies.

use rand::seq::IndexedRandom;
use rand::Rng;

const WORDS: &[&str] = &[
    "quarterly",
    "review",
    "roadmap",
    "budget",
    "design",
    "sync",
    "planning",
    "customer",
    "launch",
    "retro",
    "hiring",
    "interview",
    "offsite",
    "training",
    "security",
    "audit",
    "migration",
    "release",
    "demo",
    "standup",
    "architecture",
    "vendor",
    "contract",
    "renewal",
    "marketing",
    "campaign",
    "analytics",
    "dashboard",
    "pipeline",
    "forecast",
    "onboarding",
    "workshop",
    "kickoff",
    "milestone",
    "deadline",
    "proposal",
    "feedback",
    "strategy",
    "partner",
    "escalation",
    "incident",
    "postmortem",
    "capacity",
    "inventory",
    "shipping",
    "invoice",
    "payroll",
    "compliance",
    "legal",
    "board",
    "investor",
    "update",
    "lunch",
];

/// `n` capitalised words.
pub fn title(rng: &mut impl Rng, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let w = WORDS.choose(rng).copied().unwrap_or("item");
        if i > 0 {
            out.push(' ');
        }
        let mut c = w.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    out
}

/// `n` plain sentences.
pub fn sentences(rng: &mut impl Rng, n: usize) -> String {
    let mut out = String::new();
    for _ in 0..n {
        let len = rng.random_range(6..14);
        let s = title(rng, 1);
        out.push_str(&s);
        for _ in 1..len {
            out.push(' ');
            out.push_str(WORDS.choose(rng).copied().unwrap_or("item"));
        }
        out.push_str(". ");
    }
    out
}

/// An Outlook-style HTML body of roughly 1–3 KB.
pub fn html_body(rng: &mut impl Rng) -> String {
    let target = rng.random_range(1000..3000);
    let mut out = String::from(
        "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n",
    );
    while out.len() < target {
        out.push_str("<div class=\"elementToProof\" style=\"font-family: Aptos, sans-serif; font-size: 12pt\">");
        out.push_str(&sentences(rng, 2));
        out.push_str("</div>\r\n");
    }
    out.push_str("</body>\r\n</html>\r\n");
    out
}

/// Text content of an HTML body, for `bodyPreview`.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    let mut in_head = false;
    for (i, c) in html.char_indices() {
        match c {
            '<' => {
                in_tag = true;
                let rest = &html[i..];
                if rest.starts_with("<head") {
                    in_head = true;
                } else if rest.starts_with("</head") {
                    in_head = false;
                }
            }
            '>' => in_tag = false,
            '\r' | '\n' => {}
            _ if !in_tag && !in_head => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_to_three_kb_and_preview_has_no_markup() {
        let mut rng = rand::rng();
        for _ in 0..50 {
            let b = html_body(&mut rng);
            assert!((1000..3400).contains(&b.len()), "{}", b.len());
            let p = strip_html(&b);
            assert!(!p.contains('<') && !p.is_empty());
        }
    }
}

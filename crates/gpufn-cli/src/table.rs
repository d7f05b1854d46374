//! Plain aligned tables for terminal output.

/// Prints rows under a header, columns padded to their widest cell.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A JSON value at `path` as a table cell: strings bare, null as `-`, anything else as JSON.
pub fn cell(v: &serde_json::Value, path: &[&str]) -> String {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    match cur {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The elements of a JSON array (none if it is not one).
pub fn items(v: &serde_json::Value) -> &[serde_json::Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A list answer printed as pretty JSON (`as_json`) or as a table of the given `(header, field)`
/// columns.
pub fn print_list(
    v: &serde_json::Value,
    as_json: bool,
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|item| columns.iter().map(|(_, f)| cell(item, &[f])).collect())
        .collect();
    print(&header, &rows);
    Ok(())
}

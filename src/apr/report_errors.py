"""The report's table "Where the arithmetic errors are": per run, the arithmetic error rate by
result size, thread and path, and the share of wrong results that equal the target, from the
`arithmetic_breakdown` of each summary's competence measures (`apr.competence`)."""

from __future__ import annotations

# (breakdown, key, column heading), in column order.
COLUMNS = (
    ("by_result_digits", "1", "1-digit results"),
    ("by_result_digits", "2", "2-digit"),
    ("by_result_digits", "3", "3-digit"),
    ("by_result_digits", "4+", "4+ digit"),
    ("by_thread", "parent", "parent"),
    ("by_thread", "child", "children"),
    ("by_path", "on", "on the path"),
    ("by_path", "off", "off it"),
)

NOTE = ("Error rate % (operations) of the `Exploring Operation` lines of each run, by the digits of the true "
        "result, by thread (the root, its spawned children) and by whether the operation is on the path the "
        "thread passed on (the record's final path for the root, what its parent's join received for a child). "
        "Wrong = target: of the lines with a wrong result, the share (count of all) whose result is the "
        "problem's target. Summaries written before the breakdown show `–`.")


def _cell(entry: dict | None) -> str:
    if not entry or not entry["operations"]:
        return "– (0)"
    return f"{100 * entry['rate']:.1f} ({entry['operations']})"


def errors_table(runs: list[dict]) -> list[str]:
    """One row per run: the error rates of COLUMNS and the wrong results that equal the target."""
    head = "| run | " + " | ".join(c[2] for c in COLUMNS) + " | wrong = target |"
    rows = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for r in runs:
        b = (r.get("competence") or {}).get("arithmetic_breakdown")
        if not b:
            rows.append(f"| {r['label']} | " + " | ".join("–" for _ in COLUMNS) + " | – |")
            continue
        w = b["wrong_results"]
        target = f"{100 * w['share']:.1f} ({w['equal_target']} of {w['results']})" if w["results"] else "– (0)"
        rows.append(f"| {r['label']} | " + " | ".join(_cell(b[dim].get(key)) for dim, key, _ in COLUMNS)
                    + f" | {target} |")
    return rows

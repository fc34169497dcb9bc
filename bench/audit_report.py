"""The dependency audit's record: pip-audit's JSON turned into bench/results/audit.json and a doc section.

`scripts/audit` runs pip-audit and hands its JSON here. A package pip-audit could not check (not found
on the registry, or the registry's per-release data unreachable) is counted apart and named: an audit
in which packages went unchecked says so in its headline and exits 3, so "0 vulnerabilities" is only
ever written when every package was actually checked.

    python -m bench.audit_report AUDIT_JSON PIP_AUDIT_VERSION PIP_AUDIT_STATUS [--no-write]
    python -m bench.audit_report --render   # the doc section again from bench/results/audit.json
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
RESULTS = ROOT / "bench" / "results" / "audit.json"
UNCHECKED = 3


def summarize(report: dict[str, Any], version: str, status: int, date: str) -> tuple[dict[str, Any], str]:
    packages = report.get("dependencies", [])
    vulnerable = [p for p in packages if p.get("vulns")]
    editable = [p for p in packages if "editable" in (p.get("skip_reason") or "")]
    unchecked = [p for p in packages if p.get("skip_reason") and p not in editable]
    checked = len(packages) - len(editable) - len(unchecked)
    record = {"packages": len(packages), "checked": checked, "vulnerable": vulnerable, "unchecked": unchecked,
              "editable": [p["name"] for p in editable], "pip_audit": version, "pip_audit_status": status,
              "date": date}
    return record, section(record)


def section(record: dict[str, Any]) -> str:
    vulnerable, unchecked = record["vulnerable"], record["unchecked"]
    advisories = sum(len(p["vulns"]) for p in vulnerable)
    head = (f"`scripts/audit` ({record['pip_audit']}, `--vulnerability-service pypi`), {record['date']}: "
            f"{record['packages']} installed distributions, **{record['checked']} checked**, "
            f"{len(record['editable'])} editable (repliq itself, not on the registry), ")
    if unchecked:
        reasons = Counter(p["skip_reason"].split(":")[0] for p in unchecked)
        head += (f"**{len(unchecked)} could not be checked** ({'; '.join(f'{n}× {r}' for r, n in reasons.items())})"
                 f". Vulnerabilities found among the checked: {len(vulnerable)} packages, {advisories} advisories. "
                 "**This is not a clean audit**: an unchecked package may be vulnerable.")
    else:
        head += f"**{len(vulnerable)} with known vulnerabilities** ({advisories} advisories)."
    rows = [f"| {p['name']} {p['version']} | {v['id']} | {', '.join(v.get('fix_versions') or []) or 'none yet'} |"
            for p in vulnerable for v in p["vulns"]]
    if rows:
        head += "\n\n| package | advisory | fixed in |\n|---|---|---|\n" + "\n".join(rows)
    return head


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from bench.report import write_results

    if argv[:1] == ["--render"]:
        record = json.loads(RESULTS.read_text(encoding="utf-8"))
        record = {k: v for k, v in record.items() if k not in ("benchmark", "machine")}
        write_results("audit", record, section(record), doc=DOC)
        print(section(record))
        return 0
    path, version, status = Path(argv[0]), argv[1], int(argv[2])
    record, text = summarize(json.loads(path.read_text(encoding="utf-8")), version, status,
                             time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(text)
    if "--no-write" not in argv[3:]:
        write_results("audit", record, text, doc=DOC)
    if status:
        return status
    return UNCHECKED if record["unchecked"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

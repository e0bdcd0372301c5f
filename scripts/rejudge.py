#!/usr/bin/env python
"""Re-judge the committed claims tables with the current verdict rule -- no training.

    python scripts/rejudge.py                    # results/tables/quick/*_claims.csv, rewritten in place
    python scripts/rejudge.py --profile paper --dry-run
    python scripts/rejudge.py --results results/<name>_extended

The per-seed values are the tables' own (``values_a`` / ``values_b``) or, for a
table written before they were kept, the runs table beside it
(``<experiment>_runs.csv``; a claim it cannot give back is kept, marked
"not re-judged", with the reason in ``note``); what each
claim is (expect, min_effect, tolerance, floor, family, paired) comes from the
paper's experiment module -- the ``module`` of the notebook's entry in
``notebooks/pipeline.yaml``, through its ``rejudge_claims`` hook -- with the
parameters the notebooks ran with (:mod:`dla_repro.experiments.rejudge`).
Prints every verdict that changed, with its p-values, and rewrites
``results/claims_<profile>.md`` (``dla-repro report``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package beside this script, not an installed one

from dla_repro.analysis.report import write_report  # noqa: E402
from dla_repro.experiments.rejudge import rejudge  # noqa: E402
from dla_repro.paths import results_dir  # noqa: E402


def _p(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: the repository's)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    results = (args.results or results_dir()).resolve()
    try:
        tables = rejudge(results, args.profile, write=not args.dry_run)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"rejudge: error: {exc}", file=sys.stderr)
        return 2
    for name, (old, new) in tables.items():
        if new is None:
            print(f"{name}: no per-seed values in the table and no runs table beside it, left as it is")
            continue
        rows = zip(old.to_dict("records"), new.to_dict("records"))
        changed = [(o, n) for o, n in rows if o["verdict"] != n["verdict"]]
        print(f"{name}: {len(new)} claims, {len(changed)} verdicts changed")
        for o, n in changed:
            holm = "" if n["p_adjusted"] == n["p"] or math.isnan(n["p"]) else \
                f", Holm {_p(n['p_adjusted'])}"
            why = "; ".join(str(x) for x in (n["note"], n["reading"]) if isinstance(x, str) and x)
            print(f"  {n['claim']}: {o['verdict']} -> {n['verdict']} (p {_p(n['p'])}{holm}, df {_p(n['df'])}, "
                  f"{n['test'] or 'no test'}){' -- ' + why if why else ''}")
    if not args.dry_run:
        path, _ = write_report(results, args.profile)
        print(f"wrote the tables and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The power table of docs/controller.md#signals-with-power, from the diagnoses in results/signals/.

Window signals: ``win-<base>-s0-steps100`` and ``-steps300`` (t at 50 and 150 decisions); each problem's
alignment credit: ``pp-*`` (style probe), ``ppref-*`` (reference probe), ``ppcon-*`` (contrast probe), 100
updates; t at 300 updates from ``ppcon300-*`` (the same runs trained to 300 updates) where it was measured, else
scaled by √3 from 100. Writes ``power.csv`` there (or to ``--out``) and prints it.

    python benchmarks/signal_power.py

It has no ``--quick``: it reads the committed diagnoses in about a second, so its smoke run (`make bench-smoke`) is
the full run, written to a scratch file and compared with the committed ``power.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results" / "signals"
WINDOW_SIGNALS = ("G_lp", "G_gt", "R", "lp_signed", "probe_drop", "accuracy", "style_drop", "probe_tscl", "probe_alp",
                  "probe_quantile", "style_tscl", "style_alp", "style_quantile")
PROBES = {"pp": "style", "ppref": "reference", "ppcon": "contrast"}


def fits(folder: str) -> dict[tuple[str, str], dict]:
    data = json.loads((ROOT / folder / "diagnose.json").read_text())
    return {(row["table"], row["signal"]): row for row in data["fits"]}


def rows() -> list[dict]:
    found = []
    for base in ("w0", "w1"):
        short, full = fits(f"win-{base}-s0-steps100"), fits(f"win-{base}-s0-steps300")
        for signal in WINDOW_SIGNALS:
            a, b = short[("windows", signal)], full[("windows", signal)]
            found.append({"design": "windows: random, hold 2", "signal": signal, "run": f"{base}-s0",
                          "slope_50": a["slope"], "t_50": a["t"], "slope_150": b["slope"], "t_150": b["t"],
                          "t_150_measured": True})
    for prefix, probe in PROBES.items():
        for folder in sorted(path.name for path in ROOT.glob(f"{prefix}-w*-s*")):
            run = folder.split("-", 1)[1]
            table = fits(folder)
            longer = fits(f"{prefix}300-{run}") if (ROOT / f"{prefix}300-{run}").is_dir() else None
            for signal in ("alignment", "alignment_sign"):
                row = table[("alignment_within_step", signal)]
                full = longer[("alignment_within_step", signal)] if longer else None
                found.append({"design": f"per problem: random, alignment on the {probe} probe", "signal": signal,
                              "run": run, "slope_50": row["slope"], "t_50": row["t"],
                              "slope_150": full["slope"] if full else row["slope"],
                              "t_150": full["t"] if full else row["t"] * math.sqrt(3),
                              "t_150_measured": full is not None})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "power.csv", help="the table's CSV (default: %(default)s)")
    args = parser.parse_args()
    table = rows()
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    for row in table:
        print(f"{row['design']:50} {row['signal']:15} {row['run']:6} t50 {row['t_50']:+6.2f} t150 {row['t_150']:+6.2f}"
              + ("" if row["t_150_measured"] else " (scaled)"))


if __name__ == "__main__":
    main()

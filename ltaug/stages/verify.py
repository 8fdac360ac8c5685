"""Stage: ``--verify`` of a generation output (``generate.output_uri``) against its plan and refill rounds.

The per-shard checks run where the launcher puts them: one after another in this process
(``LocalLauncher``), or as Ray Data tasks over the cluster (``RayLauncher.map_verify``); the driver only
reduces their small results (one byte per planned row)."""
from __future__ import annotations

from typing import Any, Callable

from ..config import Config
from ..generate import verify
from .launcher import Launcher
from .run import Run


def verify_output(cfg: Config, run: Run, launcher: Launcher | None = None, *,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check ``generate.output_uri`` (default: this config's shards) against its plan; an error when not OK."""
    out = cfg.generate.output_uri or run.path("shards")
    rep = verify(out, map_fn=launcher.map_verify if launcher is not None else None)
    for p in rep.problems:
        log(f"problem: {p}")
    log(f"verify {out}: plan {rep.plan}  rounds {rep.rounds}  shards {rep.shards_found}/{rep.shards_expected}  "
        f"samples {rep.samples}  dropped {rep.dropped}  missing {rep.missing}  duplicates {rep.duplicates}  "
        f"bad {rep.bad}  -> {'OK' if rep.ok else 'FAILED'}")
    run.tracker.log_metrics({"verify_ok": float(rep.ok), "verify_missing": rep.missing,
                             "verify_duplicates": rep.duplicates, "verify_bad": rep.bad, "verify_samples": rep.samples})
    run.write_json("verify.json", rep.to_dict())
    if not rep.ok:
        raise ValueError(f"verify failed for {out}: {len(rep.problems)} problem(s); first: {rep.problems[0]}")
    return {"output_uri": out, "verify": rep.to_dict()}


__all__ = ["verify_output"]

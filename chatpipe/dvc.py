"""`dvc.yaml`, generated from the stage table (tasks/pipeline.py) so the two cannot disagree.

DVC reads dvc.yaml from the repository, so it stays a committed file; `chatpipe dvc-yaml` rewrites it
and tests/test_house.py fails when the committed one differs from what the table gives. Each stage runs
the same `chatpipe <command>` as a user would, on params.yaml plus the overlay in `vars` (tiny by
default, so `dvc repro` finishes on a laptop CPU; configs/seed.yaml is the empty overlay: the seed config).
"""
from __future__ import annotations

from chatpipe.tasks.pipeline import PIPELINE, Stage

OVERLAY = "configs/tiny.yaml"
HEADER = """\
# Generated from the stage table (tasks/pipeline.py) by `chatpipe dvc-yaml`: change the table, not this file.
# `dvc repro` (or `make repro`) runs what changed and nothing else. Each stage runs the same `chatpipe`
# command a user would, on params.yaml plus the overlay named in vars (tiny by default, so `dvc repro`
# finishes on a laptop CPU; configs/seed.yaml, the empty overlay, gives the seed config). A stage's deps
# are its inputs, then the folders of the code it runs.
"""


def command(stage: Stage) -> str:
    """The stage's command line: `chatpipe <command> [--option value | --flag]... -p ${overlay}`."""
    options = []
    for key, value in stage.args.items():
        flag = "--" + key.replace("_", "-")
        options += [flag] if value is True else [] if value is False else [flag, str(value)]
    return " ".join(["chatpipe", stage.cli, *options, "-p", "${overlay}"])


def _entry(stage: Stage) -> list[str]:
    lines = [f"  {stage.name}:", f"    cmd: {command(stage)}", "    deps:"]
    lines += [f"      - {dep}" for dep in (*stage.inputs, *stage.code)]
    lines += ["    params:", *(f"      - {key}" for key in stage.params), "      - ${overlay}:"]
    if stage.outputs:
        lines.append("    outs:")
        for out in stage.outputs:
            flags = [f"persist: {str(out.persist).lower()}"] * out.persist + ["cache: false"] * (not out.cache)
            lines.append(f"      - {out.path}" + (":" if flags else ""))
            lines += [f"          {flag}" for flag in flags]
    lines += ["    metrics:", f"      - {stage.metrics}:", "          cache: false"]
    if stage.plots:
        lines.append("    plots:")
        for plot in stage.plots:
            lines += [f"      - {plot.path}:", "          cache: false", "          x: step", f"          y: {plot.y}"]
    return lines


def render() -> str:
    lines = [HEADER.rstrip("\n"), "vars:", f"  - overlay: {OVERLAY}", "stages:"]
    for stage in PIPELINE.values():
        lines += _entry(stage)
    return "\n".join(lines) + "\n"

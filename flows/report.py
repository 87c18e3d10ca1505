"""The flow run's record: an MLflow parent run, and the report posted to Prefect and MLflow.

The parent run carries the Prefect flow-run id, the git commit, the params and (once known) the data and
tokenizer hashes; every stage's own run nests under it, so two pipeline runs compare side by side in the
MLflow UI. The report (metrics table, gate verdict, loss curves, samples) is a Prefect markdown artifact
and the same file as an MLflow artifact, with a link artifact pointing at the MLflow run. Its curves, samples and
losses are those of the phases that train one model in turn (tasks/train/phases.py: `LINE`, pilot → full → sft).
"""
from __future__ import annotations

import csv
from pathlib import Path

from chatpipe.flows.request import Request
from chatpipe.tasks.common.config import params_dict
from chatpipe.tasks.common.stage import StageResult
from chatpipe.tasks.common.tracking import Run, ui_url
from chatpipe.tasks.evals.compare import comparison_table
from chatpipe.tasks.publish.lineage import git_commit
from chatpipe.tasks.train.phases import LINE


def parent_run(request: Request) -> Run:
    """The flow run's MLflow run (a context manager: FAILED if the flow fails)."""
    from prefect.runtime import flow_run

    params = request.load()
    return Run(params.tracking, request.root, run_name=f"chat-pipeline {flow_run.name or ''}".strip(),
               tags={"chatpipe.flow_run_id": str(flow_run.id or ""), "chatpipe.flow_run_name": str(flow_run.name or ""),
                     "chatpipe.git_commit": git_commit() or "unknown", "chatpipe.workdir": str(request.root)},
               params=params_dict(params))


def loss_plot(root: Path, out: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    offset, drawn = 0, False
    for phase in LINE:
        path = root / "metrics" / f"{phase}_curve.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(open(path)))
        ax.plot([offset + int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.7, label=f"{phase} loss")
        val = root / "metrics" / f"{phase}_val.csv"
        if val.exists():
            vrows = list(csv.DictReader(open(val)))
            ax.plot([offset + int(r["step"]) for r in vrows], [float(r["val_loss"]) for r in vrows], "o-",
                    label=f"{phase} val loss")
        offset += len(rows)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel(f"step ({', then '.join(LINE)})")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def markdown(results: dict[str, StageResult], mlflow_link: str) -> str:
    lines = ["# chat-pipeline run", "", "| stage | summary |", "| --- | --- |"]
    lines += [f"| {name} | {r.summary.replace('|', '/')} |" for name, r in results.items()]
    gate = results.get("gate")
    if gate:
        lines += ["", f"## Health gate: {'PASSED' if gate.metrics.get('passed') else 'FAILED'}", "",
                  "| check | value | threshold | verdict |", "| --- | --- | --- | --- |"]
        lines += [f"| {c['name']} | {c['value']} | {c['threshold']} | {c['verdict']} |"
                  for c in gate.metrics.get("checks", [])]
    for phase in LINE:
        if phase in results:
            lines += ["", f"## Samples ({phase})", ""]
            lines += [f"- `{s['prompt'].strip().replace(chr(10), ' ')}` → {s['completion'].strip()!r}"
                      for s in results[phase].metrics.get("samples", [])]
    if "eval" in results:
        m = results["eval"].metrics
        he = m.get("humaneval") or {}
        lines += ["", "## Evaluation", "", "| metric | value |", "| --- | --- |",
                  f"| val loss | {m.get('val_loss')} |", f"| val bits per byte | {m.get('val_bpb')} |",
                  f"| chat turn rate | {m.get('turn_rate')} |",
                  f"| HumanEval pass@1 (greedy) | {he.get('pass@1_greedy')} |"]
        lines += [f"| HumanEval pass@{k} | {v} |" for k, v in (he.get("pass@k") or {}).items()]
        if m.get("comparison"):
            lines += ["", *comparison_table(m["comparison"])]
    lines += ["", f"MLflow run: {mlflow_link}", "", "![loss](loss.png)"]
    return "\n".join(lines) + "\n"


def publish(request: Request, parent: Run, results: dict[str, StageResult]) -> dict:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    root = request.root
    link = ui_url(parent.experiment_id, parent.run_id)
    for tag, value in (("chatpipe.documents_fingerprint", results["ingest"].metrics.get("fingerprint")),
                       ("chatpipe.tokenizer_sha256", results["tokenizer"].metrics.get("sha256"))):
        if value:
            parent.client.set_tag(parent.run_id, tag, value)
    reports = root / "reports" / parent.run_id
    text = markdown(results, link)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "report.md").write_text(text)
    if png := loss_plot(root, reports / "loss.png"):
        parent.log_artifact(png, "report")
    parent.log_artifact(reports / "report.md", "report")
    for phase in (p for p in LINE if p in results):
        m = results[phase].metrics
        parent.log(0, {f"{phase}.final_loss": m.get("final_loss"), f"{phase}.final_val_loss": m.get("final_val_loss")})
    evaluation = results["eval"].metrics
    parent.log(0, {"eval.val_loss": evaluation.get("val_loss"), "eval.val_bpb": evaluation.get("val_bpb"),
                   "eval.turn_rate": evaluation.get("turn_rate"),
                   "eval.humaneval_pass1": (evaluation.get("humaneval") or {}).get("pass@1_greedy")})
    if gap := (evaluation.get("comparison") or {}).get("gap"):
        parent.log(0, {f"student.{k}": v for k, v in gap.items() if v is not None})
    create_markdown_artifact(text, key="chat-pipeline-report", description="losses, gate verdict, samples")
    create_link_artifact(link, key="mlflow-run", description="the flow run's MLflow parent run (mlflow ui)")
    return {"gate": "passed" if results["gate"].metrics.get("passed") else "failed",
            "pilot_loss": results["pilot"].metrics.get("final_loss"),
            "pilot_val_loss": results["pilot"].metrics.get("final_val_loss"),
            "full_loss": results["full"].metrics.get("final_loss"),
            "full_val_loss": results["full"].metrics.get("final_val_loss"),
            "checkpoint": results["full"].metrics.get("checkpoint"),
            "sft_val_loss": results["sft"].metrics.get("final_val_loss") if "sft" in results else None,
            "val_bpb": evaluation.get("val_bpb"), "assistant_bpb": evaluation.get("val_assistant_bpb"), "bundle": results["publish"].metrics.get("bundle"),
            "student_bundle": (results["publish"].metrics.get("student") or {}).get("bundle"),
            "student_gap": (evaluation.get("comparison") or {}).get("gap"),
            "mlflow_run_id": parent.run_id, "tracking_uri": parent.uri, "mlflow_ui": ui_url(parent.experiment_id),
            "report": str(reports / "report.md")}

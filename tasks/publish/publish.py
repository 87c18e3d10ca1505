"""`chatpipe publish`: the evaluated model leaves the pipeline, as a bundle others can trust.

1. `dist/<publish.name>/` (tasks/common/bundle.py): the latest checkpoint of `eval.phase` (the one eval
   measured), its tokenizer, generation defaults, `eval.json`, `lineage.json`, a model card and
   checksums; written atomically.
2. `hf/` inside it (tasks/publish/hf_export.py) when `publish.hf_export` and the model is dense, and
   `model.gguf` (tasks/publish/gguf_export.py) for llama.cpp when `publish.gguf` is not off: F16 or Q8_0, a
   ternary student's linears as `publish.gguf_ternary`; where a model cannot go out as GGUF (a ternary row
   length llama.cpp's 256-blocks do not divide, MoE), the summary and the card say why in one line.
3. With a bucket set, an upload to `gs://<gcs.bucket>/<gcs.prefix>/<name>/`, the `_PUBLISHED` marker last
   (tasks/publish/gcs.py; `download`, re-exported here, brings one back for `chatpipe serve`).
4. A new version of the registered model `publish.registry` (tasks/publish/registry.py), its files logged
   by this stage's MLflow run; `champion` moves only when eval meets `publish.bars`. So the stage opens
   its MLflow run itself (the version needs the run before the metrics, which name the version, exist).

- With distillation on, the student goes out the same way as `dist/<name>-<quant>/` (no HF export), with
  its own eval section, GCS prefix and registered model `<registry>-<quant>`, the teacher in its lineage.
- Refused: no metrics/eval.json, an eval of another checkpoint, or a tokenizer the checkpoint was not
  trained with.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

from chatpipe.model.config import ModelConfig
from chatpipe.model.info import param_counts
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.config import Params, params_dict, trained
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.common.tracking import Run, numbers
from chatpipe.tasks.publish import gcs, gguf_export, hf_export, lineage, model_card, registry
from chatpipe.tasks.publish.gcs import download  # noqa: F401  (re-exported: `chatpipe serve --model gs://...`)
from chatpipe.tasks.train import checkpoint


@dataclasses.dataclass(frozen=True)
class Release:
    """One model this stage publishes: the evaluated one, or the distilled student."""
    name: str            # dist/<name>/, gs://.../<name>/
    phase: str           # whose latest checkpoint
    eval_key: str | None  # where its measures are in eval.json: None (the top level) or "student"
    registry: str | None  # the registered model's name


def releases(params: Params) -> list[Release]:
    cfg = params.publish
    out = [Release(cfg.name, trained(params, params.eval.phase), None, cfg.registry)]
    if params.distill.enabled:
        suffix = params.distill.student.quant or "student"
        out.append(Release(f"{cfg.name}-{suffix}", "distill", "student",
                           cfg.registry and f"{cfg.registry}-{suffix}"))
    return out


@dataclasses.dataclass(frozen=True)
class Bundled:
    """What step 1 produced, for the upload, the registry and the metrics."""
    release: Release
    directory: Path
    config: ModelConfig
    ev: dict
    lineage: dict
    hf: str  # the exported transformers architecture, or why there is no export
    gguf: dict | str  # model.gguf's file, bytes, sha256 and tensor types, or why there is none

    @property
    def exported(self) -> bool:
        return self.hf.endswith("ForCausalLM")

    @property
    def gguf_phrase(self) -> str:
        return (f"GGUF {self.gguf['type']}" if isinstance(self.gguf, dict)
                else f"no GGUF: {self.gguf}")

    @functools.cached_property
    def checksums(self) -> dict[str, str]:
        return json.loads((self.directory / "checksums.json").read_text())


def read_eval(layout: Layout, state: dict, key: str | None = None) -> dict:
    """metrics/eval.json (its `key` section), refused when it measured another checkpoint than the one
    being published."""
    path = layout.metrics("eval")
    if not path.exists():
        raise InputError(f"{path}: not found; run `chatpipe eval` first")
    ev = lineage.read_json(path)
    if not isinstance(ev, dict):
        raise InputError(f"{path}: not a JSON object; re-run `chatpipe eval`")
    if key is not None:
        if not isinstance(ev.get(key), dict):
            raise InputError(f"{path} has no {key} measures; run `chatpipe eval` again (with distill.enabled)")
        ev = {**ev[key], "comparison": ev.get("comparison")}
    evaluated = ev.get("checkpoint")
    if evaluated and Path(evaluated).parts[-2:] != Path(state["path"]).parts[-2:]:
        raise InputError(f"{path} is for {evaluated}, but the latest checkpoint is {state['path']}; "
                         "run `chatpipe eval` again")
    return ev


def hf_status(params: Params, model: Transformer) -> str:
    """The transformers architecture to export, or why there is no export."""
    if not params.publish.hf_export:
        return "disabled (publish.hf_export: false)"
    return hf_export.unsupported(model) or hf_export.architecture(model)


def gguf_file(params: Params, model: Transformer, tokenizer_dir: Path, path: Path, name: str) -> dict | str:
    """Step 2's model.gguf written at `path` (what gguf_export.export returns), or why there is none."""
    cfg = params.publish
    if cfg.gguf == "off":
        return "disabled (publish.gguf: off)"
    if why := gguf_export.unsupported(model, Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))):
        return why
    return gguf_export.export_dir(model, tokenizer_dir, path, ftype=cfg.gguf, ternary=cfg.gguf_ternary, name=name)


def build(params: Params, layout: Layout, release: Release) -> Bundled:
    """Step 1 and 2: dist/<name>/ with the card, eval.json, lineage.json and (if it can) the HF and GGUF exports."""
    model, state = checkpoint.latest_model(layout.checkpoints / release.phase, tokenizer_dir=layout.tokenizer)
    ev = read_eval(layout, state, release.eval_key)
    lin = lineage.collect(layout, state)
    hf = hf_status(params, model)
    extra = {"eval.json": json.dumps(ev, indent=2).encode(), "lineage.json": json.dumps(lin, indent=2).encode()}
    if hf.endswith("ForCausalLM"):
        extra["hf"] = lambda out: hf_export.export(model, layout.tokenizer, out)
    (layout.root / "dist").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.root / "dist", prefix=".gguf-") as tmp:
        gguf = gguf_file(params, model, layout.tokenizer, Path(tmp) / "model.gguf", release.name)
        if isinstance(gguf, dict):
            extra["model.gguf"] = Path(tmp) / "model.gguf"
        card = model_card.render(release.name, model.config, ev, lin, params, hf, gguf)
        directory = bundle.write(layout.root / "dist" / release.name, model, layout.tokenizer, card, extra=extra)
    return Bundled(release, directory, model.config, ev, lin, hf, gguf)


def upload(params: Params, bundled: Bundled) -> str | None:
    """Step 3: the bundle to gs://<bucket>/<prefix>/<name>, when a bucket is set; its URI."""
    cfg = params.publish
    if not cfg.gcs.bucket:
        return None
    uri = "gs://" + "/".join(p for p in (cfg.gcs.bucket, cfg.gcs.prefix.strip("/"), bundled.release.name) if p)
    gcs.upload(bundled.directory, uri, {"git_commit": bundled.lineage["git_commit"]})
    return uri


def stage_run(params: Params, layout: Layout, name: str) -> Run:
    """The MLflow run publishing bundle `name` (nested under the flow's, if any); FAILED if the stage fails."""
    return Run(params.tracking, layout.root, run_name="publish" if name == params.publish.name else f"publish {name}",
               tags={"chatpipe.stage": "publish", "chatpipe.bundle": name},
               params={k: params_dict(params)[k] for k in ("publish", "eval", "distill")})


def register(params: Params, run: Run, bundled: Bundled) -> registry.Registration | None:
    """Step 4: the bundle as the run's artifacts, and a new version of the registered model."""
    name = bundled.release.registry
    if not name:
        return None
    run.client.log_artifacts(run.run_id, str(bundled.directory), registry.BUNDLE_ARTIFACTS)
    tags = {"bundle": bundled.release.name, "bundle_sha256": bundle.digest(bundled.directory),
            "weights_sha256": bundled.checksums["model.safetensors"],
            "gguf_sha256": bundled.checksums.get("model.gguf", "none"),
            "git_commit": bundled.lineage["git_commit"] or "unknown"}
    return registry.register(run.uri, name, run.run_id, bundled.ev, params.publish.bars, tags)


def publish_one(params: Params, layout: Layout, release: Release) -> tuple[dict, str]:
    """Build, upload and register one release: its metrics and its part of the summary."""
    timer = Timer()
    bundled = build(params, layout, release)
    uri = upload(params, bundled)
    with stage_run(params, layout, release.name) as tracker:
        reg = register(params, tracker, bundled)
        size = sum(p.stat().st_size for p in bundled.directory.rglob("*") if p.is_file())
        metrics = {"bundle": lineage.relative(bundled.directory, layout.root), "bytes": size,
                   "files": len(bundled.checksums) + 1, "bundle_sha256": bundle.digest(bundled.directory),
                   "weights_sha256": bundled.checksums["model.safetensors"],
                   "checkpoint": bundled.lineage["training"]["checkpoint"], "quant": bundled.config.quant,
                   "params_total": param_counts(bundled.config)["total"],
                   "hf_export": bundled.exported, "hf": bundled.hf,
                   "gguf": bundled.gguf if isinstance(bundled.gguf, dict) else None,
                   "gguf_why_not": None if isinstance(bundled.gguf, dict) else bundled.gguf, "gcs_uri": uri,
                   "registry": reg.report() if reg else None, "mlflow_run_id": tracker.run_id,
                   "git_commit": bundled.lineage["git_commit"], "seconds": timer.seconds}
        tracker.log(0, numbers(metrics))
    phrase = (f"{metrics['bundle']} ({size / 1e6:.1f} MB, "
              f"{'HF export' if bundled.exported else 'no HF export: ' + bundled.hf}, {bundled.gguf_phrase})")
    return metrics, " · ".join([phrase, *([uri] if uri else []), *([f"registry {reg.phrase()}"] if reg else [])])


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    """metrics/publish.json: the published model's metrics at the top level, the student's under `student`."""
    timer = Timer()
    if params.publish.gcs.bucket:
        gcs.require()  # a missing gcs extra is said before any local work
    published = [publish_one(params, layout, release) for release in releases(params)]
    metrics = {**published[0][0], "student": published[1][0] if len(published) > 1 else None,
               "seconds": timer.seconds}
    summary = "publish: " + "; ".join(phrase for _, phrase in published) + f" [{timer.seconds:.1f}s]"
    result = finish(layout, "publish", summary, metrics, [layout.root / "dist" / m["bundle"] for m, _ in published])
    return dataclasses.replace(result, mlflow_run_id=metrics["mlflow_run_id"])

"""The MLflow model registry: every publish is a new version; `champion` moves only to a good one.

A version's source is the bundle logged as the `bundle/` artifacts of the publish stage's MLflow run, so
`mlflow.artifacts.download_artifacts("models:/<name>@champion")` gives back a loadable bundle (no MLmodel
flavour is needed: the registry only records where the files are). The version is tagged with the eval
metrics and the bundle's sha256. The `champion` alias moves to it only when eval meets every bar in
`publish.bars` (a missing metric fails its bar); otherwise it stays where it was, and the reason is
recorded on the version and returned for the stage's summary.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatpipe.tasks.common.config import BarParams
from chatpipe.tasks.common.tracking import numbers

CHAMPION = "champion"
BUNDLE_ARTIFACTS = "bundle"
TAGGED_METRICS = ("val_loss", "val_bpb", "val_ppl", "turn_rate", "humaneval")  # of eval.json, on each version


@dataclass(frozen=True)
class Bar:
    metric: str       # a path into eval.json, dotted
    op: str           # "<=" or ">="
    threshold: float

    def check(self, ev: dict) -> str | None:
        """None if eval meets the bar, else why not (e.g. "val_loss 4.3 > 4.0")."""
        value = ev
        for key in self.metric.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{self.metric} missing"
        ok = value <= self.threshold if self.op == "<=" else value >= self.threshold
        return None if ok else f"{self.metric} {value:.4g} {'>' if self.op == '<=' else '<'} {self.threshold}"


def bars(cfg: BarParams) -> tuple[Bar, ...]:
    return (Bar("val_loss", "<=", cfg.max_val_loss), Bar("turn_rate", ">=", cfg.min_turn_rate),
            Bar("humaneval.pass@1_greedy", ">=", cfg.min_humaneval_pass1))


def failures(ev: dict, cfg: BarParams) -> list[str]:
    """Every bar eval misses; empty when the version may become champion."""
    return [why for bar in bars(cfg) if (why := bar.check(ev))]


@dataclass(frozen=True)
class Registration:
    model: str
    version: int
    champion: int | None   # the version holding the alias afterwards
    moved: bool
    failures: tuple[str, ...]

    def phrase(self) -> str:
        """e.g. "chat-pipeline v3 (champion)" or "chat-pipeline v2 (champion stays at v1: val_loss 4.3 > 4.0)"."""
        if self.moved:
            return f"{self.model} v{self.version} (champion)"
        stays = f"champion stays at v{self.champion}" if self.champion else "no champion yet"
        return f"{self.model} v{self.version} ({stays}: {'; '.join(self.failures)})"

    def report(self) -> dict:
        return {"model": self.model, "version": self.version, "champion": self.champion,
                "champion_moved": self.moved, "bars_failed": list(self.failures)}


def _champion(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def register(tracking_uri: str, name: str, run_id: str, ev: dict, cfg: BarParams,
             tags: dict[str, str]) -> Registration:
    """A new version of `name` from the run's bundle artifacts; `champion` moves to it if eval meets `cfg`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name, description="chat-pipeline model bundles (tasks/common/bundle.py)")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    failed = tuple(failures(ev, cfg))
    tagged = numbers({k: ev[k] for k in TAGGED_METRICS if isinstance(ev.get(k), (int, float, dict))})
    version_tags = {**{f"eval.{k}": f"{v:.6g}" for k, v in tagged.items()}, **tags,
                    "bars": "passed" if not failed else "failed: " + "; ".join(failed)}
    version = client.create_model_version(name, f"runs:/{run_id}/{BUNDLE_ARTIFACTS}", run_id=run_id,
                                          tags=version_tags, await_creation_for=0)
    number = int(version.version)
    if not failed:
        client.set_registered_model_alias(name, CHAMPION, str(number))
    return Registration(name, number, number if not failed else _champion(client, name), not failed, failed)

"""`chatpipe publish` on a copy of the trained fixture: bundle, HF export, GCS (emulator), MLflow registry."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
from typer.testing import CliRunner

from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.publish import publish, registry
from chatpipe.tasks.tokens.tokenizer import file_hash
from chatpipe.tasks.train import checkpoint

from conftest import BUCKET, SECRET, TINY, linked, test_params

GOOD = {"val_loss": 3.52, "val_bpb": 1.61, "val_ppl": 33.8, "turn_rate": 0.75, "per_source": {"chat": {"loss": 3.1}},
        "chat": [{"prompt": "<|user|> Hi!\n<|assistant|>", "completion": " Hello."}],
        "humaneval": {"pass@1_greedy": 0.0, "pass@k": {"1": 0.0, "5": 0.012}, "samples": 5}}  # as tasks/evals/evaluate.py


def write_eval(layout: Layout, **changes) -> None:
    """metrics/eval.json of the project's latest checkpoint, with `changes`."""
    evaluated = {"checkpoint": str(checkpoint.latest(layout.checkpoints / "full")), **GOOD, **changes}
    (layout.root / "metrics" / "eval.json").write_text(json.dumps(evaluated))


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory):
    """An MLflow SQLite database with its tables made once (migrations take seconds; a copy is instant)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project(built, trained, empty_mlflow_db, tmp_path) -> Layout:
    """A writable project: the trained fixture's checkpoints and metrics, ingest's metrics, an eval."""
    built_layout, _, _ = built
    trained_layout, _ = trained
    layout = Layout(linked(tmp_path / "p", trained_layout))
    shutil.copy(empty_mlflow_db, layout.root / "mlflow.db")
    shutil.copytree(trained_layout.checkpoints / "full", layout.checkpoints / "full")
    (layout.root / "metrics").mkdir()
    for source in (trained_layout.metrics("pilot"), trained_layout.metrics("full"), built_layout.metrics("ingest")):
        shutil.copy(source, layout.root / "metrics")
    write_eval(layout)
    return layout


def params(layout: Layout, *extra: str):
    """TINY params tracking into the project's own MLflow database (named explicitly: mlflow.set_tracking_uri,
    called by any earlier run in this process, leaves $MLFLOW_TRACKING_URI pointing elsewhere)."""
    return test_params(*TINY, "publish.name=tiny-chat", f"tracking.uri={db(layout)}", *extra)


def db(layout: Layout) -> str:
    return f"sqlite:///{layout.root / 'mlflow.db'}"


def test_publish_end_to_end(project, gcs_env, tmp_path, caplog, capsys):
    import mlflow

    caplog.set_level(logging.INFO)
    result = publish.run(params(project, f"publish.gcs.bucket={BUCKET}"), project)
    uri = f"gs://{BUCKET}/models/tiny-chat"
    assert result.summary.startswith("publish: dist/tiny-chat (") and "MB, HF export, GGUF F16)" in result.summary
    assert f" · {uri} · registry chat-pipeline v1 (champion)" in result.summary

    out = project.root / "dist" / "tiny-chat"
    loaded = bundle.load(out)
    assert loaded.config.n_layer == 2 and json.loads((out / "eval.json").read_text())["val_loss"] == GOOD["val_loss"]
    assert json.loads((out / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["tokenizer"]["sha256"] == file_hash(project.tokenizer)
    assert lineage["documents"]["from"] == "metrics/ingest.json" and lineage["documents"]["documents"] > 0
    assert lineage["shards"]["shards"] and lineage["training"]["runs"]["full"]["steps"] == 6
    card = (out / "README.md").read_text()
    metrics = json.loads(project.metrics("publish").read_text())
    for fragment in ("# tiny-chat", "2 layers × 64", "| validation loss (nats/token) | 3.52 |", "| chitchat |",
                     "| HumanEval pass@5 (5 samples) | 0.012 |",
                     lineage["tokenizer"]["sha256"], "## Intended use and limitations", "AutoModelForCausalLM",
                     f"`model.gguf` (llama; tensors: 16 F16, 5 F32; sha256 `{metrics['gguf']['sha256']}`)"):
        assert fragment in card, fragment

    sums = json.loads((out / "checksums.json").read_text())
    assert metrics["weights_sha256"] == sums["model.safetensors"] and metrics["bundle_sha256"] == bundle.digest(out)
    assert metrics["gguf"]["sha256"] == sums["model.gguf"] and metrics["gguf"]["type"] == "F16"
    assert not list((project.root / "dist").glob(".gguf-*"))  # the export's temp directory is gone
    assert metrics["gcs_uri"] == uri and metrics["hf_export"] is True
    assert metrics["registry"] == {"model": "chat-pipeline", "version": 1, "champion": 1, "champion_moved": True,
                                   "bars_failed": []}

    fetched = publish.download(uri, tmp_path / "cache")  # what `chatpipe serve --model gs://...` does
    assert bundle.digest(fetched) == metrics["bundle_sha256"]
    mlflow.set_tracking_uri(db(project))
    champion = mlflow.artifacts.download_artifacts("models:/chat-pipeline@champion", dst_path=str(tmp_path / "m"))
    assert bundle.load(champion).config == loaded.config
    run = mlflow.MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.tags["chatpipe.stage"] == "publish" and run.info.status == "FINISHED"
    assert run.data.metrics["registry.version"] == 1
    version = mlflow.MlflowClient().get_model_version("chat-pipeline", "1")
    assert version.tags["eval.humaneval.pass_k.5"] == "0.012"
    assert version.tags["bundle_sha256"] == metrics["bundle_sha256"]
    assert version.tags["gguf_sha256"] == metrics["gguf"]["sha256"]
    assert "eval.per_source.chat.loss" not in version.tags

    seen = [caplog.text, *capsys.readouterr(), result.summary, json.dumps(run.data.params)]
    seen += [p.read_text(errors="replace") for p in (*out.rglob("*.json"), *out.rglob("*.md"))]
    assert not [text for text in seen if SECRET in text]


def test_champion_moves_only_when_eval_meets_the_bars(project):
    import mlflow

    quick = ("publish.hf_export=false",)
    assert "v1 (champion)" in publish.run(params(project, *quick), project).summary
    parent = mlflow.MlflowClient(db(project))
    parent_id = parent.create_run(parent.get_experiment_by_name("chat-pipeline").experiment_id).info.run_id
    write_eval(project, val_loss=4.3)
    second = publish.run(params(project, *quick, f"tracking.parent_run_id={parent_id}"), project)
    assert "registry chat-pipeline v2 (champion stays at v1: val_loss 4.3 > 4.0)" in second.summary
    assert second.metrics["registry"]["champion_moved"] is False
    assert parent.get_run(second.mlflow_run_id).data.tags["mlflow.parentRunId"] == parent_id
    assert parent.get_model_version("chat-pipeline", "2").tags["bars"] == "failed: val_loss 4.3 > 4.0"
    assert int(parent.get_model_version_by_alias("chat-pipeline", "champion").version) == 1
    write_eval(project)
    assert "v3 (champion)" in publish.run(params(project, *quick), project).summary
    assert int(parent.get_model_version_by_alias("chat-pipeline", "champion").version) == 3


def test_a_missing_metric_fails_its_bar():
    bars = test_params().publish.bars
    assert registry.failures(GOOD, bars) == []
    assert registry.failures({"val_loss": 3.0, "turn_rate": 0.2}, bars) == [
        "turn_rate 0.2 < 0.5", "humaneval.pass@1_greedy missing"]


def test_without_eval_publish_is_a_one_line_error(project, monkeypatch):
    from chatpipe.cli import app

    project.metrics("eval").unlink()
    monkeypatch.chdir(project.root)
    result = CliRunner().invoke(app, ["publish", "-C", str(project.root), *(f"-S{o}" for o in [*TINY, "sft.enabled=false"])])
    assert result.exit_code == 2, result.output
    assert "metrics/eval.json: not found; run `chatpipe eval` first" in result.stderr
    assert "Traceback" not in result.stderr and not (project.root / "dist").exists()


def test_eval_of_another_checkpoint_or_tokenizer_is_refused(project):
    write_eval(project, checkpoint="checkpoints/full/step-000002")
    with pytest.raises(InputError, match="is for checkpoints/full/step-000002.*run `chatpipe eval` again"):
        publish.run(params(project), project)
    write_eval(project)
    original = json.loads((project.tokenizer / "tokenizer.json").read_text())
    project.tokenizer.unlink()  # the symlink: in its place, the same tokenizer saved differently (another hash)
    project.tokenizer.mkdir()
    (project.tokenizer / "tokenizer.json").write_text(json.dumps(original))
    with pytest.raises(InputError, match="is not the tokenizer .* was trained with"):
        publish.run(params(project), project)
    assert not (project.root / "dist").exists()


def test_moe_model_is_bundled_without_hf_export(built, empty_mlflow_db, tmp_path):
    layout, _, _ = built
    root = linked(tmp_path / "moe", layout)
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    project = Layout(root)
    vocab = json.loads((layout.shards / "manifest.json").read_text())["vocab_size"]
    config = ModelConfig(vocab_size=vocab, n_layer=1, n_embd=32, n_head=2, block_size=32,
                         moe=MoEConfig(n_experts=2, top_k=1))
    checkpoint.save(project.checkpoints / "full", 1, Transformer(config), [],
                    {"step": 1, "phase": "full", "inputs": {"model": config.to_dict(),
                                                             "tokenizer": file_hash(layout.tokenizer)}}, keep=1)
    (root / "metrics").mkdir()
    write_eval(project)
    result = publish.run(params(project, "publish.registry=null"), project)
    assert "no HF export: MoE models have no exact transformers equivalent" in result.summary
    assert result.metrics["hf_export"] is False and result.metrics["registry"] is None
    assert not (root / "dist" / "tiny-chat" / "hf").exists()
    assert bundle.load(root / "dist" / "tiny-chat").config.moe == config.moe

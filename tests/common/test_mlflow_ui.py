"""What `mlflow ui` shows a user, in a real headless browser against a real MLflow server: the link the
demo prints opens the experiment on its runs table (not MLflow 3's GenAI overview), with one parent run per
flow run and, expanded, a nested run per stage; the experiment is marked as model training."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chatpipe.tasks.common.config import TrackingParams
from chatpipe.tasks.common.tracking import EXPERIMENT_KIND, MODEL_TRAINING, Run, ui_url

STAGES = ("ingest", "pilot", "full")

pytestmark = pytest.mark.integration  # `make test-quick` leaves it out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """A tracking store with one flow run (a parent and a nested run per stage), served by `mlflow server`."""
    root = tmp_path_factory.mktemp("mlflow")
    cfg = TrackingParams(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="chat-pipeline")
    with Run(cfg, root, "chat-pipeline flow-run-one") as parent:
        for stage in STAGES:
            with Run(cfg.model_copy(update={"parent_run_id": parent.run_id}), root, stage) as run:
                for step in range(1, 21):
                    run.log(step, {"loss": 6 - 0.1 * step})
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", cfg.uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        yield base, parent
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_experiment_is_marked_as_model_training(mlflow_ui):
    _, parent = mlflow_ui
    assert parent.client.get_experiment(parent.experiment_id).tags[EXPERIMENT_KIND] == MODEL_TRAINING


def test_the_printed_link_opens_on_the_runs_with_a_nested_run_per_stage(mlflow_ui, browser):
    base, parent = mlflow_ui
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(ui_url(parent.experiment_id, base=base))
    page.get_by_text("chat-pipeline flow-run-one").wait_for(timeout=60_000)   # the flow run's parent run
    assert "/runs" in page.url and "overview" not in page.url
    page.get_by_text(f"{len(STAGES) + 1} matching runs").wait_for(timeout=10_000)
    assert page.get_by_role("link", name="pilot", exact=True).count() == 0       # nested: hidden under the parent
    page.get_by_role("row").filter(has_text="chat-pipeline flow-run-one").get_by_role("button").first.click()
    for stage in STAGES:                                                      # expanded: the stages' runs
        page.get_by_role("link", name=stage, exact=True).wait_for(timeout=10_000)
    page.close()

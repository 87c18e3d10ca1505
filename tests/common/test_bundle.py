"""Model bundles: what publish writes and serve reads must load exactly, and refuse to load when changed."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_model

from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.train import checkpoint


def test_bundle_loads_the_checkpoint_weights(trained, bundle_path):
    layout, _ = trained
    model, state = checkpoint.latest_model(layout.checkpoints / "full")
    loaded = bundle.load(bundle_path)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    torch.testing.assert_close(loaded.model(x)[0], model(x)[0], rtol=0, atol=0)
    assert loaded.name == "tiny-test" and state["path"].endswith(f"step-{state['step']:06d}")
    assert loaded.tokenizer.decode(loaded.stop_ids, skip_special_tokens=False) == "<|user|><|system|><|endoftext|>"
    sums = json.loads((bundle_path / "checksums.json").read_text())
    assert set(sums) == {"model.safetensors", "config.json", "tokenizer.json", "chat_format.json", "generation_config.json",
                         "README.md"}
    assert loaded.chat.name == "ours"


def test_float_weights_are_save_models_file(trained, bundle_path, tmp_path):
    """A float bundle's weights are safetensors' save_model output as is; weights_bytes is that file's size."""
    layout, _ = trained
    model, _ = checkpoint.latest_model(layout.checkpoints / "full")
    save_model(model, str(tmp_path / "direct.safetensors"))
    stored = (bundle_path / "model.safetensors").read_bytes()
    assert stored == (tmp_path / "direct.safetensors").read_bytes() and bundle.weights_bytes(model) == len(stored)


@pytest.mark.parametrize("damage, what", [
    (lambda d: (d / "README.md").write_text("edited"), "README.md is changed"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda d: (d / "extra.bin").write_bytes(b"x"), "extra.bin is unexpected"),
    (lambda d: (d / "checksums.json").unlink(), "not a model bundle"),
])
def test_a_changed_bundle_is_refused(bundle_path, tmp_path, damage, what):
    copy = shutil.copytree(bundle_path, tmp_path / "b")
    damage(copy)
    with pytest.raises(InputError, match=what):
        bundle.load(copy)


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no complete checkpoint; train first"):
        checkpoint.latest_model(tmp_path / "checkpoints" / "full")

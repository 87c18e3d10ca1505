"""A ternary selection (model/config.py TernarySelection): a `quant: ternary` model ternary in some block linears
only, by role and block range. Built, checked, packed into a bundle, served on integer codes beside float
linears, sized by model-info, and exported to GGUF with TQ2_0 and F16 linears side by side."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from chatpipe.model.config import ROLES, FieldError, ModelConfig, TernarySelection
from chatpipe.model.decode import Decoder
from chatpipe.model.info import bundle_bytes
from chatpipe.model.presets import preset
from chatpipe.model.quant import BitLinear
from chatpipe.model.ternary_linear import TernaryLinear
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.config import ConfigError
from tests.conftest import test_params
from tests.publish.test_hf_export import perturbed

MLP_INNER = TernarySelection(roles=("w1", "w2", "w3", "wq"), skip_first=1, skip_last=1)


def config(selection: TernarySelection | None = MLP_INNER, **kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 97, "n_layer": 4, "n_embd": 64, "n_head": 4, "block_size": 32,
                          "quant": "ternary", "ternary": selection, **kw})


def kinds(model: nn.Module) -> dict[str, str]:
    return {f"{i}.{role}": type(getattr(block.attn if role in ("wq", "wk", "wv", "wo") else block.mlp, role)).__name__
            for i, block in enumerate(model.blocks) for role in ROLES}


def test_the_selection_builds_bitlinears_exactly_where_it_says():
    built = kinds(Transformer(config()))
    ternary = {f"{i}.{r}" for i in (1, 2) for r in MLP_INNER.roles}
    assert {k for k, v in built.items() if v == "BitLinear"} == ternary
    assert {v for k, v in built.items() if k not in ternary} == {"Linear"}
    assert set(kinds(Transformer(config(None))).values()) == {"BitLinear"}  # no selection: every block linear
    assert ModelConfig.from_dict(config().to_dict()) == config()  # a checkpoint's config.json round trip


@pytest.mark.parametrize("selection, message", [
    (dict(roles=["wz"]), "ternary.roles: 'wz' is not a block linear"),
    (dict(roles=[]), "ternary.roles: must name one or more"),
    (dict(skip_first=2, skip_last=2), "ternary.skip_last: skip_first + skip_last = 4 leaves none of the 4 blocks"),
    (dict(roles=["w1", "w2"], ffn_hidden=170), "ternary.roles: w2 has rows of 170 weights; a ternary linear packs 4 "
                                               "codes a byte"),  # a shape the bundle and kernels cannot hold
])
def test_a_bad_selection_is_refused_in_one_line(selection, message):
    shape = {k: selection.pop(k) for k in ("ffn_hidden",) if k in selection}
    with pytest.raises(FieldError, match=re.escape(message)):
        config(selection, **shape)
    with pytest.raises(FieldError, match="ternary: selects linears of a quant: ternary model"):
        config(quant=None)
    with pytest.raises(ConfigError, match=re.escape(f"distill.student.{message}")):
        test_params("distill.enabled=true", "distill.student.quant=ternary", "model.n_layer=4",
                    *(f"distill.student.{k}={v}" for k, v in shape.items()), f"distill.student.ternary={selection}")


def test_a_mixed_bundle_serves_float_and_integer_linears_side_by_side(built, tmp_path):
    """Packed where ternary, float elsewhere; loaded, the ternary ones run on integer codes (TernaryLinear), and the
    decoder (each type fused alone) gives the QAT model's greedy tokens; model-info's size is the file's."""
    layout, _, _ = built
    qat = perturbed(config(vocab_size=bundle.Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json"))
                           .get_vocab_size()))
    directory = bundle.write(tmp_path / "mixed", qat, layout.tokenizer, "# mixed\n")
    loaded = bundle.load(directory).model
    assert {k: v.replace("BitLinear", "TernaryLinear") for k, v in kinds(qat).items()} == kinds(loaded)
    ids = torch.randint(0, qat.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids)[0], qat(ids)[0], rtol=0, atol=1e-4)
        expected, seq = [], ids[0].tolist()
        for _ in range(8):
            expected.append(int(qat(torch.tensor([seq]))[0][0, -1].argmax()))
            seq.append(expected[-1])
    assert list(Decoder(loaded).tokens(ids[0].tolist(), 8, temperature=0)) == expected
    stored = load_file(str(directory / "model.safetensors"))
    weights = sum(t.numel() * t.element_size() for t in stored.values())
    assert bundle_bytes(qat.config)["bytes"] == weights  # a tied head: stored once, counted once
    assert bundle_bytes(qat.config)["ternary_linears"] == 8 and bundle_bytes(qat.config)["linears"] == 28


def test_model_info_reports_a_selections_size():
    out = subprocess.run([sys.executable, "-m", "chatpipe.cli", "model-info", "chat-7m", "--ternary",
                          "{roles: [w1, w2, w3], skip_first: 1, skip_last: 1}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    b = bundle_bytes(preset("chat-7m", quant="ternary", ternary=TernarySelection(("w1", "w2", "w3"), 1, 1)))
    assert (f"ternary       12 of 42 block linears (w1, w2, w3; float: the first 1 and last 1 blocks): bundle "
            f"weights {b['bytes'] / 2**20:.1f} MiB") in out.stdout
    bad = subprocess.run([sys.executable, "-m", "chatpipe.cli", "model-info", "chat-7m", "--ternary", "{roles: [x]}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "'x' is not a block linear" in bad.stderr


def test_a_selection_goes_out_as_gguf_with_ternary_and_float_linears(built, tmp_path):
    from chatpipe.tasks.publish import gguf_export
    from tests.publish.test_gguf_export import llama_logits, text_ids, vocab

    layout, _, _ = built
    student = perturbed(config(vocab_size=vocab(layout), n_layer=3, n_embd=256, ffn_hidden=512,
                               ternary=TernarySelection(("w1", "w2", "w3"), 0, 1)))
    info = gguf_export.export_dir(student, layout.tokenizer, tmp_path / "s.gguf")
    assert info["types"] == {"F16": 1 + 4 * 3 + 3, "F32": 7, "TQ2_0": 6}  # tied embd; attention; last MLP
    ids = text_ids(layout, 32)
    theirs = llama_logits(tmp_path / "s.gguf", ids)
    with torch.no_grad():
        expected = student(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(theirs - expected).max() < 0.1 * np.abs(expected).max()
    assert isinstance(student.blocks[2].mlp.w1, nn.Linear) and not isinstance(student.blocks[2].mlp.w1, BitLinear)
    assert not any(isinstance(m, TernaryLinear) for m in student.modules())

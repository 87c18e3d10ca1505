"""Our folders are `chatpipe.<folder>`: nothing of ours takes a name a PyPI package may own.

The folders flows/, tasks/, model/, kernels/ and serve/ sit at the top of the repository without an
`__init__.py` (chatpipe/__init__.py maps them). Before, `kernels` was ours as a bare package, and the newest
transformers, which imports Hugging Face's `kernels` whenever one is installed, failed to load our own HF
export from the repository root: `ImportError: cannot import name 'CUDAProperties' from 'kernels'`.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.publish import hf_export

ROOT = Path(__file__).resolve().parents[1]
BARE = ("flows", "tasks", "model", "kernels", "serve")


def test_no_bare_name_is_ours_once_installed():
    """Outside the repository nothing answers to a bare name; inside it, a folder is at most an empty namespace
    (which any installed package of that name outranks), never a package of ours."""
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u, sys; "
                          f"print([str(u.find_spec(n) and u.find_spec(n).origin) for n in {BARE!r}])"],
                         cwd=ROOT.parent, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['None',", "'None',", "'None',", "'None',", "'None']"]
    for name in BARE:
        assert not (ROOT / name / "__init__.py").exists(), f"{name}/__init__.py would shadow a PyPI `{name}`"
        spec = importlib.util.find_spec(name)  # pytest puts the repository root on sys.path
        assert spec is None or spec.origin is None, f"{name} imports as {spec.origin}"


def throwaway_venv(path: Path) -> Path:
    """A venv beside ours that sees our packages (a .pth at the end of its path) and gets the newest
    transformers and Hugging Face's `kernels` of its own, from PyPI."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "chatpipe_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "transformers", "kernels"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode:
        pytest.skip(f"PyPI unreachable, no newest transformers to try: {pip.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.mark.integration
def test_the_newest_transformers_with_hf_kernels_loads_our_export_from_the_repository_root(built, tmp_path):
    layout, _, _ = built
    vocab = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(vocab_size=vocab, n_layer=2, n_embd=64, n_head=4, block_size=32)).eval()
    export = hf_export.export(ours, layout.tokenizer, tmp_path / "hf")
    ids = torch.randint(0, vocab, (1, 16))
    torch.save({"ids": ids, "logits": ours(ids)[0].detach()}, tmp_path / "expected.pt")

    python = throwaway_venv(tmp_path / "venv")
    script = f"""
import kernels, torch, transformers
from transformers import AutoModelForCausalLM
assert kernels.__file__ and "site-packages" in kernels.__file__, kernels.__file__  # Hugging Face's, not a folder of ours
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = AutoModelForCausalLM.from_pretrained({str(export)!r}).eval()
with torch.no_grad():
    diff = (model(expected["ids"]).logits - expected["logits"]).abs().max().item()
print(transformers.__version__, diff)
"""
    run = subprocess.run([str(python), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    version, diff = run.stdout.split()
    assert float(diff) < 1e-4, f"transformers {version}: logits differ by {diff}"

import pytest

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError


def test_defaults_are_the_seed_chat_config():
    p = load_params(base=PROJECT_ROOT / "params.yaml")
    assert p.tokenizer.vocab_size == 4096
    assert p.model.preset == "chat-7m"
    from chatpipe.tasks.train.loop import model_config

    shape = model_config(p, 4096)  # the preset's shape: params.yaml sets only the context
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.block_size) == (6, 256, 8, 256)
    assert p.model.init is None and p.tokenizer.from_ is None  # random init, a BPE trained here
    assert (p.train.batch_size, p.train.lr, p.train.lr_min, p.train.warmup_steps) == (16, 3e-4, 3e-5, 1000)
    assert (p.train.beta2, p.train.weight_decay, p.train.grad_clip) == (0.95, 0.1, 1.0)
    assert (p.train.pilot_steps, p.train.full_steps, p.train.sample_every) == (5000, 50000, 500)


def test_overlay_then_override():
    p = load_params([PROJECT_ROOT / "configs/tiny.yaml"], ["tokenizer.vocab_size=8192"],
                    base=PROJECT_ROOT / "params.yaml")
    assert p.tokenizer.vocab_size == 8192          # override beats overlay
    assert p.model.n_layer == 4                     # from the overlay
    assert p.ingest.sources["stdlib"].max_files == 300
    assert p.ingest.sources["stdlib"].license == "psf-2.0"   # deep merge keeps the base's keys


@pytest.mark.parametrize("override, names", [
    ("tokenizer.vocab_sise=100", "tokenizer.vocab_sise: unknown key"),
    ("tokenizer.vocab_size=many", "tokenizer.vocab_size"),
    ("tokenizer.vocab_size=10", "tokenizer.vocab_size"),
    ("shard.val_fraction=0.9", "shard.val_fraction"),
    ("ingest.sources.chat.kind=pdf", "ingest.sources.chat"),
    ("ingest.sources.stdlib.roots=7", "ingest.sources.stdlib.local_code.roots"),
    ("bogus=1", "bogus: unknown key"),
    ("model.init=Qwen/Qwen3-0.6B", "model.init"),        # a checkpoint is hf:<dir or hub id>
    ("tokenizer.from=/models/qwen", "tokenizer.from"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ConfigError) as e:
        load_params(overrides=[override], base=PROJECT_ROOT / "params.yaml")
    assert names in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("tokenizer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_params([broken], base=PROJECT_ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: params file not found"):
        load_params([tmp_path / "missing.yaml"], base=PROJECT_ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(overrides=["novalue"], base=PROJECT_ROOT / "params.yaml")


def test_a_moe_section_in_params_builds_a_moe_model():
    from chatpipe.model.config import MoEConfig
    from chatpipe.tasks.train.loop import model_config

    cfg = model_config(load_params(overrides=["model.moe={n_experts: 4, top_k: 2, every: 2}"]), 512)
    assert cfg.moe == MoEConfig(n_experts=4, top_k=2, every=2) and cfg.is_moe_layer(1) and not cfg.is_moe_layer(0)

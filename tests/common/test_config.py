import pytest

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError


def test_defaults_are_the_seed_chat_config():
    p = load_params(base=PROJECT_ROOT / "params.yaml")
    assert p.tokenizer.vocab_size == 4096
    assert p.model.preset == "chat-7m"
    from chatpipe.tasks.train.pretrained import model_config

    shape = model_config(p, 4096)  # the preset's shape: params.yaml sets only the context
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.block_size) == (6, 256, 8, 256)
    assert p.model.init is None and p.tokenizer.from_ is None  # random init, a BPE trained here
    assert (p.train.batch_size, p.train.optimizer.lr, p.train.schedule.lr_min, p.train.schedule.warmup_steps) == \
        (16, 3e-4, 3e-5, 1000)
    assert (p.train.optimizer.beta2, p.train.optimizer.weight_decay, p.train.optimizer.grad_clip) == (0.95, 0.1, 1.0)
    assert (p.pilot.steps, p.full.steps, p.train.sample.every) == (5000, 50000, 500)


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
    from chatpipe.tasks.train.pretrained import model_config

    cfg = model_config(load_params(overrides=["model.moe={n_experts: 4, top_k: 2, every: 2}"]), 512)
    assert cfg.moe == MoEConfig(n_experts=4, top_k=2, every=2) and cfg.is_moe_layer(1) and not cfg.is_moe_layer(0)


def test_the_model_section_is_model_configs_fields():
    """The params schema is generated from model/config.py's dataclasses: the same keys, the same MoE defaults."""
    import dataclasses

    from chatpipe.model.config import ModelConfig, MoEConfig
    from chatpipe.tasks.common.config import ModelOverrides, ModelParams, MoEParams

    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]  # vocab: the tokenizer's
    assert list(ModelOverrides.model_fields) == fields and set(ModelParams.model_fields) == {*fields, "preset", "init"}
    assert {k: f.get_default() for k, f in MoEParams.model_fields.items() if not f.is_required()} == \
        {f.name: f.default for f in dataclasses.fields(MoEConfig) if f.default is not dataclasses.MISSING}
    p = load_params(overrides=["model.moe={n_experts: 4, top_k: 2, expert_ffn_mult: 0.5}"])
    assert p.model.moe.expert_ffn_mult == 0.5


@pytest.mark.parametrize("overrides, message", [
    (["model.n_kv_heads=3"], "model.n_kv_heads: 3 must be >= 1 and divide n_head=8"),
    (["model.n_embd=100"], "model.n_embd: 100 is not divisible by n_head=8"),
    (["model.moe={n_experts: 4, top_k: 8}"], "model.moe.top_k: must be in [1, n_experts=4], got 8"),
    (["model.moe={n_experts: 4}"], "model.moe.top_k: missing"),
    (["model.quant=ternary", "model.moe={n_experts: 2, top_k: 1}"], "model.quant: 'ternary' is not supported with moe"),
    (["model.quant=binary"], "model.quant: must be 'ternary' or None"),
    (["model.preset=gpt-5"], "model.preset: unknown model preset 'gpt-5'; known: chat-7m"),
    (["model.head_size=64"], "model.head_size: moved to model.head_dim"),              # ModelConfig's old names
    (["distill.student.ffn_size=64"], "distill.student.ffn_size: moved to distill.student.ffn_hidden"),
    (["model.vocab_size=512"], "model.vocab_size: moved to tokenizer.vocab_size"),
    (["model.init=hf:/models/x", "model.moe={n_experts: 2, top_k: 1}"],
     "model.moe: not used with model.init: the shape is hf:/models/x's; remove it"),
    (["model.init=hf:/models/x", "model.block_size=0"], "model.block_size: must be >= 1, got 0"),
    (["distill.enabled=true", "model.moe={n_experts: 2, top_k: 1}"],  # the student (quant: ternary) on a MoE model
     "distill.student.quant: 'ternary' is not supported with moe"),
])
def test_model_rules_are_checked_when_params_load(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_params(overrides=overrides, base=PROJECT_ROOT / "params.yaml")
    assert str(e.value).startswith(f"params: {message}") and "\n" not in str(e.value), str(e.value)


def test_model_rules_pass_what_they_should():
    load_params(overrides=["model.moe={n_experts: 2, top_k: 1}"])  # distill off: its ternary student is not built
    load_params(overrides=["model.init=hf:/models/x", "model.n_layer=3", "model.quant=ternary"])  # compared later
    p = load_params(overrides=["model.n_embd=128", "model.n_head=2", "model.head_dim=32"])
    assert p.model.overrides() == {"n_embd": 128, "n_head": 2, "head_dim": 32, "block_size": 256}

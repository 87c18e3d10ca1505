"""Load a DCP checkpoint into a fully_shard-ed model and its optimizers at this world size, save it again.

`python -m torch.distributed.run --nproc_per_node N tests/train/fsdp_reshard.py SRC DST`: the model and
optimizer state that DST holds are what N ranks restored from SRC (tests/train/test_fsdp.py compares them).
"""
import sys
from pathlib import Path

import torch

from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.train import checkpoint, parallel
from chatpipe.tasks.train.distributed import Ranks
from chatpipe.tasks.train.optim import Optimizers
from chatpipe.tasks.train.resume import RECIPE

source, target = map(Path, sys.argv[1:3])
state = checkpoint.read_state(source)
ranks = Ranks()
ranks.start("cpu", group=True)
cfg = load_params([], [], base=PROJECT_ROOT / "params.yaml").train.model_copy(
    update={k: state["inputs"]["recipe"][k] for k in RECIPE})
model = Transformer(ModelConfig.from_dict(state["inputs"]["model"]))
checkpoint.load(source, model, ranks.rank)
parallel.MODES["fsdp"].wrap(model, cfg, ranks, torch.device("cpu"), None)
optimizers = Optimizers(model, cfg)
checkpoint.load_optimizer(source, model, optimizers)
checkpoint.save_sharded(target.parent, int(target.name[5:]), model, optimizers, state, 1, ranks)

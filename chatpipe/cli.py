"""`chatpipe`: run one stage by hand (and from DVC's stage commands).

Each command loads params (params.yaml, `--params` overlays, `-S key=value` overrides), calls the
stage's `run`, and prints its one-line summary. User errors are one line on stderr and a non-zero exit;
`--debug` shows the traceback instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
import yaml

from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import load_params, params_dict
from chatpipe.tasks.common.errors import ChatpipeError, StageFailed
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.pipeline import PIPELINE, Stage
from chatpipe.tasks.train.phases import PHASES as TRAINING_PHASES

# What the pipeline does not need from its libraries, off unless the user sets it: Prefect's server telemetry
# (it posts to prefect.io; on the temporary server's fresh SQLite it raced the first flow run: `database is
# locked`, with a traceback, in every `make demo`) and MLflow's INFO lines about its own tables.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="chat-pipeline: raw conversations and code → a small served chat/code model.")

ParamsOpt = Annotated[Optional[list[Path]], typer.Option(
    "--params", "-p", help="Overlay file merged over params.yaml (repeatable), e.g. configs/tiny.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-S", help="Override one key, e.g. -S tokenizer.vocab_size=8192 (repeatable).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
DirOpt = Annotated[Path, typer.Option("--dir", "-C", help="Project directory to run in.")]


def _fail(message: str, code: int) -> None:
    typer.echo(f"chatpipe: error: {message}", err=True)
    raise typer.Exit(code)


class _NoTraceback(logging.Filter):
    """Libraries (Prefect) log a failed task with its traceback; the user gets our one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _quiet_libraries(debug: bool) -> None:
    """Libraries say what went wrong; what went right is the stages' own summaries (and, from Prefect, which
    flow run this is). Prefect's temporary-server notices and each task's "Finished in state" go."""
    for name in ("httpx", "httpcore", "mlflow", "alembic", "prefect", "prefect.task_runs", "gguf"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("prefect.flow_runs").setLevel(logging.DEBUG if debug else logging.INFO)  # the summaries
    if not debug:
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(_NoTraceback())


def _call(fn: Callable, debug: bool):
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="chatpipe: %(levelname)s: %(message)s", stream=sys.stderr)
    _quiet_libraries(debug)
    try:
        return fn()
    except ChatpipeError as e:
        if debug:
            raise
        _fail(str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted; no partial output was kept", 130)
    except Exception as e:  # a bug: still one line for the user, the traceback with --debug
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", 1)


def _stage(stage: Stage, params: ParamsOpt, set_: SetOpt, debug: bool, directory: Path, **args) -> None:
    """Run one stage of the table in `directory`; a verdict to stop (an unhealthy pilot) exits non-zero."""
    def go():
        os.chdir(directory)
        result = stage(load_params(params or [], set_ or []), Layout(), **args)
        if not result.ok:
            raise StageFailed(result.summary)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(result.summary)
    _call(go, debug)


def _stage_command(stage: Stage) -> None:
    def command(params: ParamsOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                directory: DirOpt = Path(".")) -> None:
        _stage(stage, params, set_, debug, directory)
    command.__doc__ = stage.help
    app.command(stage.cli)(command)


for _spec in PIPELINE.values():  # every stage with a command of its own: ingest, tokenizer, shard, gate, ...
    if not _spec.args:
        _stage_command(_spec)
PHASES = list(TRAINING_PHASES)  # the phase table (tasks/train/phases.py)


@app.command()
def train(phase: Annotated[str, typer.Option(help=f"{', '.join(PHASES)} (steps, and where it starts: the params "
                                                  "section of its name).")] = PHASES[0],
          params: ParamsOpt = None,
          set_: SetOpt = None, debug: DebugOpt = False, directory: DirOpt = Path("."),
          replace_stale: Annotated[bool, typer.Option(
              "--replace-stale", help="Checkpoints from other inputs are moved aside instead of refused.")] = False,
          ) -> None:
    """Train on the shards → checkpoints/<phase>/, metrics/<phase>.json, an MLflow run.

    Resumes from the latest checkpoint of the phase. Data-parallel under torchrun:
    `torchrun --nproc_per_node 2 $(which chatpipe) train`.
    """
    if phase not in PHASES:
        _fail(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}", 2)
    _stage(PIPELINE[phase], params, set_, debug, directory, replace_stale=replace_stale)


@app.command("dvc-yaml")
def dvc_yaml(directory: DirOpt = Path("."),
             check: Annotated[bool, typer.Option(help="Only compare: exit 1 if dvc.yaml differs.")] = False,
             debug: DebugOpt = False) -> None:
    """Write dvc.yaml from the stage table (tasks/pipeline.py); `--check` says whether it is current."""
    def go() -> bool:
        from chatpipe.dvc import render

        path, text = directory / "dvc.yaml", render()
        current = path.exists() and path.read_text() == text
        if check:
            typer.echo(f"{path}: {'current' if current else 'differs from the stage table (run chatpipe dvc-yaml)'}")
        elif not current:
            atomic.write_bytes(path, text.encode())
        if not check:
            typer.echo(f"{path}: {'unchanged' if current else 'written'} ({len(PIPELINE)} stages)")
        return current or not check
    if not _call(go, debug):
        raise typer.Exit(1)


@app.command("run")
def run_flow(params: ParamsOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
             directory: DirOpt = Path("."),
             train_pool: Annotated[Optional[str], typer.Option(
                 help="Run training as the train/<pool> deployment on a worker of that pool.")] = None) -> None:
    """Run the whole chat-pipeline Prefect flow here, on $PREFECT_API_URL, else the server of `chatpipe up`, else
    the Prefect profile's PREFECT_API_URL, else a temporary server."""
    def go():
        from chatpipe.flows.local import use_server

        use_server()  # before Prefect is imported: a server that does not answer is refused here, in one line
        from chatpipe.flows.chat_pipeline import chat_pipeline

        _quiet_libraries(debug)  # Prefect's handlers exist once it is imported
        summary = chat_pipeline(overlays=[str(p.resolve()) for p in params or []], overrides=list(set_ or []),
                                workdir=str(directory.resolve()), train_pool=train_pool)
        uri = summary["tracking_uri"]
        typer.echo(f"chat-pipeline: gate {summary['gate']}; pilot loss {summary['pilot_loss']:.3f} "
                   f"(val {summary['pilot_val_loss']:.3f}); full loss {summary['full_loss']:.3f} "
                   f"(val {summary['full_val_loss']:.3f})"
                   + (f"; sft val loss {summary['sft_val_loss']:.3f} on the assistant's turns"
                      if summary.get("sft_val_loss") is not None else "")
                   + f"\n  checkpoint: {summary['checkpoint']}\n"
                   f"  MLflow run: {summary['mlflow_run_id']} in {uri}\n  report: {summary['report']}\n"
                   f"  open the runs: mlflow ui --backend-store-uri {uri}  then open {summary['mlflow_ui']}\n"
                   f"  model bundle: {summary['bundle']} (val {summary['val_bpb']:.3f} bits/byte"
                   + (f", assistant turns {summary['assistant_bpb']:.3f}" if summary.get("assistant_bpb") else "")
                   + ")\n"
                   f"  serve it: chatpipe serve --model {summary['bundle']}  then open http://127.0.0.1:8000/chat")
        if summary["student_bundle"]:
            gap = summary["student_gap"]
            typer.echo(f"  distilled student: {summary['student_bundle']} ({gap['bundle_size_ratio']:.1f}x smaller; "
                       f"val loss {gap['val_loss']:+.3f}, {gap['val_bpb']:+.3f} bits/byte vs the teacher)")
    _call(go, debug)


@app.command()
def up(port: Annotated[int, typer.Option(help="Port of the local Prefect server.")] = 4200,
       debug: DebugOpt = False) -> None:
    """Start a local Prefect server, the process pools, the deployments, and workers for `local`, `cpu` and
    (with that device here) `cuda` / `vulkan`."""
    def go():
        from chatpipe.flows.local import local_pools
        from chatpipe.flows.local import up as start

        pools = local_pools()
        url = start(port, pools)
        typer.echo(f"Prefect server {url.removesuffix('/api')} (UI), pools {', '.join(pools)} with a worker each, "
                   f"deployments from prefect.yaml; `chatpipe run` uses it until `chatpipe down`, your Prefect "
                   f"profile is unchanged.\n  for the prefect CLI: export PREFECT_API_URL={url}"
                   f"\n  then run: prefect deployment run chat-pipeline/local --watch\n  stop: chatpipe down")
    _call(go, debug)


@app.command()
def worker(pool: Annotated[str, typer.Option(help="The work pool whose training runs this machine takes: cuda, "
                                                  "vulkan or cpu.")],
           workdir: Annotated[Path, typer.Option(help="Where its runs fetch their inputs and train.")]
           = Path("chatpipe-work"),
           debug: DebugOpt = False) -> None:
    """Take training runs of the train/<pool> deployment from the Prefect server at $PREFECT_API_URL (else
    `chatpipe up`'s, else the Prefect profile's): inputs and checkpoints through the flow's store (its credentials
    from the environment), code cloned at the flow's commit."""
    def go():
        from chatpipe.flows.local import worker as start

        start(pool, workdir)
    _call(go, debug)


@app.command()
def down(debug: DebugOpt = False) -> None:
    """Stop the workers and the Prefect server that `chatpipe up` started; `chatpipe run` no longer uses it."""
    def go():
        from chatpipe.flows.local import down as stop

        url = stop()
        exported = url is not None and os.environ.get("PREFECT_API_URL") == url
        typer.echo("stopped the workers and the Prefect server" + ("; now unset PREFECT_API_URL" if exported else ""))
    _call(go, debug)


ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="A model bundle: a directory (dist/<name>) or gs://bucket/prefix/<name>; or a pretrained "
                          "checkpoint as it is: gguf:<file or short name> (gguf:smollm2-135m-instruct) or hf:<dir>.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.")]


@app.command()
def serve(model: ModelOpt,
          host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
          api_key_file: Annotated[Optional[Path], typer.Option(
              help="File of API keys, one per line (also: $CHATPIPE_API_KEYS, comma-separated). "
                   "No key: no auth.")] = None,
          max_concurrent: Annotated[int, typer.Option(min=1, help="Generations running at once.")] = 8,
          queue_timeout: Annotated[float, typer.Option(
              min=0, help="Seconds a request waits for a free generation slot before a 429.")] = 30.0,
          max_prompt_tokens: Annotated[Optional[int], typer.Option(
              help="Longest prompt accepted (default: the model's context - 1).")] = None,
          max_tokens: Annotated[Optional[int], typer.Option(
              help="Largest max_tokens a request may ask for (default: the model's context).")] = None,
          max_request_bytes: Annotated[Optional[int], typer.Option(
              help="Largest request body, in bytes (default: 1 MiB); a larger one gets a 413 unread.")] = None,
          device: DeviceOpt = "auto", debug: DebugOpt = False) -> None:
    """Serve a model: an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models) and a /chat page."""
    def go():
        from chatpipe.serve.app import create_app
        from chatpipe.serve.auth import ENV_VAR, Keys
        from chatpipe.serve.engine import Engine
        from chatpipe.serve.server import bind, is_loopback, serve_forever, url
        from chatpipe.serve.source import open_bundle

        keys = Keys.configured(api_key_file)
        engine = Engine(open_bundle(model, device), max_concurrent, queue_timeout)
        api = create_app(engine, keys, max_prompt_tokens, max_tokens, max_request_bytes)
        sock = bind(host, port)
        if not keys.enabled and not is_loopback(host):
            logging.getLogger("chatpipe").warning(
                f"no API key and listening on {host}: anyone who can reach this port can use the model "
                f"(set ${ENV_VAR} or --api-key-file)")
        base = url(sock)
        typer.echo(f"serving {engine.name} ({engine.bundle.path})\n  API: {base}/v1 (OpenAI-compatible; "
                   f"API keys {'required' if keys.enabled else 'off'})\n  chat page: {base}/chat")
        serve_forever(api, sock)
        engine.close()
        typer.echo("stopped")
    _call(go, debug)


@app.command()
def chat(model: ModelOpt, device: DeviceOpt = "auto",
         temperature: Annotated[Optional[float], typer.Option(
             min=0, max=2, help="Sampling temperature (default: the bundle's); 0 is greedy.")] = None,
         top_p: Annotated[Optional[float], typer.Option(min=0, max=1)] = None,
         top_k: Annotated[Optional[int], typer.Option(min=1)] = None,
         max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Longest answer, in tokens.")] = None,
         seed: Annotated[Optional[int], typer.Option(help="Same seed, same answers.")] = None,
         debug: DebugOpt = False) -> None:
    """Chat with a model in the terminal (no server): /reset forgets the conversation, /exit or Ctrl-D quits."""
    def go():
        from chatpipe.serve.engine import Engine
        from chatpipe.serve.source import open_bundle
        from chatpipe.serve.terminal import chat as converse

        engine = Engine(open_bundle(model, device), max_concurrent=1)
        chosen = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_tokens": max_tokens,
                  "seed": seed}
        sampling = dataclasses.replace(engine.defaults(), **{k: v for k, v in chosen.items() if v is not None})
        converse(engine, sampling, sys.stdin, sys.stdout, sys.stderr, interactive=sys.stdin.isatty())
    _call(go, debug)


@app.command()
def gguf(model: ModelOpt,
         out: Annotated[Path, typer.Argument(help="The GGUF file to write (under a temp name, then renamed).")],
         type_: Annotated[str, typer.Option("--type", help="Float tensors: f16 or q8_0.")] = "f16",
         ternary: Annotated[str, typer.Option(help="A ternary model's linears: tq2_0 or tq1_0.")] = "tq2_0",
         debug: DebugOpt = False) -> None:
    """Write any model `serve` takes (a bundle, gs://..., gguf:, hf:) as one GGUF file for llama.cpp/Ollama."""
    def go():
        from chatpipe.serve.source import open_bundle
        from chatpipe.tasks.common.errors import InputError
        from chatpipe.tasks.publish import gguf_export

        loaded = open_bundle(model, "cpu")
        if why := gguf_export.unsupported(loaded.model, loaded.tokenizer):
            raise InputError(f"{model}: cannot export to GGUF: {why}")
        try:
            info = gguf_export.export(loaded.model, loaded.tokenizer, loaded.chat, out, type_, ternary, loaded.name)
        except ValueError as e:
            raise InputError(str(e)) from None
        typer.echo(f"{out} ({info['bytes'] / 1e6:.1f} MB, {info['arch']}, {info['type']}; sha256 {info['sha256']})")
    _call(go, debug)


@app.command("model-info")
def model_info(preset: Annotated[str, typer.Argument(
                   help="A preset name (e.g. chat-7m), or a checkpoint: hf:<dir or org/name> (Llama/Qwen3) or "
                        "gguf:<file or short name> (Llama).")],
               weights: Annotated[str, typer.Option(help="Training weights: fp32, or bf16 (bf16 weights, "
                                                         "grads and AdamW moments, as train.weights: bf16).")] = "fp32",
               activation_checkpointing: Annotated[bool, typer.Option(
                   "--activation-checkpointing", help="Count activations as with per-block checkpointing.")] = False,
               lora_rank: Annotated[Optional[int], typer.Option(
                   help="LoRA rank: frozen base, adapters on wq,wk,wv,wo,w1,w2,w3 trained.")] = None,
               batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
               seq_len: Annotated[Optional[int], typer.Option(help="Tokens per sequence (default: block size).")]
               = None,
               gpus: Annotated[int, typer.Option(help="GPUs the batch is split over; memory is per GPU.")] = 1,
               parallel: Annotated[str, typer.Option(help="ddp (each GPU holds the whole model and optimizer) or "
                                                          "fsdp (sharded over the GPUs), as train.parallel.")] = "ddp",
               ternary: Annotated[Optional[str], typer.Option(
                   help="A ternary model: 'all', or a selection as model.ternary takes it, e.g. "
                        "'{roles: [w1, w2, w3], skip_first: 2, skip_last: 2}'; reports its bundle size.")] = None,
               debug: DebugOpt = False) -> None:
    """Parameters (total/active), FLOPs per token and per-GPU training memory of a model preset or checkpoint."""
    def go():
        from chatpipe.model import checkpoints
        from chatpipe.model.config import FieldError
        from chatpipe.model.info import describe
        from chatpipe.model.presets import PRESETS
        from chatpipe.tasks.common.errors import ConfigError, InputError

        if not checkpoints.prefix(preset) and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}, or {checkpoints.USAGE}")
        if weights not in ("fp32", "bf16"):
            raise ConfigError(f"--weights must be fp32 or bf16, got {weights!r}")
        if parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"--parallel must be ddp or fsdp, got {parallel!r}")
        for name, value in (("--lora-rank", lora_rank), ("--batch-size", batch_size), ("--seq-len", seq_len),
                            ("--gpus", gpus)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        try:
            shape = checkpoints.read_config(preset) if checkpoints.prefix(preset) else PRESETS[preset]
            if ternary:
                selection = None if ternary == "all" else yaml.safe_load(ternary)
                if selection is not None and not isinstance(selection, dict):
                    raise ConfigError(f"--ternary: expected 'all' or a mapping such as '{{roles: [w1, w2, w3]}}', "
                                      f"got {ternary!r}")
                shape = dataclasses.replace(shape, quant="ternary", ternary=selection)
            typer.echo(describe(shape, batch_size, weights=weights, activation_checkpointing=activation_checkpointing,
                                lora_rank=lora_rank, seq_len=seq_len, gpus=gpus, parallel=parallel, name=preset))
        except FieldError as e:
            raise ConfigError(f"--ternary: {e}") from None
        except ValueError as e:  # model/hf.py, model/gguf.py: the checkpoint cannot be read, or is not one we run
            raise InputError(str(e)) from None
    _call(go, debug)


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                directory: DirOpt = Path(".")) -> None:
    """Validate and print the resolved params (params.yaml + overlays + overrides)."""
    def go():
        os.chdir(directory)
        typer.echo(yaml.safe_dump(params_dict(load_params(params or [], set_ or [])), sort_keys=False))
    _call(go, debug)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

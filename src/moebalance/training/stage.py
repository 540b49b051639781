"""What the training stages (pretrain, sft) share: their command-line options, the MLflow
logging of step metrics, torchrun set-up, and the train-then-write-outputs sequence.

Outputs under --out-dir, written by rank 0 once training is complete:

    model/            Hugging Face model folder (with the tokenizer, so it loads on its own)
    metrics.parquet   one row per optimizer step
    routing.parquet   one row per (step, MoE layer, expert)
    provenance.json   machine, kernels, library versions, threads and commit of the run

The pretrain stage also writes ``snapshots/``: the model every ``snapshot_every`` steps, and
``balance.json``: the final validation of held-out balance on the val split's balance set
(:func:`moebalance.balance.measure`), which the sweep's selection rule reads.
Checkpoints go to --checkpoint-dir, outside the declared outputs (Snakemake deletes
those of a failed job), so a rerun resumes; they are removed once the outputs exist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moebalance import provenance
from moebalance.atomic import atomic_path, write_json, write_parquet
from moebalance.balance import BalanceSet, measure
from moebalance.config import ExecutionSettings, ModelSettings, TrainSettings, settings_keys
from moebalance.errors import UsageError
from moebalance.tracking import (
    add_tracking_arguments,
    config_hash,
    log_headline,
    mlflow_logger,
    stage_run,
)

if TYPE_CHECKING:  # torch: imported when a stage runs, so that `--help` stays fast
    from moebalance.model.balancing import Balancing

log = logging.getLogger(__name__)


def add_training_arguments(parser: argparse.ArgumentParser, sections: str) -> None:
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out-dir", required=True,
                         help="directory for model/, metrics.parquet and routing.parquet")
    outputs.add_argument("--checkpoint-dir", required=True,
                         help="training checkpoints (resumed from when present)")
    keys = {"model": settings_keys(ModelSettings), "train": settings_keys(TrainSettings),
            "balancing": "  strategies and each one's options: the `balancing` definition of "
            "workflow/schemas/settings.schema.yaml"}
    parser.add_argument_group("settings", "what changes this stage's outputs").add_argument(
        "--settings", required=True, metavar="JSON|@FILE",
        help=f"JSON object with {sections} sections, or @FILE holding it: the science, which a "
        "checkpoint must match to be resumed. A key left out takes its default:\n"
        + "\n".join(f"{name}:\n{keys[name]}" for name in sections.split("/")).replace("%", "%%"))
    group = parser.add_argument_group(
        "execution", "how the run executes; none of it changes the outputs' meaning or stops "
        "a checkpoint from being resumed")
    group.add_argument("--execution", default="{}",
                       help="JSON object of execution knobs: log_every, checkpoint_every")
    group.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads on CPU (0: torch's default)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_arguments(parser)


def execution_of(args: argparse.Namespace) -> ExecutionSettings:
    """The ExecutionSettings of --execution, --threads and --no-progress."""
    try:
        values = json.loads(args.execution)
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object")
        if args.threads is not None:
            values["threads"] = args.threads
        if args.no_progress:
            values["progress"] = False
        return ExecutionSettings.from_dict(values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--execution: {err}") from err


@dataclass(frozen=True)
class StageSettings:
    """--settings of a training stage, parsed and validated once: the built ``balancing``
    strategies, the ``train`` loop and, for pretraining only, the ``model``."""

    balancing: Balancing
    train: TrainSettings
    model: ModelSettings | None      # None for SFT, which loads its model
    balancing_options: dict[str, Any]  # the `balancing` section as given (params, MLflow)

    @classmethod
    def parse(cls, text: str, with_model: bool) -> StageSettings:
        """From inline JSON or @FILE; a bad value is a UsageError naming --settings."""
        from moebalance.model.balancing import Balancing

        try:
            values = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object")
            sections = {"balancing", "train"} | ({"model"} if with_model else set())
            unknown = sorted(set(values) - sections)
            if unknown:
                raise ValueError(f"unknown settings section(s): {', '.join(unknown)}")
            options = dict(values.get("balancing", {}))
            return cls(balancing=Balancing.from_dict(options),
                       train=TrainSettings.from_dict(values.get("train", {})),
                       model=ModelSettings.from_dict(values.get("model", {}))
                       if with_model else None,
                       balancing_options=options)
        except (OSError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise UsageError(f"--settings: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """The science as the checkpoint fingerprint and MLflow see it (defaults filled in)."""
        out = {"balancing": self.balancing_options, "train": asdict(self.train)}
        return out | ({"model": asdict(self.model)} if self.model is not None else {})


def init_distributed() -> bool:
    """Join the torchrun process group when launched with WORLD_SIZE > 1."""
    import torch

    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    return True


def train_and_save(args: argparse.Namespace, stage: str, params: dict[str, Any],
                   make_model: Callable[[], Any], settings: StageSettings,
                   train_batches, val_batches, tokenizer_dir: str | None,
                   snapshots: bool = False, data: dict[str, Any] | None = None,
                   balance_set: str | None = None) -> None:
    """Train (resuming from --checkpoint-dir) and write the stage's outputs; with
    ``snapshots``, also ``snapshots/`` (empty when ``snapshot_every`` is 0); with
    ``balance_set`` (a balance set's path), also ``balance.json``, the trained model's
    held-out balance on it. ``data`` (e.g. the corpus hash) goes into provenance.json
    beside the machine's fingerprint and the stage's code hash (``params["source_hash"]``).

    The checkpoint fingerprint is the hash of ``params``: the science settings, the data,
    the seed and the code hash, never the execution knobs."""
    import torch.distributed as dist

    from moebalance.training.trainer import Trainer

    distributed = init_distributed()
    rank = dist.get_rank() if distributed else 0
    tracking = stage_run(args, stage, params) if rank == 0 else contextlib.nullcontext()
    try:
        with tracking as mlflow:
            trainer = Trainer(make_model(), settings.balancing, settings.train, train_batches,
                              val_batches, checkpoint_dir=args.checkpoint_dir,
                              fingerprint=config_hash(params), execution=execution_of(args),
                              on_log=mlflow_logger(mlflow) if mlflow is not None else None)
            telemetry = trainer.train()
            if rank != 0:
                return
            out = Path(args.out_dir)
            record = write_outputs(trainer, telemetry, out, tokenizer_dir, snapshots,
                                   {"source_hash": params.get("source_hash", ""), **(data or {})})
            headline = {}
            if balance_set is not None:
                balance = final_balance(trainer.model, balance_set, out / "balance.json")
                headline[f"{stage}_heldout_maxvio_global"] = balance["maxvio_global"]
            last = telemetry.metrics[-1]
            log.info("%s done: %d steps, lm_loss %.4f, val_loss %.4f, maxvio_batch %.3f", stage,
                     last["step"] + 1, last["lm_loss"], last["val_loss"], last["maxvio_batch"])
            if mlflow is not None:
                for name in ("metrics.parquet", "routing.parquet", "provenance.json"):
                    mlflow.log_artifact(str(out / name))
                mlflow.set_tags(provenance.as_tags(record))  # threads as the run set them
                if balance_set is not None:
                    mlflow.log_artifact(str(out / "balance.json"))
                log_headline(mlflow, {f"{stage}_val_loss": last["val_loss"],
                                      f"{stage}_maxvio_batch": last["maxvio_batch"], **headline})
            shutil.rmtree(args.checkpoint_dir, ignore_errors=True)  # outputs complete: not needed
    finally:
        if distributed:
            dist.destroy_process_group()


def final_balance(model, balance_set: str, target: Path) -> dict[str, Any]:
    """The final validation of held-out balance: :func:`moebalance.balance.measure`
    of the trained model on ``balance_set``, written to ``target`` (JSON) and returned."""

    summary, _ = measure(model, BalanceSet.load(balance_set))
    model.train()
    write_json(summary, target)
    log.info("held-out balance on %s: MaxVio_global %.4f (floor %.4f, split halves %.4f / %.4f)",
             balance_set, summary["maxvio_global"], summary["maxvio_floor"],
             *summary["maxvio_half"])
    return summary


def write_outputs(trainer, telemetry, out: Path, tokenizer_dir: str | None, snapshots: bool,
                  data: dict[str, Any] | None) -> dict[str, Any]:
    """model/ (with the tokenizer files, so it loads on its own), snapshots/ when asked,
    metrics.parquet, routing.parquet and provenance.json; returns the provenance record."""

    with atomic_path(out / "model", directory=True) as tmp:
        trainer.model.save_pretrained(tmp)
        if tokenizer_dir:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and f.name.startswith(("tokenizer", "special_tokens",
                                                      "moebalance_tokenizer")):
                    shutil.copy2(f, tmp / f.name)
    if snapshots:
        with atomic_path(out / "snapshots", directory=True) as tmp:
            kept = trainer.checkpoints.snapshot_dir
            for folder in sorted(kept.iterdir()) if kept.is_dir() else []:
                shutil.move(folder, tmp / folder.name)
    write_parquet(telemetry.metrics_table(), out / "metrics.parquet")
    write_parquet(telemetry.routing_table(), out / "routing.parquet")
    return provenance.write(out / "provenance.json", data or {})

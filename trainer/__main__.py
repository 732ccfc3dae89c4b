"""`python -m trainer --job JOB.json`: one training run in its own process.

The job file:

    {"base_model": "<model dir or hub id>",
     "dataset": "<dialogues.jsonl>",
     "output_dir": "<where the finished adapter goes>",
     "init_adapter": null,                  # or an adapter dir to continue training
     "device": null,                        # optional: "cpu", "cuda", "cuda:1"; default CUDA if present
     "config": {"epochs": 3, "learning_rate": 2e-4, ...},   # trainer.loop.TrainConfig fields
     "preference": null,                    # or {"method": "dpo", "dataset": "<pairs.jsonl>", ...}:
                                            # trainer.preference.PreferenceConfig, a step after SFT
     "meta": {...}}                         # anything; copied to meta.json in the adapter dir

stdout carries one JSON object per line and nothing else (logs go to stderr):

    {"event": "start", "examples": N, "tokens": T, "total_steps": S, ...}
    {"event": "progress", "step", "total_steps", "loss", "tokens_per_s", "eta_s", "epoch"}  (every step)
    {"event": "stage", "stage": "preference", "message": "..."}   (with a preference step, then
     its progress events, marked "stage": "preference"; its figures go to metrics["preference"])
    {"event": "done", "adapter_dir": "...", "metrics": {...}}
    {"event": "error", "reason": "..."}      (then exit code 1)

The adapter is written to `<output_dir>.tmp-<pid>` and renamed to `output_dir`
only once complete and fsynced, so a killed run never leaves a half adapter
where the bot would load it; stale temp dirs are removed by the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from trainer.config import TrainConfig
from trainer.preference import PreferenceConfig, read_pairs
from trainer.preference import train as train_preference

log = logging.getLogger("trainer")

Emit = Callable[[dict[str, Any]], None]

JOB_KEYS = {"base_model", "dataset", "output_dir", "init_adapter", "device", "config", "preference", "meta"}


class JobError(Exception):
    """The job cannot run; the message is the `reason` of the error event."""


class Terminated(Exception):
    """SIGTERM arrived: stop, clean up the temp dir, report."""


@dataclass(frozen=True)
class Job:
    """A parsed job file."""

    base_model: str
    dataset: Path
    output_dir: Path
    config: Any  # trainer.config.TrainConfig
    init_adapter: str | None = None
    device: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    preference: PreferenceConfig | None = None  # the optional step after SFT


def read_job(path: str | Path) -> Job:
    """Parse and check a job file; raise JobError naming what is wrong."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(f"job file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f"job file {path} is unreadable: {e}") from None
    if not isinstance(raw, dict):
        raise JobError("the job file must hold a JSON object")
    missing = [k for k in ("base_model", "dataset", "output_dir") if not raw.get(k)]
    unknown = sorted(set(raw) - JOB_KEYS)
    if missing or unknown:
        raise JobError(f"job keys missing: {missing or 'none'}; unknown: {unknown or 'none'}")
    if not all(isinstance(raw.get(k) or {}, dict) for k in ("meta", "config", "preference")):
        raise JobError("job config, preference and meta must be objects")
    try:
        config = TrainConfig.from_dict(raw.get("config") or {})
        pref = PreferenceConfig.from_dict(raw["preference"]) if raw.get("preference") else None
    except (TypeError, ValueError) as e:
        raise JobError(f"bad config: {e}") from None
    return Job(
        base_model=str(raw["base_model"]),
        dataset=Path(raw["dataset"]),
        output_dir=Path(os.path.abspath(raw["output_dir"])),
        config=config,
        init_adapter=raw.get("init_adapter") or None,
        device=raw.get("device") or None,
        meta=raw.get("meta") or {},
        preference=pref,
    )


def run(job: Job, emit: Emit) -> dict[str, Any]:
    """Train, write the adapter dir atomically, and return the metrics (with the data hash)."""
    import peft
    import torch
    import transformers

    from trainer import loop

    remove_stale_temp_dirs(job.output_dir)
    check_paths(job)
    prepared = prepare_data(job)
    rows = prepared["rows"]
    total_steps = len(loop.step_plan(len(rows), job.config))
    emit(
        {
            "event": "start",
            "examples": prepared["examples"],
            "tokens": prepared["dataset_tokens"],
            "total_steps": total_steps,
        }
    )

    device = loop.pick_device(job.device)
    tuned = device.type == "cpu" and loop.tune_allocator()
    log.info("device %s, %d threads, allocator tuned: %s", device, loop.use_all_cores(), tuned)
    model = loop.prepare_model(loop.load_base_model(job.base_model, device), job.config, job.init_adapter)
    metrics = loop.train(model, rows, job.config, on_progress=lambda p: emit(_progress_event(p)))
    after_sft: dict[str, Any] = {}
    if job.preference is not None:  # TRL is imported in there, so only runs that ask for the step load it
        after_sft["preference"] = train_preference(model, job.base_model, job.preference, emit, seed=job.config.seed)

    summary = {
        **dataclasses.asdict(metrics),
        **{k: v for k, v in prepared.items() if k != "rows"},
        "rows": len(rows),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        **after_sft,
    }
    write_adapter_dir(model, job, summary)
    return summary


def check_paths(job: Job) -> None:
    """Fail early, with a readable reason, on paths that cannot work."""
    if job.output_dir.exists():
        raise JobError(f"output_dir already exists: {job.output_dir}")
    if job.base_model.startswith(("/", ".", "~")) and not Path(job.base_model).expanduser().is_dir():
        raise JobError(f"base_model not found: {job.base_model}")  # else it would be taken for a hub id
    if not job.dataset.is_file():
        raise JobError(f"dataset not found: {job.dataset}")
    if job.init_adapter and not Path(job.init_adapter, "adapter_config.json").is_file():
        raise JobError(f"init_adapter is not a PEFT adapter dir: {job.init_adapter}")
    if job.preference is not None:
        try:
            read_pairs(job.preference.dataset)
        except (OSError, ValueError) as e:
            raise JobError(f"preference dataset unusable: {e}") from None


def prepare_data(job: Job) -> dict[str, Any]:
    """Read, dedupe, tokenize and pack the dataset; return the packed rows and the counts for metrics.json."""
    from transformers import AutoTokenizer

    from trainer import data

    try:
        records = data.load_jsonl(job.dataset)
    except data.DatasetError as e:
        raise JobError(str(e)) from None
    unique = data.dedupe(records)
    tokenizer = AutoTokenizer.from_pretrained(job.base_model)
    examples, dropped = data.tokenize_dataset(tokenizer, unique, job.config.max_seq_len)
    if not examples:
        raise JobError(
            f"no example has an assistant token to learn ({len(records)} records in {job.dataset})"
        )
    rows = data.pack(examples, job.config.row_tokens)
    duplicates = len(records) - len(unique)
    log.info(
        "%d records, %d duplicates, %d without tokens to learn, %d rows",
        len(records),
        duplicates,
        dropped,
        len(rows),
    )
    return {
        "rows": rows,
        "data_hash": data.data_hash(unique),
        "records": len(records),
        "duplicates": duplicates,
        "dropped": dropped,
        "examples": len(examples),
        # one pass over the data; "tokens" in metrics counts every epoch
        "dataset_tokens": sum(len(e.input_ids) for e in examples),
    }


def write_adapter_dir(model: Any, job: Job, summary: dict[str, Any]) -> None:
    """Save adapter, config, metrics and meta into a temp dir, fsync, then rename it to output_dir.

    The rename is the commit: until it happens output_dir does not exist, so a
    crash or a kill at any point leaves either nothing or a complete adapter.
    """
    training_config = {
        "base_model": job.base_model,
        "dataset": str(job.dataset),
        "output_dir": str(job.output_dir),
        "init_adapter": job.init_adapter,
        "device": job.device,
        "config": dataclasses.asdict(job.config),
        "preference": dataclasses.asdict(job.preference) if job.preference else None,
    }
    tmp = job.output_dir.with_name(f"{job.output_dir.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(tmp)
        _write_json(tmp / "training_config.json", training_config)
        _write_json(tmp / "metrics.json", summary)
        _write_json(tmp / "meta.json", job.meta)
        _fsync_tree(tmp)
        os.rename(tmp, job.output_dir)
        _fsync_dir(job.output_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temp_dirs(output_dir: Path) -> None:
    """Delete `<output_dir>.tmp-<pid>` dirs whose process is gone (a killed earlier run)."""
    for stale in output_dir.parent.glob(f"{output_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another run with the same output_dir is writing it right now
        log.info("removing stale temp dir %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress_event(p: Any) -> dict[str, Any]:
    return {
        "event": "progress",
        "step": p.step,
        "total_steps": p.total_steps,
        "loss": round(p.loss, 5),
        "tokens_per_s": round(p.tokens_per_s, 1),
        "eta_s": round(p.eta_s, 1),
        "epoch": round(p.epoch, 3),
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    # A rename is only durable once the directory holding the entry is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _claim_stdout() -> TextIO:
    """Keep the real stdout for events and point fd 1 at stderr, so no library print can corrupt the protocol."""
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return events


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Terminated("terminated by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """Run the job named by `--job`; return the exit code (0 done, 1 error)."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="Train a LoRA adapter for the student."
    )
    parser.add_argument("--job", required=True, help="path of the job JSON file")
    args = parser.parse_args(argv)
    events = _claim_stdout()

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")
        events.flush()

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        job = read_job(args.job)
        metrics = run(job, emit)
    except (JobError, Terminated) as e:
        log.error("%s", e)
        emit({"event": "error", "reason": str(e)})
        return 1
    except Exception as e:  # the parent needs a reason line whatever broke; the traceback goes to stderr
        log.exception("training failed")
        emit({"event": "error", "reason": f"{type(e).__name__}: {e}"})
        return 1
    emit({"event": "done", "adapter_dir": str(job.output_dir), "metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())

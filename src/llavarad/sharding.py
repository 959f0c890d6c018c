"""Generation on many processes: a stable split of a manifest across ranks, and the merge.

A run launched by ``torchrun`` or ``accelerate launch`` (``RANK`` / ``WORLD_SIZE`` in the
environment) gives every row to exactly one rank by a hash of its id, so the split does not depend
on the order of the manifest, on restarts, or on how many rows are already done. Each rank writes
its own shard ``OUT.shards/rank00001-of-00004.jsonl`` with the crash-safe :class:`JsonlWriter`
(so ``kill -9`` of a rank loses at most its batch in flight) and skips ids finished in ANY shard
file of the folder, whatever world size wrote it: a rerun with another number of processes neither
repeats nor loses a row. At the end rank 0 merges every shard into ``OUT`` in manifest order
(:func:`merge_predictions`, also the ``merge-predictions`` verb for a run that crashed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llavarad.io.manifest import read_jsonl

if TYPE_CHECKING:
    from llavarad.generate import GenerationSettings, GenerationSummary
    from llavarad.model.build import ModelBundle

logger = logging.getLogger(__name__)

__all__ = ["MergeSummary", "RankInfo", "device_for_rank", "merge_predictions", "rank_info", "run_sharded_generation",
           "shard_index", "shard_path", "shards_dir", "wait_for_all_ranks"]

_SHARD_NAME = re.compile(r"^rank(\d+)-of-(\d+)\.jsonl$")


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a launched job (``rank`` 0 and ``world_size`` 1 when not launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def rank_info(env: dict[str, str] | None = None) -> RankInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by torchrun and accelerate launch."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); launch with torchrun or "
                         "accelerate launch, or unset them") from exc
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return RankInfo(rank, world, local)


def shard_index(row_id: str, world_size: int) -> int:
    """The rank that owns ``row_id`` among ``world_size``: a hash, stable across runs and machines."""
    digest = hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % world_size


def shards_dir(out: str | Path) -> Path:
    """The folder holding the per-rank shards of predictions file ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """The shard that rank ``rank`` of ``world_size`` writes for predictions file ``out``."""
    return shards_dir(out) / f"rank{rank:05d}-of-{world_size:05d}.jsonl"


def _shard_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _SHARD_NAME.match(p.name))


def _ids_in(path: Path) -> set[str]:
    return {str(obj["id"]) for _, obj in read_jsonl(path) if isinstance(obj, dict) and "id" in obj}


def run_sharded_generation(model: str | Path | ModelBundle, manifest: str | Path, out: str | Path, *,
                           rank: int, world_size: int, settings: GenerationSettings | None = None,
                           device: str = "auto", dtype: str = "auto",
                           progress: Callable[[int, int], None] | None = None) -> GenerationSummary:
    """This rank's share of a sharded run: the rows whose id hashes to ``rank``, minus those done in
    any shard file already present, written to :func:`shard_path`. Merge afterwards."""
    from llavarad.generate import run_generation

    own = shard_path(out, rank, world_size)
    done_elsewhere: set[str] = set()
    for path in _shard_files(shards_dir(out)):
        if path != own:
            done_elsewhere |= _ids_in(path)
    logger.info("rank %d/%d: %d ids already done in other shards", rank, world_size, len(done_elsewhere))
    return run_generation(model, manifest, own, settings=settings, device=device, dtype=dtype, resume=True,
                          progress=progress, select=lambda rid: shard_index(rid, world_size) == rank,
                          skip=done_elsewhere)


@dataclass
class MergeSummary:
    """What :func:`merge_predictions` wrote: ``missing`` ids have no record yet (rerun to finish)."""

    written: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: int = 0
    shards: int = 0
    output: str = ""

    @property
    def complete(self) -> bool:
        return not self.missing


def merge_predictions(manifest: str | Path, out: str | Path, *, remove_shards: bool = True) -> MergeSummary:
    """Write every record of the shards of ``out`` into ``out`` once, in ``manifest`` order.

    A record already in an existing ``out`` (e.g. from an earlier one-process run) counts as done. When
    an id has records in two shards (two runs overlapped), the first in shard-name order is kept and
    the rest are counted in ``duplicates``. The file is written whole (temp file + rename). When every
    row of the manifest has a record and ``remove_shards``, the shard folder is removed.
    """
    from llavarad.generate import manifest_row_ids

    out = Path(out)
    folder = shards_dir(out)
    files = _shard_files(folder)
    sources = ([out] if out.is_file() else []) + files
    records: dict[str, dict[str, Any]] = {}
    summary = MergeSummary(shards=len(files), output=str(out))
    for path in sources:
        for _, obj in read_jsonl(path):
            if not isinstance(obj, dict) or "id" not in obj:
                continue
            rid = str(obj["id"])
            if rid in records:
                summary.duplicates += 1
                continue
            records[rid] = obj
    tmp = out.with_name(out.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    with tmp.open("wb") as fh:
        for rid in manifest_row_ids(manifest):
            if rid in written:
                continue  # a repeated manifest id has one output row, as in a one-process run
            rec = records.get(rid)
            if rec is None:
                summary.missing.append(rid)
                continue
            fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            written.add(rid)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    summary.written = len(written)
    if summary.complete and remove_shards and files:
        for path in files:
            path.unlink()
        try:
            folder.rmdir()
        except OSError:  # something else lives there: leave it
            logger.warning("%s: not empty after the merge; left in place", folder)
    return summary


def device_for_rank(device: str, info: RankInfo) -> str:
    """``auto`` on a multi-process GPU run means this rank's own GPU (``cuda:LOCAL_RANK``)."""
    if device != "auto" or info.world_size == 1:
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return device


def wait_for_all_ranks(info: RankInfo) -> None:
    """Block until every rank got here (gloo barrier; the launcher's MASTER_ADDR/PORT rendezvous).

    Ranks finish their shares at different times, so the barrier waits up to a day; a rank that dies
    makes the launcher stop the others, and ``merge-predictions`` then finishes the job by hand.
    """
    if info.world_size == 1:
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=timedelta(hours=24))
    dist.barrier()
    dist.destroy_process_group()

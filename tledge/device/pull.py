"""``tledge pull HOST:DIR LOCAL``: the pictures collected on a device, brought to the laptop.

The device lists its data folder (each label's pictures, ``unlabelled/`` with the sidecars,
the manifest) with every file's size and SHA-256; only what LOCAL lacks (a file of that path
and hash) comes, in tars of at most BATCH_BYTES. The device is untrusted: the listing is
bounded and checked (safe relative paths of two levels at most, sizes, hex digests), a tar
member is taken only where it was asked for, at the size listed, and kept only when its hash
is the listed one. Each file is written atomically, so an interrupted pull leaves no partial
file, and running it again goes on where it stopped. A local file of the same path and other
content is never replaced (said, and counted). The device's manifest lands beside the local
one as ``shots.HOST.jsonl`` (the data loader reads every ``shots*.jsonl`` for the bursts).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tledge.core import fileio
from tledge.device.agent import sha256
from tledge.device.ssh import Device, Target, answer_fields
from tledge.core.errors import TledgeError

PULL_AGENT = Path(__file__).with_name("pull_agent.py")  # what the device runs (stdlib only)
BATCH_BYTES = 12 << 20  # one tar's files at most (Device.run keeps 16 MB of an answer)
MAX_FILE = 64 << 20
_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9 _.+\-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class PullResult:
    """What a pull did.

    Attributes:
      fetched: paths written (relative to LOCAL).
      same: files LOCAL had already, by hash.
      kept: local files of the same path and other content, left as they were.
      bad: files the device sent that failed their check (not written).
    """

    fetched: list = field(default_factory=list)
    same: int = 0
    kept: list = field(default_factory=list)
    bad: list = field(default_factory=list)


def safe_relative(rel) -> bool:
    """A listed path tledge writes: NAME or FOLDER/NAME, safe names, no .., no absolute."""
    if not isinstance(rel, str) or len(rel) > 300:
        return False
    parts = rel.split("/")
    return 1 <= len(parts) <= 2 and all(_NAME.fullmatch(p) and p not in (".", "..")
                                        for p in parts)


def checked_listing(answer: dict, host: str) -> list:
    """The device's listing as [(path, size, sha256)], every entry checked."""
    files = answer_fields(answer, host, "listing", files=list)["files"]
    rows = []
    for row in files[:200000]:
        if not (isinstance(row, list) and len(row) == 3 and safe_relative(row[0])
                and isinstance(row[1], int) and not isinstance(row[1], bool)
                and 0 <= row[1] <= MAX_FILE and isinstance(row[2], str)
                and _HEX.fullmatch(row[2])):
            raise TledgeError(f"{host} listed a file tledge does not take "
                              f"({str(row)[:80]}): is its tledge this one? (tledge deploy)")
        rows.append((row[0], row[1], row[2]))
    return rows


def pull(target: Target, local: Path, echo: Callable[[str], None] = print) -> PullResult:
    """Bring ``target.dir``'s data folder to ``local`` (see the module's docstring)."""
    from tqdm import tqdm

    local = Path(local)
    fileio.check_output_dir(local, "LOCAL")
    device = Device(target)
    rows = checked_listing(device.agent("listing", target.dir, source=PULL_AGENT.read_text()),
                           target.host)
    result, wanted = PullResult(), []
    for rel, size, digest in rows:
        path = _local_path(local, rel, target)
        if path.is_file() and sha256(path) == digest:
            result.same += 1
        elif path.exists() and not rel.endswith(".jsonl"):
            result.kept.append(rel)
        else:
            wanted.append((rel, size, digest))
    total = sum(size for _, size, _ in wanted)
    echo(f"{target.host}:{target.dir}: {len(rows)} files, {len(wanted)} new "
         f"({total / 1e6:.1f} MB), {result.same} here already")
    with tqdm(total=total, unit="B", unit_scale=True, desc="pull", leave=False,
              disable=None) as bar:
        for batch in _batches(wanted):
            _fetch(device, target, local, batch, result)
            bar.update(sum(size for _, size, _ in batch))
    if result.kept:
        echo(f"WARNING: {len(result.kept)} file(s) differ here from the device's and were kept "
             f"as they are, e.g. {result.kept[0]}")
    if result.bad:
        raise TledgeError(f"{len(result.bad)} file(s) from {target.host} failed their check "
                          f"(e.g. {result.bad[0]}) and were not written: run tledge pull "
                          "again; if it persists, the device's disk may be failing")
    echo(f"pulled {len(result.fetched)} file(s) into {local}; next: tledge collect {local} "
         f"(to label what waits), tledge train --data {local}")
    return result


def _local_path(local: Path, rel: str, target: Target) -> Path:
    """Where ``rel`` goes: its own path; a device's manifest beside the local one, as
    ``shots.HOST.jsonl`` (the local ``shots.jsonl`` is this machine's own collecting)."""
    if rel.endswith(".jsonl") and "/" not in rel:
        own = re.sub(r"[^A-Za-z0-9._-]", "_", target.host.rpartition("@")[2])
        return local / f"{Path(rel).stem}.{own}.jsonl"
    return local / rel


def _batches(wanted: list):
    batch, size = [], 0
    for row in wanted:
        if batch and size + row[1] > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row[1]
    if batch:
        yield batch


def _fetch(device: Device, target: Target, local: Path, batch: list,
           result: PullResult) -> None:
    """One tar of ``batch``'s files from the device, each checked, each written atomically."""
    asked = {rel: (size, digest) for rel, size, digest in batch}
    request = (json.dumps([rel for rel, _, _ in batch]) + "\n").encode()
    size = sum(s for _, s, _ in batch)
    data = device.run(device.agent_command("pack", target.dir,
                                           source=PULL_AGENT.read_text()), data=request, raw=True,
                      timeout=120 + size / 100e3, what="the pictures")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if member.name not in asked or not member.isfile() or \
                        member.size != asked[member.name][0]:
                    continue
                content = tar.extractfile(member).read(member.size + 1)
                rel = member.name
                if hashlib.sha256(content).hexdigest() != asked.pop(rel)[1]:
                    result.bad.append(rel)
                    continue
                path = _local_path(local, rel, target)
                path.parent.mkdir(parents=True, exist_ok=True)
                fileio.write_bytes(path, content)
                result.fetched.append(rel)
    except (tarfile.TarError, EOFError) as e:
        raise TledgeError(f"{target.host} sent no readable tar of the pictures ({e}): run "
                          "tledge pull again (what came is kept)") from e
    result.bad.extend(asked)  # asked for and not sent

"""What ``tledge pull`` runs on the device: its data folder listed, and the files asked for.

Sent over SSH as ``python3 -c SOURCE COMMAND DATA`` as the deploy agent is (``agent.py``, whose
rules it follows: the standard library only, Python 3.6's syntax, one JSON line on stdout or
one ``Error: ...`` line on stderr and exit code 2). Never imported by tledge.

Commands:
  listing DATA    {"root": ..., "files": [[path, size, sha256], ...]}: the manifests in DATA,
                  each label's pictures and unlabelled/'s pictures and sidecars
  pack DATA       a tar on stdout of the files named on stdin's first line (a JSON list)
"""

import hashlib
import json
import os
import sys
import tarfile


class Failure(Exception):
    """A problem on the device, said in one line."""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dir(path):
    return os.path.abspath(os.path.expanduser(path))


PULLED = (".jpg", ".jpeg", ".png", ".json", ".jsonl")


def _data_files(root):
    """{path relative to root: full path} of what ``tledge pull`` brings: manifests in root,
    a label's pictures (and unlabelled/'s sidecars) one folder down; no hidden names, no
    links, regular files of 64 MB at most, 200,000 at most."""
    found = {}
    for name in sorted(os.listdir(root)):
        top = os.path.join(root, name)
        inner = sorted(os.listdir(top)) if os.path.isdir(top) and not os.path.islink(top) \
            else [None]
        for sub in inner:
            rel = name if sub is None else name + "/" + sub
            path = os.path.join(root, rel)
            if not any(p.startswith(".") for p in rel.split("/")) and \
                    rel.lower().endswith(PULLED if sub else ".jsonl") and \
                    os.path.isfile(path) and not os.path.islink(path) and \
                    os.path.getsize(path) <= 64 << 20 and len(found) < 200000:
                found[rel] = path
    return found


def listing(data):
    root = _dir(data)
    if not os.path.isdir(root):
        raise Failure("no folder {} on this device".format(root))
    return {"root": root, "files": [[rel, os.path.getsize(path), sha256(path)]
                                    for rel, path in _data_files(root).items()]}


def pack(data):
    """A tar on stdout of the files named on stdin's first line (a JSON list)."""
    known, wanted = _data_files(_dir(data)), json.loads(sys.stdin.readline(8 << 20) or "[]")
    out = getattr(sys.stdout, "buffer", sys.stdout)
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for rel in wanted:
            if isinstance(rel, str) and rel in known:
                tar.add(known[rel], arcname=rel, recursive=False)
    out.flush()
    sys.exit(0)


def main(argv):
    commands = {"listing": listing, "pack": pack}
    if len(argv) != 2 or argv[0] not in commands:
        raise Failure("usage: listing DATA | pack DATA")
    print(json.dumps(commands[argv[0]](argv[1])))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Failure as e:
        sys.stderr.write("Error: {}\n".format(e))
        sys.exit(2)
    except OSError as e:
        sys.stderr.write("Error: {}: {}\n".format(e.strerror or type(e).__name__,
                                                  e.filename or ""))
        sys.exit(2)

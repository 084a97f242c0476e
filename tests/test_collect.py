"""tledge collect: labels that are safe folder names, shots written whole with a manifest,
undo, the page's routes for scripts (capture, counts, undo, label) behind the token, uncertain
frames from the camera with their sidecars and a rate limit, and bursts kept on one side of
the train/validation split."""

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from helpers import COLOURS, cli, free_port, one_line_error
from tledge.camera.collect import (MANIFEST, UNLABELLED, Collection, UncertainFrames,
                                   check_label, parse_labels, why_uncertain)
from tledge.core.errors import TledgeError

cv2 = pytest.importorskip("cv2")


def _frame(colour=0, size=(120, 160)):
    image = np.zeros((*size, 3), np.uint8)
    image[:] = COLOURS[colour][::-1]
    return image


@pytest.mark.parametrize("label", ["mug", "red mug", "T-shirt_1", "a.b+c"])
def test_safe_labels_pass(label):
    assert check_label(f" {label} ") == label


@pytest.mark.parametrize("label", ["", "../etc", "a/b", ".hidden", " ", "x" * 65, "unlabelled",
                                   "a\\b", "$(reboot)", "tab\there", "NUL"])
def test_unsafe_labels_are_refused_in_one_line(label):
    with pytest.raises(TledgeError, match="not a safe folder name") as e:
        check_label(label)
    assert "\n" not in str(e.value)


def test_shots_undo_and_the_manifest(tmp_path):
    data = tmp_path / "data"
    collection = Collection(data, parse_labels("mug,keys,mug"), source="camera 0")
    assert collection.labels == ["mug", "keys"]
    first = collection.save("mug", _frame(0))
    burst = collection.new_burst()
    second = [collection.save("keys", _frame(1), burst) for _ in range(2)]
    for path in [first, *second]:
        picture = cv2.imread(str(data / path))
        assert picture.shape == (120, 160, 3)
    assert collection.counts() == {"labels": {"mug": 1, "keys": 2}, "unlabelled": 0}
    assert collection.recent(2) == second[::-1]
    assert collection.undo() == second[1]
    assert not (data / second[1]).exists()
    assert collection.counts()["labels"]["keys"] == 1
    events = [json.loads(line) for line in (data / MANIFEST).read_text().splitlines()]
    assert [e["event"] for e in events] == ["shot", "shot", "shot", "undo"]
    assert events[1]["burst"] == events[2]["burst"] == burst and events[0]["burst"] is None
    assert events[0]["source"] == "camera 0" and events[0]["label"] == "mug"
    # a second session sees the folders as labels, and the manifest goes on
    again = Collection(data)
    assert sorted(again.labels) == ["keys", "mug"]
    assert again.undo() == second[0] and again.undo() == first and again.undo() is None
    with pytest.raises(TledgeError, match="no label"):
        again.save("phone", _frame())
    assert not list(data.rglob("*.tmp*"))  # every picture was renamed into place


def test_a_torn_manifest_line_is_skipped(tmp_path):
    from tledge.data.manifest import read_manifest

    (tmp_path / MANIFEST).write_text('{"event": "shot", "file": "a/1.jpg"}\n{"event": "sh')
    assert read_manifest(tmp_path / MANIFEST) == [{"event": "shot", "file": "a/1.jpg"}]


def _unlabelled(data, name, guess="mug", score=0.3):
    folder = data / UNLABELLED
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.jpg"), _frame(2))
    (folder / f"{name}.json").write_text(json.dumps({"guess": guess, "score": score}))


def test_unlabelled_frames_are_labelled_or_discarded(tmp_path):
    collection = Collection(tmp_path, ["mug"])
    _unlabelled(tmp_path, "a")
    _unlabelled(tmp_path, "b")
    assert [u["file"] for u in collection.unlabelled()] == ["unlabelled/a.jpg",
                                                           "unlabelled/b.jpg"]
    assert collection.unlabelled()[0]["guess"] == "mug"
    assert collection.label("unlabelled/a.jpg", "cup") == "cup/a.jpg"  # a new label
    assert (tmp_path / "cup" / "a.jpg").is_file() and "cup" in collection.labels
    assert not (tmp_path / UNLABELLED / "a.json").exists()
    assert collection.label("b.jpg", None) is None
    assert collection.unlabelled() == []
    for bad in ("unlabelled/../shots.jsonl", "../x.jpg", "unlabelled/a.jpg", "/etc/passwd"):
        with pytest.raises(TledgeError, match="no unlabelled frame"):
            collection.label(bad, "mug")


def test_bursts_stay_on_one_side_of_the_split(tmp_path):
    from tledge.data import ImageSet, burst_groups, stratified_split

    collection = Collection(tmp_path, ["a", "b"])
    files = []
    for label in ("a", "b"):
        for _ in range(6):  # six bursts of five near-duplicates a class
            burst = collection.new_burst()
            files += [collection.save(label, _frame(0), burst) for _ in range(5)]
    (tmp_path / UNLABELLED).mkdir()  # left out of the classes
    pool = ImageSet(np.zeros((len(files), 2, 2, 3), np.uint8),
                    np.repeat([0, 1], 30).astype(np.int32), tuple(files))
    groups = burst_groups(tmp_path, pool)
    assert len(np.unique(groups)) == 12
    train, val = stratified_split(pool, 0.2, seed=3, groups=groups)
    bursts = {name: g for name, g in zip(files, groups)}
    assert not {bursts[n] for n in train.names} & {bursts[n] for n in val.names}
    assert len(val) == 10 and len(train) == 50  # one burst of each class held out
    from tledge.data.folder import scan_folder

    _, _, classes, _ = scan_folder(tmp_path)
    assert classes == ["a", "b"]


class _Run:
    def __init__(self, models=1):
        from types import SimpleNamespace

        self.lines = []
        self.models = [SimpleNamespace(name=f"m{i}") for i in range(models)]
        self.source = SimpleNamespace(description="camera 0")
        self.echo = self.lines.append


def _packet(index, results):
    from tledge.camera.outputs import Packet

    return Packet(index=index, timestamp=0.0, bgr=_frame(1), inputs=[], results=results)


def test_uncertain_frames_saved_with_sidecars_within_the_rate(tmp_path):
    from tledge.runtime import Class

    sure, unsure = [Class(0, "mug", 0.9)], [Class(1, "keys", 0.4), Class(0, "mug", 0.35)]
    assert why_uncertain([sure], 0.5) is None
    assert "below 0.5" in why_uncertain([unsure], 0.5)
    assert "disagree" in why_uncertain([sure, [Class(1, "keys", 0.9)]], 0.5)
    output = UncertainFrames(str(tmp_path), below=0.5, per_minute=3)
    output.start(_Run())
    for i in range(10):
        output.frame(_packet(i, [unsure if i % 2 else sure]), None)
    output.close(10)
    pictures = sorted((tmp_path / UNLABELLED).glob("*.jpg"))
    assert len(pictures) == 3  # of five uncertain frames, three in the minute
    info = json.loads(pictures[0].with_suffix(".json").read_text())
    assert info["guess"] == "keys" and info["score"] == 0.4 and info["frame"] == 1
    assert info["top_k"] == [["keys", 0.4], ["mug", 0.35]] and info["source"] == "camera 0"
    assert cv2.imread(str(pictures[0])).shape == (120, 160, 3)
    assert Collection(tmp_path).unlabelled()[0]["guess"] == "keys"
    assert "2 more over the limit" in output.run.lines[-1]


class Collecting:
    """run_collect in a thread on a looping folder of pictures, serving on a free port."""

    def __init__(self, tmp_path, token=None, labels=("mug", "keys"), source=None):
        from tledge.camera.collect_page import CollectOptions

        if source is None:
            source = tmp_path / "pictures"
            source.mkdir()
            for i in range(4):
                cv2.imwrite(str(source / f"{i}.png"), _frame(i))
        self.port, self.token, self.data = free_port(), token, tmp_path / "data"
        self.options = CollectOptions(data=str(self.data), source=str(source),
                                      serve=f"127.0.0.1:{self.port}", serve_token=token,
                                      labels=labels, burst_fps=20, loop=True, headless=True,
                                      duration=120)
        self.stop, self.lines, self.error = threading.Event(), [], None

    def _run(self):
        from tledge.camera.collect_page import run_collect

        try:
            run_collect(self.options, echo=self.lines.append, stop=self.stop)
        except Exception as e:  # noqa: BLE001 - the test reads it
            self.error = e

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        for _ in range(100):
            try:
                self.get("/healthz")
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the page never came up: {self.error}")

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()

    def url(self, path, token=True):
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}{path}" + \
            (f"{sep}token={self.token}" if self.token and token else "")

    def get(self, path, token=True):
        with urllib.request.urlopen(self.url(path, token), timeout=30) as r:
            return r.read()

    def post(self, path, token=True, **fields):
        body = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(self.url(path, token), data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def test_scripts_drive_the_page(tmp_path):
    with Collecting(tmp_path) as page:
        status, answer = page.post("/capture", label="mug", count=3)
        assert status == 200 and len(answer["saved"]) == 3
        assert all(path.startswith("mug/") and (page.data / path).is_file()
                   for path in answer["saved"])
        assert json.loads(page.get("/counts.json"))["labels"] == {"mug": 3, "keys": 0}
        events = [json.loads(line) for line in (page.data / MANIFEST).read_text().splitlines()]
        assert len({e["burst"] for e in events}) == 1 and events[0]["burst"]  # one burst
        status, answer = page.post("/undo")
        assert answer["removed"] == events[-1]["file"]
        assert page.post("/capture", label="../x", count=1)[0] == 400
        assert "no label" in page.post("/capture", label="phone", count=1)[1]["error"]
        assert page.post("/capture", label="mug", count=100000)[0] == 400
        assert page.post("/labels", label="phone") == (200, {"label": "phone"})
        assert page.post("/capture", label="phone", count=1)[0] == 200
        _unlabelled(page.data, "u1", guess="keys", score=0.2)
        state = json.loads(page.get("/state.json"))
        assert state["unlabelled"][0]["guess"] == "keys" and state["recent"]
        assert page.post("/label", file="unlabelled/u1.jpg", label="keys")[1] == \
            {"file": "keys/u1.jpg"}
        assert page.get(f"/file?f={state['recent'][0]}")[:2] == b"\xff\xd8"  # a JPEG
        for bad in ("../shots.jsonl", "mug/../../x.jpg", "shots.jsonl"):
            with pytest.raises(urllib.error.HTTPError):
                page.get(f"/file?f={bad}")
        assert b"tledge collect" in page.get("/")


def test_a_video_source_gives_its_frames_to_the_shots(tmp_path):
    from helpers import write_video

    video = write_video(tmp_path / "clip.mp4", frames=20)
    with Collecting(tmp_path, source=video) as page:
        status, answer = page.post("/capture", label="keys", count=4)
        assert status == 200 and len(answer["saved"]) == 4
        shots = [cv2.imread(str(page.data / p)) for p in answer["saved"]]
        assert all(shot.shape == (240, 320, 3) for shot in shots)  # the video's frames
        assert json.loads(page.get("/counts.json"))["labels"]["keys"] == 4
    events = [json.loads(line) for line in (page.data / MANIFEST).read_text().splitlines()]
    assert all(e["source"] == "video clip.mp4" for e in events)


def test_the_token_guards_every_route(tmp_path):
    with Collecting(tmp_path, token="s3cret") as page:
        for path in ("/", "/counts.json", "/state.json", "/stream.mjpg"):
            with pytest.raises(urllib.error.HTTPError) as e:
                page.get(path, token=False)
            assert e.value.code == 403
        assert page.post("/capture", token=False, label="mug", count=1)[0] == 403
        assert page.post("/capture", label="mug", count=1)[0] == 200
        assert b"token=s3cret" in page.get("/")


def test_collect_cli_refuses_bad_input_in_one_line(tmp_path):
    one_line_error(cli("collect", tmp_path / "d", "--labels", "ok,a/b", "--headless"),
                   "not a safe folder name")
    result = cli("collect", tmp_path / "d", "--burst-fps", "nan", "--headless")
    assert result.exit_code != 0 and "--burst-fps" in result.output
    assert "--save-uncertain" in cli("camera", "--help").output
    assert "POST /capture" in cli("collect", "--help").output


# ------------------------------------------------------------------ pull, through the fake ssh

@pytest.fixture()
def device_data(tmp_path, monkeypatch):
    """A "device" (tests/fakes/ssh: this machine, its home a temporary folder) holding a data
    folder collected there: shots in two labels, a burst, an unlabelled frame."""
    from pathlib import Path

    home = tmp_path / "home"
    data = home / "tledge" / "data" / "mine"
    collection = Collection(data, ["mug", "keys"], source="picamera")
    burst = collection.new_burst()
    for _ in range(3):
        collection.save("mug", _frame(0), burst)
    collection.save("keys", _frame(1))
    _unlabelled(data, "u1")
    monkeypatch.setenv("TLEDGE_SSH_COMMAND",
                       str(Path(__file__).parent / "fakes" / "ssh"))
    monkeypatch.setenv("FAKE_SSH_HOME", str(home))
    return data


def test_pull_brings_what_is_new_checked_and_resumes(device_data, tmp_path):
    from tledge.data import ImageSet, burst_groups
    from tledge.device.pull import pull
    from tledge.device.ssh import Target

    target, local, lines = Target.parse("pi@fake-pi:~/tledge/data/mine"), tmp_path / "here", []
    first = pull(target, local, echo=lines.append)
    assert sorted(first.fetched) == sorted(
        ["shots.jsonl", "keys/" + next((device_data / "keys").iterdir()).name,
         *[f"mug/{p.name}" for p in (device_data / "mug").iterdir()],
         "unlabelled/u1.jpg", "unlabelled/u1.json"])
    for rel in first.fetched:
        theirs = device_data / rel
        mine = local / ("shots.fake-pi.jsonl" if rel == "shots.jsonl" else rel)
        assert mine.read_bytes() == theirs.read_bytes(), rel
    assert "next: tledge collect" in lines[-1]
    # the bursts of the pulled manifest reach the split
    names = tuple(f"mug/{p.name}" for p in sorted((local / "mug").iterdir()))
    groups = burst_groups(local, ImageSet(np.zeros((3, 1, 1, 3), np.uint8),
                                          np.zeros(3, np.int32), names))
    assert len(set(groups.tolist())) == 1
    # again: nothing new; a file lost here (an interrupted pull) comes back alone
    (local / "unlabelled" / "u1.jpg").unlink()
    again = pull(target, local, echo=lines.append)
    assert again.fetched == ["unlabelled/u1.jpg"] and again.same == len(first.fetched) - 1
    # a local file with other content is kept, and said
    mine = local / again.fetched[0]
    mine.write_bytes(b"my own picture")
    third = pull(target, local, echo=lines.append)
    assert third.kept == ["unlabelled/u1.jpg"] and mine.read_bytes() == b"my own picture"
    assert any("were kept" in line for line in lines)
    assert not list(local.rglob("*.tmp*"))


def test_pull_refuses_what_a_device_should_not_send(device_data, tmp_path, monkeypatch):
    import io
    import tarfile

    from tledge.device import pull as pull_mod
    from tledge.device.ssh import Device, Target

    for row in (["../etc/passwd", 3, "a" * 64], ["/abs.jpg", 3, "a" * 64],
                ["a/b/c.jpg", 3, "a" * 64], ["mug/x.jpg", -1, "a" * 64],
                ["mug/x.jpg", 3, "not hex"], "row", ["mug/x.jpg", True, "a" * 64]):
        with pytest.raises(TledgeError, match="does not take"):
            pull_mod.checked_listing({"files": [row]}, "pi")
    real_run = Device.run

    def tampered(self, remote, *args, raw=False, **kwargs):  # the right names, other bytes
        answer = real_run(self, remote, *args, raw=raw, **kwargs)
        if not raw:
            return answer
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(answer), mode="r|") as tar, \
                tarfile.open(fileobj=out, mode="w|") as fake:
            for member in tar:
                content = b"x" * member.size
                fake.addfile(member, io.BytesIO(content))
        return out.getvalue()

    monkeypatch.setattr(Device, "run", tampered)
    with pytest.raises(TledgeError, match="failed their check"):
        pull_mod.pull(Target.parse("pi@fake-pi:~/tledge/data/mine"), tmp_path / "here",
                      echo=lambda s: None)
    assert not [p for p in (tmp_path / "here").rglob("*") if p.is_file()]


def test_pull_needs_the_device_folder(tmp_path):
    one_line_error(cli("pull", "pi@raspberrypi.local", tmp_path / "x"), "name the device's data "
                   "folder")


def _browser():
    import shutil

    return next((shutil.which(n) for n in ("chromium-headless-shell", "chromium",
                                           "chromium-browser") if shutil.which(n)), None)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium: apt-get install "
                                               "chromium-headless-shell (.ci/run does)")
def test_a_real_browser_shows_the_page(tmp_path):
    import subprocess

    shot = tmp_path / "page.png"
    with Collecting(tmp_path) as page:
        page.post("/capture", label="mug", count=2)
        _unlabelled(page.data, "u1", guess="keys", score=0.31)
        proc = subprocess.run(
            [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,700",
             "--timeout=4000", f"--screenshot={shot}", page.url("/")],
            capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    picture = cv2.imread(str(shot)).astype(int)
    live = picture[16:480, 16:640].reshape(-1, 3)
    assert (np.abs(live - 17).sum(axis=1) > 60).mean() > 0.5  # the stream is drawn
    side = picture[80:480, 670:1090].reshape(-1, 3)
    buttons = (side[:, 1] > 150) & (side[:, 0] < 120) & (side[:, 2] < 80)  # #2a5, BGR
    assert buttons.sum() > 500, "no label buttons"
    thumbs = (np.abs(side - 17).sum(axis=1) > 150) & ~buttons
    assert thumbs.sum() > 3000, "no thumbnails of the shots and the unlabelled frame"


def test_train_keeps_each_burst_on_one_side(tmp_path):
    from tledge import data
    from tledge.core.config import DataOptions
    from tledge.data.manifest import bursts_of

    collection = Collection(tmp_path, ["a", "b"])
    for label, colour in (("a", 0), ("b", 1)):
        for _ in range(5):
            burst = collection.new_burst()
            for _ in range(4):
                collection.save(label, _frame(colour, (32, 32)), burst)
    _unlabelled(tmp_path, "u1")  # waits for a label: not a class
    splits = data.load(DataOptions(source=str(tmp_path), image_size=32, val_split=0.25,
                                   cache="memory"), seed=0)
    assert splits.class_names == ["a", "b"]
    bursts = bursts_of(tmp_path)
    train = {bursts[n] for n in splits.train.names}
    val = {bursts[n] for n in splits.val.names}
    assert val and not train & val
    assert len(splits.val) == 8  # one burst of four a class


# ----------------------------------------------------------------------------------- faults

def test_a_full_disk_mid_burst_keeps_what_was_saved_and_says_so(tmp_path, monkeypatch):
    import errno

    from tledge.core import fileio

    real, written = fileio.write_bytes, []

    def filling(path, data):
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real(path, data)

    with Collecting(tmp_path) as page:
        monkeypatch.setattr(fileio, "write_bytes", filling)
        status, answer = page.post("/capture", label="mug", count=5)
        monkeypatch.setattr(fileio, "write_bytes", real)
        assert status == 507, answer
        assert "no space left" in answer["error"] and "2 shot(s)" in answer["error"]
        assert "\n" not in answer["error"] and len(answer["saved"]) == 2
        assert all(cv2.imread(str(page.data / p)) is not None for p in answer["saved"])
        assert not list(page.data.rglob("*.tmp*"))
        assert page.post("/capture", label="mug", count=1)[0] == 200  # space again: it goes on


def test_two_pages_capturing_at_once_lose_nothing(tmp_path):
    with Collecting(tmp_path) as page:
        answers = {}

        def capture(label):
            answers[label] = page.post("/capture", label=label, count=6)

        threads = [threading.Thread(target=capture, args=(label,)) for label in ("mug", "keys")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        saved = answers["mug"][1]["saved"] + answers["keys"][1]["saved"]
        assert len(set(saved)) == 12 and all((page.data / p).is_file() for p in saved)
        events = [json.loads(line) for line in (page.data / MANIFEST).read_text().splitlines()]
        assert sorted(e["file"] for e in events) == sorted(saved)
        assert len({e["burst"] for e in events}) == 2  # one burst each


def test_a_source_that_ends_ends_the_collection(tmp_path):
    from tledge.camera.collect_page import CollectOptions, run_collect

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(3):
        cv2.imwrite(str(pictures / f"{i}.png"), _frame(i))
    lines = []
    run_collect(CollectOptions(data=str(tmp_path / "data"), source=str(pictures),
                               serve=f"127.0.0.1:{free_port()}", labels=("mug",),
                               headless=True), echo=lines.append)
    assert "stopped (end of source): mug 0; 0 unlabelled" in lines[-1]


def test_ctrl_c_keeps_every_finished_shot_and_a_whole_manifest(tmp_path):
    import signal

    from helpers import tledge

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(4):
        cv2.imwrite(str(pictures / f"{i}.png"), _frame(i, (240, 320)))
    port, data = free_port(), tmp_path / "data"
    proc = tledge("collect", data, "--source", pictures, "--loop", "--labels", "mug",
                  "--serve", port, "--headless", "--burst-fps", "20", background=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "healthz", timeout=5).close()
            break
        except OSError:
            time.sleep(0.1)
    burst = threading.Thread(target=lambda: urllib.request.urlopen(urllib.request.Request(
        url + "capture", data=b"label=mug&count=200", method="POST"), timeout=60).read(),
        daemon=True)
    burst.start()
    while not (data / MANIFEST).is_file() or len((data / MANIFEST).read_text().splitlines()) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted: mug " in out
    lines = (data / MANIFEST).read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    assert len(events) >= 5 and all((data / e["file"]).is_file() for e in events)
    assert len(list((data / "mug").glob("*.jpg"))) == len(events)
    assert not list(data.rglob("*.tmp*"))


def test_a_capture_before_the_first_frame_waits_for_one():
    from tledge.camera.collect_page import LatestFrame

    frames = LatestFrame()
    assert frames.after(-1, 0.05) is None  # nothing yet: no empty picture
    threading.Timer(0.1, frames.put, args=(_frame(),)).start()
    seq, bgr = frames.after(-1, 5)
    assert seq == 1 and bgr.shape == (120, 160, 3)


def test_camera_on_saves_uncertain_frames_in_the_devices_folder():
    from pathlib import Path

    from tledge.camera import CameraOptions
    from tledge.device.deploy import Pushed
    from tledge.device.remote import camera_argv

    pushed = Pushed(dir="/home/pi/tledge")
    for given, there in (("data/mine", "/home/pi/tledge/data/mine"),
                         ("~/pictures", "~/pictures")):
        options = CameraOptions(model="m.tflite", serve="8080", save_uncertain=given,
                                uncertain_below=0.4, save_max_per_minute=6)
        argv = camera_argv(pushed, options, Path("m.tflite"), None)
        at = argv.index("--save-uncertain")
        assert argv[at:at + 6] == ["--save-uncertain", there, "--uncertain-below", "0.4",
                                   "--save-max-per-minute", "6"]
    with pytest.raises(TledgeError):
        camera_argv(pushed, CameraOptions(model="m.tflite", serve="8080",
                                          save_uncertain="$(reboot)"), Path("m.tflite"), None)


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
    messages ending in NUL on its fds 3 and 4), no websocket library needed."""

    def __init__(self, browser, profile):
        import os
        import subprocess

        self.to_chrome_r, self.to_chrome_w = os.pipe()
        self.from_chrome_r, self.from_chrome_w = os.pipe()

        def fds():
            os.dup2(self.to_chrome_r, 3)
            os.dup2(self.from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1100,700",
             "about:blank"], pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.buffer, self.next_id = b"", 0

    def call(self, method, session=None, **params):
        import os

        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                import select
                assert select.select([self.from_chrome_r], [], [], 30)[0], "no answer: " + method
                chunk = os.read(self.from_chrome_r, 65536)
                assert chunk, "the browser went away"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                return answer["result"]

    def close(self):
        import os

        self.proc.kill()
        self.proc.wait()
        for fd in (self.to_chrome_r, self.to_chrome_w, self.from_chrome_r, self.from_chrome_w):
            os.close(fd)


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium: apt-get install "
                                               "chromium-headless-shell (.ci/run does)")
def test_a_click_on_the_page_takes_a_shot(tmp_path):
    """A real mouse click on a label's button in Chromium saves one shot of that label."""
    with Collecting(tmp_path) as page:
        chrome = _DevTools(_browser(), tmp_path / "profile")
        try:
            target = chrome.call("Target.createTarget", url=page.url("/"))["targetId"]
            session = chrome.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
            rect = None
            for _ in range(100):  # until the page has drawn its buttons from /state.json
                found = chrome.call("Runtime.evaluate", session, returnByValue=True, expression=(
                    "(() => { const b = document.querySelector('#labels button');"
                    " return b ? JSON.stringify(b.getBoundingClientRect()) : null; })()"))
                if found["result"].get("value"):
                    rect = json.loads(found["result"]["value"])
                    break
                time.sleep(0.1)
            assert rect and rect["width"] > 20, "no label button on the page"
            x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
            for kind in ("mousePressed", "mouseReleased"):
                chrome.call("Input.dispatchMouseEvent", session, type=kind, x=x, y=y,
                            button="left", clickCount=1)
            for _ in range(100):
                if json.loads(page.get("/counts.json"))["labels"]["mug"]:
                    break
                time.sleep(0.1)
        finally:
            chrome.close()
        assert json.loads(page.get("/counts.json"))["labels"] == {"mug": 1, "keys": 0}

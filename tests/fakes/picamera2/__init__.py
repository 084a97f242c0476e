"""A stand-in for Picamera2 (tests only: put tests/fakes on sys.path).

It returns frames of a scene in the byte order the Picamera2 manual documents for each format,
so a colour-order mistake in tledge shows as a wrong colour:

    RGB888   -> [B, G, R]          BGR888   -> [R, G, B]
    XRGB8888 -> [B, G, R, 255]     XBGR8888 -> [R, G, B, 255]
    YUV420   -> I420 planar, (height * 3 / 2, width) uint8

The scene is ``Picamera2.scene``: an RGB uint8 image, scaled to each stream's size (as the ISP
does). ``Picamera2.instances`` records what tledge configured.
"""

import numpy as np

scene = np.zeros((960, 1280, 3), np.uint8)
scene[..., 0] = 230  # a red scene (RGB)
instances = []


def _layout(rgb: np.ndarray, fmt: str) -> np.ndarray:
    import cv2

    if fmt == "RGB888":
        return rgb[..., ::-1].copy()
    if fmt == "BGR888":
        return rgb.copy()
    if fmt in ("XRGB8888", "XBGR8888"):
        body = rgb[..., ::-1] if fmt == "XRGB8888" else rgb
        alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        return np.concatenate([body, alpha], axis=2)
    if fmt == "YUV420":
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
    raise ValueError(f"stand-in does not know format {fmt}")


class Picamera2:
    def __init__(self, camera_num=0):
        self.config = None
        self.started = False
        self.captures = 0
        instances.append(self)

    def create_video_configuration(self, main=None, lores=None, **kwargs):
        return {"main": dict(main or {"format": "XBGR8888", "size": (1280, 720)}),
                "lores": dict(lores) if lores else None}

    def align_configuration(self, config):
        # The real one rounds widths to the ISP's alignment; mimic that for YUV420.
        for name in ("main", "lores"):
            stream = config.get(name)
            if stream and stream["format"] == "YUV420":
                w, h = stream["size"]
                stream["size"] = ((w + 31) // 32 * 32, h)

    def configure(self, config):
        if config["lores"]:
            lw, lh = config["lores"]["size"]
            mw, mh = config["main"]["size"]
            assert lw <= mw and lh <= mh, "lores must not be larger than main"
            assert config["lores"]["format"] == "YUV420", "a Pi 4's lores stream must be YUV420"
        self.config = config

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def close(self):
        pass

    def _frame(self, name):
        import cv2

        stream = self.config[name]
        w, h = stream["size"]
        rgb = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
        return _layout(rgb, stream["format"])

    def capture_array(self, name="main"):
        self.captures += 1
        return self._frame(name)

    def capture_arrays(self, names=("main",)):
        self.captures += 1
        return [self._frame(n) for n in names], {}

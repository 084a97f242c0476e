"""``tledge camera``: a live classifier over a camera, a video, a folder of images or a stream.

Rooms, each one concern (numpy, Pillow and OpenCV only, unless --compare names a run folder,
whose float Keras model then runs on TensorFlow):

    options   CameraOptions, and the models as the camera runs them (FrameModel)
    sources   V4L2 cameras, the Pi camera module, videos, streams, folders; Frames reads one
              with the retry and back-off of a live source that drops out
    pipeline  the capture, inference and sink threads; run_camera
    outputs   window, status line, --record, --output; the Packet, RunInfo and mailbox they share
    overlay   the overlay drawn on a classified frame
    serve     --serve: the live page, an output like the others
"""

from tledge.camera.options import CameraOptions, FrameModel, load_frame_model
from tledge.camera.pipeline import Pipeline, Summary, run_camera
from tledge.camera.sources import Source, list_cameras, open_source

__all__ = ["CameraOptions", "FrameModel", "Pipeline", "Source", "Summary", "list_cameras",
           "load_frame_model", "open_source", "run_camera"]

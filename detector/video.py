"""Video files: frames in as RGB arrays (at the file's own rate or sampled at a chosen one), annotated videos out.

Why PyAV and not a library already here: torchvision's video reading is deprecated in favour of TorchCodec (not a
dependency), and OpenCV is not one either; PyAV's wheels bundle FFmpeg itself, so whatever container and codec
FFmpeg reads works after a plain ``pip install``, and its frames convert to the (H, W, 3) uint8 RGB arrays that
:meth:`detector.inference.Detector.detect_arrays` takes as they are.

Frames come upright: a phone's portrait video is stored landscape with a display matrix saying how to turn it, and
the frames are turned as players turn them (quarter turns; the rarer mirrored matrices are not undone).

A video that cannot be opened or that breaks off midway raises :class:`~detector.errors.VideoError` (the frames
read before the break are still given).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.error
import numpy as np
from av.video.stream import VideoStream

from detector.errors import VideoError

# What a folder's walk and a path's suffix count as video; anything FFmpeg reads also works when named explicitly
# with one of these suffixes.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp"}
)
# FFmpeg failures come as av.error.FFmpegError; a few also subclass OSError / ValueError, and a broken file can
# surface as either from the demuxer.
_FAILURES = (av.error.FFmpegError, OSError, ValueError)


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """A video stream's size as stored (before its display rotation; the frames themselves come upright), frame rate
    (frames per second, the stream's average) and length in frames where the container says (None where it does
    not: some containers only know once read to the end)."""

    width: int
    height: int
    rate: Fraction
    frames: int | None

    def frames_at(self, fps: float | None) -> int | None:
        """About how many frames :meth:`VideoReader.frames` gives at ``fps`` (None: the file's own rate)."""
        if self.frames is None:
            return None
        if fps is None or fps >= self.rate:
            return self.frames
        return max(1, round(self.frames * fps / float(self.rate)))


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: ``index`` counts the stream's frames from 0 (all of them, also where ``fps`` skips some),
    ``timestamp`` is its presentation time in seconds after the first frame's, ``pixels`` (H, W, 3) uint8 RGB."""

    index: int
    timestamp: float
    pixels: np.ndarray


class VideoReader:
    """Frames of a video file's first video stream, in presentation order.

    Args:
        path: the video file.
        fps: frames per second to keep (the first frame at or after each multiple of ``1/fps``), or None for
            every frame. At or above the file's own rate every frame is kept.

    Raises:
        VideoError: the file is missing, is not a video FFmpeg reads, or has no video stream.
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        self.fps = fps
        if not self.path.is_file():
            raise VideoError(f"no such file: {self.path}" if not self.path.exists() else f"not a file: {self.path}")
        try:
            self._container = av.open(str(self.path))
        except _FAILURES as exc:
            raise VideoError(f"not a video FFmpeg can read: {exc}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("no video stream in the file")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: decoding keeps ahead of the network
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(30)
        self.info = VideoInfo(
            width=self._stream.codec_context.width,
            height=self._stream.codec_context.height,
            rate=Fraction(rate),
            frames=self._stream.frames or None,
        )

    def frames(self) -> Iterator[VideoFrame]:
        """The frames, decoded one at a time. Raises :class:`VideoError` where the data breaks off or is corrupt."""
        # Keep a frame once its time reaches the next multiple of 1/fps; a quarter of a source frame absorbs the
        # rounding of timestamps stored in the container's time base.
        tolerance = 0.25 / float(self.info.rate)
        period = 1.0 / self.fps if self.fps else 0.0
        next_time, first_time = 0.0, None
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                time = frame.time if frame.time is not None else index / float(self.info.rate)
                first_time = time if first_time is None else first_time
                timestamp = time - first_time
                if period:
                    if timestamp + tolerance < next_time:
                        continue
                    next_time = (int((timestamp + tolerance) / period) + 1) * period
                yield VideoFrame(index, round(timestamp, 6), _upright(frame))
        except _FAILURES as exc:
            raise VideoError(f"video data is corrupt or cut off: {exc}") from None

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame's RGB pixels turned as its display matrix says (FFmpeg's ``av_display_rotation_get``: degrees
    counter-clockwise; the ``ffmpeg`` tool's autorotate turns the same way)."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round(getattr(frame, "rotation", 0) / 90) % 4  # PyAV before 13 has no rotation: as stored
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


class VideoWriter:
    """Writes RGB frames into an H.264 MP4 (MPEG-4 Part 2 where the FFmpeg build has no libx264).

    Every frame has the first frame's size. Both codecs need even sizes (4:2:0 chroma): an odd width or height is
    padded by repeating the last column or row.

    Args:
        path: the file to write (``.mp4``).
        rate: frames per second.
    """

    def __init__(self, path: str | Path, rate: Fraction):
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path), "w")
        except _FAILURES as exc:
            raise VideoError(f"cannot write video {self.path}: {exc}") from None
        stream = self._container.add_stream(codec, rate=rate)
        assert isinstance(stream, VideoStream)
        self._stream = stream
        self._stream.pix_fmt = "yuv420p"
        self._sized = False
        if codec == "libx264":
            self._stream.options = {"crf": "23", "preset": "veryfast"}

    def write(self, pixels: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame (the first one sets the video's size)."""
        if not self._sized:
            height, width = pixels.shape[:2]
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._sized = True
        pad = ((0, self._stream.height - pixels.shape[0]), (0, self._stream.width - pixels.shape[1]), (0, 0))
        if any(after for _, after in pad):
            pixels = np.pad(pixels, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and finish the file; without a frame written there is no video, and no file is left."""
        if not self._sized:
            self._container.close()
            self.path.unlink(missing_ok=True)
            return
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

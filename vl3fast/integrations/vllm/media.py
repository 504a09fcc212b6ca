"""Media for the vLLM plugin: where bytes come from, and keeping them for vl3fast to decode.

- `VL3FastVideoLoader` ("vl3fast" in vLLM's video-loader registry; the VideoLLaMA3 processor makes it the
  model's default `--media-io-kwargs` video backend): returns the file's bytes undecoded, so the processor
  decodes and samples them with vl3fast (per-request fps / max_frames, PyAV, seeking) instead of vLLM
  decoding 32 frames with OpenCV first. With another backend chosen explicitly the processor still decodes
  the original bytes with vl3fast and that backend's frames are dropped.
- `VL3FastMediaConnector` ("vl3fast" in vLLM's media-connector registry, made the default while the
  plugin is loaded unless VLLM_MEDIA_CONNECTOR is set): vLLM's own HTTP/data/file connector, with
  unknown schemes and local-file problems (no `--allowed-local-media-path`, missing file) reported as
  client errors that name the source, where vLLM's raises a RuntimeError / OSError (an HTTP 500).
- `VL3FastDataParser`: media given as strings in `multi_modal_data` (offline `vllm.LLM`) go through the
  same connector, so paths, file://, data: and http(s) URLs follow the same rules as the server's
  (`allowed_local_media_path`, `allowed_media_domains`); every image and video item keeps its original
  bytes, which also key vLLM's processor cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...processing.errors import MediaNotFoundError

SCHEMES = ("file", "data", "http", "https")
LOADER = CONNECTOR = "vl3fast"


class EncodedVideo:
    """A video file's bytes, not decoded: vl3fast's processing decodes (and samples) them."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __repr__(self) -> str:
        return f"EncodedVideo({len(self.data)} bytes)"


def check_scheme(source: str) -> str:
    """The URL scheme of `source` ("" for a plain path); ValueError naming it when it is not one of SCHEMES."""
    if source[:5].lower() == "data:":
        return "data"
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme and scheme not in SCHEMES:
        raise ValueError(f"unsupported media source scheme {scheme!r} in {source[:120]!r}; use a local path, "
                         "file://, data: or http(s):// URL")
    return scheme


def register_media() -> None:
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY, MediaConnector
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

    class VL3FastVideoLoader(VideoLoader):
        @classmethod
        def load_bytes(cls, data: bytes, **kwargs: Any) -> tuple[EncodedVideo, dict[str, Any]]:
            # media_io_kwargs sampling settings (num_frames, fps) are vLLM-loader ones: vl3fast samples
            # with the checkpoint's settings and the request's mm_processor_kwargs instead.
            return EncodedVideo(data), {"video_backend": LOADER}

    class VL3FastMediaConnector(MediaConnector):
        def load_from_url(self, url: str, media_io, *, fetch_timeout: int | None = None):
            check_scheme(url)
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)

        async def load_from_url_async(self, url: str, media_io, *, fetch_timeout: int | None = None):
            check_scheme(url)
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)

        def _load_file_url(self, url_spec, media_io):
            if self.allowed_local_media_path is None:
                raise ValueError(f"cannot read the local file {url_spec.url!r}: local media are disabled; start the "
                                 "server with --allowed-local-media-path DIR (offline: "
                                 "LLM(..., allowed_local_media_path=DIR))")
            try:
                return super()._load_file_url(url_spec, media_io)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
                raise MediaNotFoundError(f"{url_spec.url!r}: no such media file ({e.strerror})") from e
            except PermissionError as e:
                raise ValueError(f"{url_spec.url!r}: the server may not read this file ({e.strerror})") from e

    VIDEO_LOADER_REGISTRY.register(LOADER, video_processor=("VideoLlama3VideoProcessor",))(VL3FastVideoLoader)
    MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)(VL3FastMediaConnector)
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", CONNECTOR)


def connector(model_config):
    """The media connector with the rules of `model_config` (local path, domains) and the vl3fast loader."""
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY

    return MEDIA_CONNECTOR_REGISTRY.load(
        CONNECTOR, media_io_kwargs={"video": {"video_backend": LOADER}},
        allowed_local_media_path=model_config.allowed_local_media_path or "",
        allowed_media_domains=model_config.allowed_media_domains)


def fetch(kind: str, source: str, model_config):
    """An image or video given as a string (offline `multi_modal_data`), loaded with the server's rules:
    a plain path is read as a file:// URL (so it needs `allowed_local_media_path` too)."""
    if check_scheme(source) == "":
        source = Path(source).absolute().as_uri()
    conn = connector(model_config)
    return conn.fetch_image(source) if kind == "image" else conn.fetch_video(source)


def make_parser(info):
    """vLLM's data parser, with strings fetched (see `fetch`) and items that keep their original bytes."""
    from vllm.multimodal.media import MediaWithBytes
    from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataParser, VideoProcessorItems

    def resolve(kind, data):
        if isinstance(data, str):
            return [fetch(kind, data, info.ctx.model_config)]
        if isinstance(data, (list, tuple)) and any(isinstance(x, str) for x in data) and not (
                kind == "video" and isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict)):
            return [fetch(kind, x, info.ctx.model_config) if isinstance(x, str) else x for x in data]
        return data

    # get() keeps MediaWithBytes: vLLM re-parses get()'s results for processor-cache misses, and the bytes
    # must survive that (MediaWithBytes passes attribute access on to the image).
    class Images(ImageProcessorItems):
        def get(self, index: int):
            return self.data[index]

        def get_processor_data(self):
            return {"images": list(self.data)}  # MediaWithBytes kept: vl3fast decodes the original bytes

    class Videos(VideoProcessorItems):
        def get(self, index: int):
            item = self.data[index]
            return item if isinstance(item, MediaWithBytes) else super().get(index)

        def get_processor_data(self):
            return {"videos": [(x, md) if md is not None and not isinstance(x, MediaWithBytes) else x
                               for x, md in zip(self.data, self.metadata or [None] * len(self.data))]}

        def get_item_for_hash(self, index: int):
            item = self.data[index]
            if isinstance(item, MediaWithBytes):
                return item.original_bytes  # whatever a loader decoded, the bytes are what vl3fast reads
            return super().get_item_for_hash(index)

    class VL3FastDataParser(MultiModalDataParser):
        def _parse_image_data(self, data):
            items = super()._parse_image_data(resolve("image", data))
            return Images(items.data) if type(items) is ImageProcessorItems else items

        def _get_video_with_metadata(self, video):
            if isinstance(video, EncodedVideo):
                return MediaWithBytes(video, video.data), None
            if isinstance(video, MediaWithBytes) and isinstance(video.media, EncodedVideo):
                return video, None  # parsed before (vLLM re-parses processor-cache misses)
            return super()._get_video_with_metadata(video)

        def _parse_video_data(self, data):
            items = super()._parse_video_data(resolve("video", data))
            return Videos(items.data, items.metadata) if type(items) is VideoProcessorItems else items

    return VL3FastDataParser(expected_hidden_size=info._get_expected_hidden_size(),
                             allow_missing_mm_embeddings=info.allow_missing_mm_embeddings)

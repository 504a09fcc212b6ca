"""Images and videos to VideoLLaMA3 model inputs, identical to transformers' VideoLLaMA3 processors.

    load_image(path)                      Pillow, RGB, EXIF orientation applied
    load_video(path, fps=1, max_frames=180)   PyAV; transformers' frame sampling; seeks; timeout
    preprocess_images / preprocess_videos  -> VisualInputs(pixel_values [P, 588] float32,
                                              grid_thw [N, 3] int64, merge_sizes [N] int64, timestamps)
    estimate_tokens(images=..., videos=..., max_visual_tokens=...)   exact counts, no decoding
                                          (with processor=/text=: text tokens and the total too)
    VideoLLaMA3Processor                   text + media -> transformers' VideoLlama3Processor dict
    ProcessingConfig                       every setting; .official() for the official resize rule

Pixels are resized with torchvision's calls (bicubic, antialiased, uint8), the backend of transformers'
default (`AutoImageProcessor`/`AutoVideoProcessor` pick the torchvision classes), so results are
bit-identical to `VideoLlama3ImageProcessor` and `VideoLlama3VideoProcessor`; torchvision itself is
not imported (`resize.resize_frames`). Needs the `media` extra: pillow, av.
"""
from .config import ProcessingConfig
from .errors import (
    CorruptMediaError, DecodeTimeoutError, EmptyVideoError, ImageNotVideoError, MediaError, MediaNotFoundError,
    MediaSizeError, NotMediaError, TokenBudgetError, UnsupportedCodecError,
)
from .image import load_image
from .processor import VideoLLaMA3Processor
from .processor_files import ProcessorFiles, read_processor_files
from .preprocess import VisualInputs, normalize_patchify, preprocess_images, preprocess_videos
from .resize import ItemPlan, ItemShape, official_resize, plan_sizes, resize_frames, smart_resize
from .tokens import ItemEstimate, TokenEstimate, estimate_tokens
from .sampling import sample_frame_indices
from .video import Video, VideoFile, VideoInfo, load_video, probe_video

__all__ = [
    "ProcessingConfig", "VideoLLaMA3Processor", "ProcessorFiles", "read_processor_files",
    "load_image", "load_video", "probe_video", "sample_frame_indices", "Video", "VideoFile", "VideoInfo",
    "preprocess_images", "preprocess_videos", "VisualInputs", "normalize_patchify", "estimate_tokens",
    "TokenEstimate", "ItemEstimate", "smart_resize", "official_resize", "plan_sizes", "ItemShape", "ItemPlan",
    "resize_frames", "MediaError", "MediaNotFoundError", "NotMediaError", "ImageNotVideoError", "CorruptMediaError",
    "EmptyVideoError", "UnsupportedCodecError", "DecodeTimeoutError", "MediaSizeError", "TokenBudgetError",
]

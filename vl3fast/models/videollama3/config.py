"""VideoLLaMA3 configuration: plain dataclasses that read and write both released config.json formats.

Formats (spec F):
- transformers-native, ``model_type: video_llama_3``: ``vision_config`` + ``text_config`` (qwen2),
  ``image_token_id`` / ``video_token_id``;
- official trust_remote_code, ``model_type: videollama3_qwen2``: the Qwen2 fields at top level plus
  ``vision_encoder_config``, ``mm_projector_type``, ``use_token_compression``, ``image_token_index``.

Named presets: ``VideoLLaMA3Config.from_name("2b" | "7b" | "tiny")``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

NATIVE_MODEL_TYPE = "video_llama_3"
OFFICIAL_MODEL_TYPE = "videollama3_qwen2"
MODEL_TYPES = (NATIVE_MODEL_TYPE, OFFICIAL_MODEL_TYPE)

# The placeholder ids of transformers' processor (<|image_pad|>, <|video_pad|> in the Qwen2 vocab).  The official
# checkpoints use one <image> token (151665) for both; it is kept as `legacy_image_token_index`: the official
# config round-trips, and model.py reads prompts that use it (VideoLLaMA3ForCausalLM.official_placeholders).
DEFAULT_IMAGE_TOKEN_ID = 151655
DEFAULT_VIDEO_TOKEN_ID = 151656


def _check_value(where: str, name: str, value, kind: str):
    """One config value of the expected kind, or a TypeError/ValueError naming the field.

    kinds: "pos_int" (> 0), "id" (>= 0), "opt_id" (None or >= 0), "ids" (None, an id, or a list of ids),
    "pos_float" (> 0), "bool", "str".  bool is never accepted as a number (json `true` is not a size).
    """
    field_name = f"{where}.{name}" if where else name
    def fail(cls, what):
        raise cls(f"config field {field_name!r} must be {what}, got {value!r}")
    if kind == "bool":
        if not isinstance(value, bool):
            fail(TypeError, "a JSON boolean (true/false)")
    elif kind == "str":
        if not isinstance(value, str):
            fail(TypeError, "a string")
    elif kind == "pos_float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(TypeError, "a number")
        if not value > 0 or value != value or value == float("inf"):
            fail(ValueError, "a finite number > 0")
    elif kind == "ids":
        values = value if isinstance(value, list) else [value]
        if value is not None:
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    fail(TypeError if not isinstance(v, int) or isinstance(v, bool) else ValueError,
                         "null, a token id >= 0 or a list of token ids")
    elif kind in ("pos_int", "id", "opt_id"):
        if kind == "opt_id" and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            fail(TypeError, "an integer")
        if kind == "pos_int" and value <= 0:
            fail(ValueError, "an integer > 0")
        if value < 0:
            fail(ValueError, "an integer >= 0")
    else:  # pragma: no cover - a programming error in the kinds tables below
        raise AssertionError(kind)
    return value


def _check_fields(obj, where: str, kinds: dict) -> None:
    for name, kind in kinds.items():
        _check_value(where, name, getattr(obj, name), kind)


@dataclass
class VisionConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size * self.patch_size

    _KINDS = {"hidden_size": "pos_int", "intermediate_size": "pos_int", "num_hidden_layers": "pos_int",
              "num_attention_heads": "pos_int", "num_channels": "pos_int", "patch_size": "pos_int",
              "hidden_act": "str", "layer_norm_eps": "pos_float", "rope_theta": "pos_float"}

    def __post_init__(self):
        _check_fields(self, "vision_config", self._KINDS)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act != "gelu_pytorch_tanh":
            raise ValueError(f"vision hidden_act must be 'gelu_pytorch_tanh' (VideoLLaMA3), got {self.hidden_act!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        d = dict(d)
        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type must be 'axial', got {rope.get('rope_type')!r}")
        theta = _check_value("vision_config", "rope_theta", rope.get("rope_theta", d.get("rope_theta", 10000.0)),
                             "pos_float")
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta"}
        return cls(**{k: d[k] for k in names if k in d}, rope_theta=float(theta))

    def to_dict(self, fmt: str) -> dict:
        d = dataclasses.asdict(self)
        theta = d.pop("rope_theta")
        if fmt == "native":
            d.update(model_type="video_llama_3_vision", attention_dropout=0.0,
                     rope_parameters={"rope_type": "axial", "rope_theta": theta})
        else:
            d.update(model_type="videollama3_vision_encoder", attention_dropout=0.0)
        return d


# Qwen2 fields vl3fast reads by name; any other text field is carried through `TextConfig.extra` unchanged.
@dataclass
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    extra: dict = field(default_factory=dict)

    _KINDS = {"vocab_size": "pos_int", "hidden_size": "pos_int", "intermediate_size": "pos_int",
              "num_hidden_layers": "pos_int", "num_attention_heads": "pos_int", "num_key_value_heads": "pos_int",
              "hidden_act": "str", "max_position_embeddings": "pos_int", "rms_norm_eps": "pos_float",
              "rope_theta": "pos_float", "bos_token_id": "opt_id", "eos_token_id": "ids"}

    def __post_init__(self):
        _check_fields(self, "text_config", self._KINDS)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"config field 'text_config.hidden_size' ({self.hidden_size}) is not divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"config field 'text_config.num_attention_heads' ({self.num_attention_heads}) is not "
                             f"divisible by num_key_value_heads ({self.num_key_value_heads})")

    # Keys of the official top-level dict that are not Qwen2 text fields.
    _OFFICIAL_ONLY = (
        "model_type", "architectures", "auto_map", "vision_encoder", "vision_encoder_config", "mm_projector_type",
        "use_token_compression", "image_token_index", "tie_word_embeddings", "torch_dtype", "dtype",
        "transformers_version", "image_token_id", "video_token_id", "vision_config", "text_config",
    )

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        d = {k: v for k, v in d.items() if k not in cls._OFFICIAL_ONLY}
        rope = d.pop("rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default" or d.get("rope_scaling"):
            raise ValueError(f"text rope must be plain (rope_type 'default'); got {rope or d.get('rope_scaling')}")
        theta = _check_value("text_config", "rope_theta", rope.get("rope_theta", d.pop("rope_theta", 1000000.0)),
                             "pos_float")
        d.pop("rope_theta", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        return cls(**known, rope_theta=float(theta), extra=d)

    def to_dict(self, fmt: str) -> dict:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        theta = d.pop("rope_theta")
        if fmt == "native":
            d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        else:
            d["rope_theta"] = theta
        return {**extra, **d}

    def to_qwen2_config(self, tie_word_embeddings: bool):
        """The transformers Qwen2Config the LLM is built from."""
        from transformers import Qwen2Config

        d = self.to_dict("native")
        d.pop("model_type", None)
        return Qwen2Config(**d, tie_word_embeddings=tie_word_embeddings)


@dataclass
class VideoLLaMA3Config:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = DEFAULT_IMAGE_TOKEN_ID
    video_token_id: int = DEFAULT_VIDEO_TOKEN_ID
    tie_word_embeddings: bool = True
    use_token_compression: bool = True
    legacy_image_token_index: int | None = None  # official `image_token_index`, round-tripped only
    source_format: str = "native"  # the format this config was read from

    def __post_init__(self):
        _check_fields(self, "", {"image_token_id": "id", "video_token_id": "id", "tie_word_embeddings": "bool",
                                 "use_token_compression": "bool", "legacy_image_token_index": "opt_id"})
        for name in ("image_token_id", "video_token_id"):
            if getattr(self, name) >= self.text.vocab_size:
                raise ValueError(f"config field {name!r} ({getattr(self, name)}) is outside the vocabulary "
                                 f"(text_config.vocab_size {self.text.vocab_size})")

    # ---- presets -----------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> "VideoLLaMA3Config":
        if name not in PRESETS:
            raise ValueError(f"unknown VideoLLaMA3 preset {name!r}; known: {sorted(PRESETS)}")
        return copy.deepcopy(PRESETS[name])

    # ---- config.json -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "VideoLLaMA3Config":
        if not isinstance(d, dict):
            raise TypeError(f"a VideoLLaMA3 config must be a dict (config.json object), got {type(d).__name__}")
        for sub in ("vision_config", "text_config", "vision_encoder_config"):
            if d.get(sub) is not None and not isinstance(d[sub], dict):
                raise TypeError(f"config field {sub!r} must be a JSON object, got {type(d[sub]).__name__}")
        model_type = d.get("model_type")
        if model_type == NATIVE_MODEL_TYPE:
            text = dict(d.get("text_config") or {})
            if text.get("model_type", "qwen2") != "qwen2":
                raise ValueError(f"text_config.model_type must be 'qwen2', got {text.get('model_type')!r}")
            top = _check_value("", "tie_word_embeddings", d.get("tie_word_embeddings", False), "bool")
            inner = _check_value("text_config", "tie_word_embeddings", text.pop("tie_word_embeddings", False), "bool")
            tie = top or inner
            return cls(
                vision=VisionConfig.from_dict(d.get("vision_config") or {}),
                text=TextConfig.from_dict(text),
                image_token_id=d.get("image_token_id", DEFAULT_IMAGE_TOKEN_ID),
                video_token_id=d.get("video_token_id", DEFAULT_VIDEO_TOKEN_ID),
                tie_word_embeddings=tie,
                use_token_compression=d.get("use_token_compression", True),
                source_format="native",
            )
        if model_type == OFFICIAL_MODEL_TYPE:
            if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
                raise ValueError(f"mm_projector_type must be 'mlp2x_gelu', got {d.get('mm_projector_type')!r}")
            vision = d.get("vision_encoder_config")
            if not vision:
                raise ValueError("official VideoLLaMA3 config has no 'vision_encoder_config'")
            return cls(
                vision=VisionConfig.from_dict(vision),
                text=TextConfig.from_dict(d),
                image_token_id=d.get("image_token_id", DEFAULT_IMAGE_TOKEN_ID),
                video_token_id=d.get("video_token_id", DEFAULT_VIDEO_TOKEN_ID),
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                use_token_compression=d.get("use_token_compression", True),
                legacy_image_token_index=d.get("image_token_index"),
                source_format="official",
            )
        raise ValueError(f"unknown model_type {model_type!r} in config; supported: {list(MODEL_TYPES)}")

    def to_dict(self, fmt: str = "native") -> dict:
        if fmt == "native":
            text = self.text.to_dict("native")
            text.update(model_type="qwen2", tie_word_embeddings=self.tie_word_embeddings)
            return {
                "model_type": NATIVE_MODEL_TYPE,
                "architectures": ["VideoLlama3ForConditionalGeneration"],
                "vision_config": self.vision.to_dict("native"),
                "text_config": text,
                "image_token_id": self.image_token_id,
                "video_token_id": self.video_token_id,
                "tie_word_embeddings": self.tie_word_embeddings,
            }
        if fmt == "official":
            d = self.text.to_dict("official")
            d.update(
                model_type=OFFICIAL_MODEL_TYPE,
                architectures=["Videollama3Qwen2ForCausalLM"],
                vision_encoder=None,
                vision_encoder_config=self.vision.to_dict("official"),
                mm_projector_type="mlp2x_gelu",
                use_token_compression=self.use_token_compression,
                image_token_index=self.legacy_image_token_index or 151665,
                tie_word_embeddings=self.tie_word_embeddings,
                image_token_id=self.image_token_id,
                video_token_id=self.video_token_id,
            )
            return d
        raise ValueError(f"unknown config format {fmt!r}; supported: 'native', 'official'")


PRESETS: dict[str, VideoLLaMA3Config] = {
    # VideoLLaMA3-2B: SigLIP-NaViT + Qwen2.5-1.5B (tied embeddings), spec A and E.
    "2b": VideoLLaMA3Config(
        text=TextConfig(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, extra={"max_window_layers": 21}),
        tie_word_embeddings=True,
    ),
    # VideoLLaMA3-7B: same vision tower + Qwen2.5-7B (untied).
    "7b": VideoLLaMA3Config(
        text=TextConfig(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, extra={"max_window_layers": 28}),
        tie_word_embeddings=False,
    ),
    # For tests and CI: both vision head dims stay real (72), everything else is small.
    "tiny": VideoLLaMA3Config(
        vision=VisionConfig(hidden_size=144, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2),
        text=TextConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None),
        image_token_id=120,
        video_token_id=121,
        tie_word_embeddings=True,
    ),
}

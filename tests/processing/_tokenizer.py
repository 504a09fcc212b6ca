"""A tiny Qwen2-style byte-level BPE tokenizer and processor checkpoints built locally (no hub access)."""
from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# Qwen2's pre-tokenizer split pattern
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = ["What is shown in this video? Describe the image in detail.", "Time 0.0s: Time 1.5s: 12.5s:",
          "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
          "Compare these two pictures. Which one is brighter?"]
# the chat template of the transformers-native checkpoints: one placeholder (and a newline) per image/video
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<|image_pad|>\n{% elif c['type'] == 'video' %}<|video_pad|>\n{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 300):
    """A `tokenizers` BPE trained in milliseconds on a few sentences, wrapped for transformers; the
    special tokens take ids 0..6 (image pad 5, video pad 6)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def save_hf_processor(directory, *, video_kwargs=None, image_kwargs=None, chat_template=CHAT_TEMPLATE):
    """transformers' VideoLlama3Processor (torchvision image/video processors, the tiny tokenizer) saved
    into `directory`; returns it."""
    from transformers import VideoLlama3Processor
    from transformers.models.video_llama_3.image_processing_video_llama_3 import VideoLlama3ImageProcessor
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    processor = VideoLlama3Processor(image_processor=VideoLlama3ImageProcessor(**(image_kwargs or {})),
                                     tokenizer=tiny_tokenizer(),
                                     video_processor=VideoLlama3VideoProcessor(**(video_kwargs or {})),
                                     chat_template=chat_template)
    processor.save_pretrained(str(directory))
    return processor

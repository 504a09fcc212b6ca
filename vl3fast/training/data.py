"""Annotation files -> `Sample`s: the official VideoLLaMA3 schema and the `messages` form (training/README.md).

    samples, problems = load_annotations(["train.jsonl"])      # problems: every malformed record, file:line
    samples = load_annotations(["train.jsonl"], strict=True)[0] # raises AnnotationError listing them all

A file is JSON Lines (one record per line, `.jsonl`) or one JSON array (`.json`); for a JSON array the
"line" of a record is the line its object starts on.  Both forms parse into the same `Sample`: messages
with roles system / user / assistant whose content is a tuple of text strings and `Media` items in tag order.

Official schema (DAMO-NLP-SG/VideoLLaMA3 `train.py::_convert_normal`), accepted unchanged:
    {"id": ..., "image": "a.jpg" | ["a.jpg", "b.jpg"], "video": ["clip.mp4"],
     "conversations": [{"from": "system"|"human"|"gpt", "value": "<image>\\nWhat is this?"}, ...]}
    - `<image>` tags stand for the images in list order, `<video>` for the video; with media and no tag at
      all, one tag per item is prepended to the first human turn (the official repair).
    - Text around the tags of a human turn is stripped and empty pieces dropped, as the official code does.
    - Deliberate difference: the official code turns a `system` entry into an assistant turn (it maps
      everything that is not `human` to assistant); here it stays a system turn and is not supervised.
Messages form:
    {"id": ..., "messages": [{"role": "user", "content": "<image><video>\\nCompare them."}, ...],
     "images": ["a.jpg"], "videos": [{"path": "clip.mp4", "start": 2.0, "end": 8.0, "fps": 1, "max_frames": 16}]}
    or content as typed blocks: [{"type": "image", "image": "a.jpg"},
                                 {"type": "video", "video": "clip.mp4", "start": 2.0, "fps": 2},
                                 {"type": "text", "text": "Compare them."}]
    Images and videos may be mixed; tags take the `images` / `videos` entries in order.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
OFFICIAL_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
TAG_RE = re.compile(r"<image>|<video>")
VIDEO_OPTIONS = ("start", "end", "fps", "max_frames")


class AnnotationError(ValueError):
    """Malformed annotations.  `problems` lists every one as "file:line: what" (the message shows them)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the annotations:\n  "
        super().__init__(head + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Media:
    """One image or video of a sample; `path` as written in the annotation (relative to the data folder).
    Videos may carry a clip (`start` / `end` in seconds) and per-video sampling (`fps`, `max_frames`)."""

    kind: str  # "image" | "video"
    path: str
    start: float | None = None
    end: float | None = None
    fps: float | None = None
    max_frames: int | None = None

    def resolve(self, data_folder: str | os.PathLike | None) -> str:
        return self.path if data_folder is None else os.path.join(os.fspath(data_folder), self.path)


@dataclass(frozen=True)
class Message:
    role: str                                # system | user | assistant
    content: tuple                           # str and Media items, in order

    @property
    def text(self) -> str:
        return "".join(c for c in self.content if isinstance(c, str))


@dataclass(frozen=True)
class Sample:
    """One training conversation.  `where` is "file:line" for error messages; `index` its position in
    the loaded list (the packer's sample number)."""

    id: str
    messages: tuple[Message, ...]
    where: str
    index: int = -1
    media: tuple[Media, ...] = field(default=())

    def __post_init__(self):
        if not self.media:
            object.__setattr__(self, "media", tuple(c for m in self.messages for c in m.content
                                                    if isinstance(c, Media)))


# ---- reading files ---------------------------------------------------------------------------------------------------
def _records(path: str) -> list[tuple[int, object | Exception]]:
    """(line, record or the JSON error) for every record of a .jsonl / .json file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.endswith(".json") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            return [(e.lineno, e)]
        if not isinstance(data, list):
            return [(1, ValueError(f"a .json annotation file must hold a JSON array of samples, got "
                                   f"{type(data).__name__}"))]
        starts = _object_start_lines(text)
        return [(starts[i] if i < len(starts) else 0, r) for i, r in enumerate(data)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((lineno, e))
    return out


def _object_start_lines(text: str) -> list[int]:
    """Line numbers where the top-level array's elements start (a small scanner over strings/brackets)."""
    starts, depth, line, in_str, esc = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            if depth == 1:
                starts.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return starts


def load_annotations(paths, *, strict: bool = False) -> tuple[list[Sample], list[str]]:
    """Parses annotation files.  Returns (samples, problems): every record that parses becomes a Sample
    (numbered in file order), every one that does not adds "file:line: what" lines.  strict=True raises
    AnnotationError instead when there is any problem.  Duplicate ids are problems too."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    samples: list[Sample] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in map(os.fspath, paths):
        if not os.path.isfile(path):
            problems.append(f"{path}: annotation file not found")
            continue
        for line, record in _records(path):
            where = f"{path}:{line}"
            if isinstance(record, Exception):
                problems.append(f"{where}: not valid JSON ({record})")
                continue
            sample, errs = parse_record(record, where, default_id=f"{os.path.basename(path)}:{line}")
            problems.extend(f"{where}: {e}" for e in errs)
            if sample is None:
                continue
            if sample.id in seen:
                problems.append(f"{where}: duplicate id {sample.id!r} (first at {seen[sample.id]})")
                continue
            seen[sample.id] = where
            samples.append(Sample(sample.id, sample.messages, where, len(samples)))
    if strict and problems:
        raise AnnotationError(problems)
    return samples, problems


# ---- one record ------------------------------------------------------------------------------------------------------
def parse_record(record, where: str = "<record>", *, default_id: str | None = None) -> tuple[Sample | None, list[str]]:
    """One annotation record -> (Sample or None, problems).  Structural checks only (no files are read):
    the schema, tag vs media counts, alternating roles, a non-empty assistant turn."""
    if not isinstance(record, dict):
        return None, [f"a sample must be a JSON object, got {type(record).__name__}"]
    sample_id = record.get("id", default_id if default_id is not None else where)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        return None, [f"field 'id' must be a string or an integer, got {type(sample_id).__name__}"]
    sample_id = str(sample_id)
    has_conv, has_msgs = "conversations" in record, "messages" in record
    if has_conv == has_msgs:
        return None, [f"sample {sample_id!r}: needs exactly one of 'conversations' (official schema) or 'messages'"]
    try:
        messages = _official(record) if has_conv else _messages_form(record)
    except _Bad as e:
        return None, [f"sample {sample_id!r}: {e}"]
    problems = [f"sample {sample_id!r}: {p}" for p in check_roles(messages)]
    if problems:
        return None, problems
    return Sample(sample_id, tuple(messages), where), []


class _Bad(Exception):
    pass


def _str_list(value, field_name: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    for i, it in enumerate(items):
        if not isinstance(it, str) or not it:
            raise _Bad(f"field {field_name!r}[{i}] must be a non-empty path string, got {it!r}")
    return items


def _official(record: dict) -> list[Message]:
    conv = record["conversations"]
    if not isinstance(conv, list) or not conv:
        raise _Bad("field 'conversations' must be a non-empty list of {from, value} turns")
    images = _str_list(record["image"], "image") if record.get("image") is not None else []
    videos = _str_list(record["video"], "video") if record.get("video") is not None else []
    if images and videos:
        raise _Bad("the official schema has 'image' or 'video', not both; use the messages form to mix them")
    if len(videos) > 1:
        raise _Bad(f"field 'video' holds {len(videos)} paths; the official schema takes one video per sample")
    turns = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in OFFICIAL_ROLES:
            raise _Bad(f"conversations[{i}] must be {{\"from\": human|gpt|system, \"value\": str}}, got {turn!r}"[:300])
        turns.append((OFFICIAL_ROLES[turn["from"]], turn["value"]))
    media = [Media("image", p) for p in images] + [Media("video", p) for p in videos]
    tags = sum(len(TAG_RE.findall(v)) for _, v in turns)
    if media and tags == 0:  # the official repair: tags prepended to the first human turn
        first = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first is not None:
            tag = "<image>" if images else "<video>"
            turns[first] = ("user", tag * len(media) + turns[first][1])
    _check_tags(turns, {"<image>": len(images), "<video>": len(videos)})
    queue = {"image": iter(media[:len(images)]), "video": iter(media[len(images):])}
    messages = []
    for role, value in turns:
        if role != "user":
            messages.append(Message(role, (value,)))
            continue
        parts, pieces = [], TAG_RE.split(value)
        for k, tag in enumerate(TAG_RE.findall(value) + [None]):
            text = pieces[k].strip()
            if text:
                parts.append(text)
            if tag is not None:
                parts.append(next(queue[tag[1:-1]]))
        messages.append(Message(role, tuple(parts)))
    return messages


def _check_tags(turns, expected: dict[str, int]) -> None:
    for role, value in turns:
        if role != "user" and TAG_RE.search(value):
            raise _Bad(f"a {role} turn contains a media tag ({TAG_RE.search(value).group(0)}); tags belong in "
                       "user turns")
    for tag, n in expected.items():
        found = sum(v.count(tag) for _, v in turns)
        if found != n:
            kind = tag[1:-1]
            raise _Bad(f"{found} {tag} tag(s) but {n} {kind}(s) given; put one {tag} where each {kind} goes")


def _video_entry(entry, where: str) -> Media:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        raise _Bad(f"{where} must be a path or {{path, start, end, fps, max_frames}}, got {entry!r}")
    path = entry.get("path", entry.get("video"))
    if not isinstance(path, str) or not path:
        raise _Bad(f"{where} needs a non-empty 'path'")
    unknown = sorted(set(entry) - {"path", "video", "type", *VIDEO_OPTIONS})
    if unknown:
        raise _Bad(f"{where}: unknown key(s) {unknown}; known: path, {', '.join(VIDEO_OPTIONS)}")
    opts = {}
    for key in ("start", "end", "fps"):
        v = entry.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or
                              (key == "fps" and v == 0)):
            raise _Bad(f"{where}.{key} must be a {'positive' if key == 'fps' else 'non-negative'} number, got {v!r}")
        opts[key] = None if v is None else float(v)
    mf = entry.get("max_frames")
    if mf is not None and (isinstance(mf, bool) or not isinstance(mf, int) or mf < 1):
        raise _Bad(f"{where}.max_frames must be a positive integer, got {mf!r}")
    if opts["start"] is not None and opts["end"] is not None and opts["end"] <= opts["start"]:
        raise _Bad(f"{where}: end ({opts['end']}) must be after start ({opts['start']})")
    return Media("video", path, opts["start"], opts["end"], opts["fps"], mf)


def _messages_form(record: dict) -> list[Message]:
    msgs = record["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise _Bad("field 'messages' must be a non-empty list of {role, content} messages")
    images = [Media("image", p) for p in _str_list(record["images"], "images")] if record.get("images") else []
    videos = [_video_entry(v, f"videos[{i}]") for i, v in enumerate(record.get("videos") or [])]
    queue = {"image": iter(images), "video": iter(videos)}
    used = {"image": 0, "video": 0}
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _Bad(f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": ...}}, got {m!r}"[:300])
        content = m.get("content")
        parts = []
        if isinstance(content, str):
            pieces = TAG_RE.split(content)
            for k, tag in enumerate(TAG_RE.findall(content) + [None]):
                if pieces[k]:
                    parts.append(pieces[k])
                if tag is not None:
                    kind = tag[1:-1]
                    item = next(queue[kind], None)
                    used[kind] += 1
                    if item is None:
                        continue  # counted; reported below
                    parts.append(item)
        elif isinstance(content, list):
            for j, block in enumerate(content):
                parts.append(_block(block, f"messages[{i}].content[{j}]"))
        else:
            raise _Bad(f"messages[{i}].content must be a string or a list of blocks, got {type(content).__name__}")
        if m["role"] != "user" and any(isinstance(p, Media) for p in parts):
            raise _Bad(f"messages[{i}] ({m['role']}) holds media; images and videos belong in user messages")
        out.append(Message(m["role"], tuple(parts)))
    for kind, given in (("image", len(images)), ("video", len(videos))):
        if used[kind] != given:
            raise _Bad(f"{used[kind]} <{kind}> tag(s) but {given} {kind}(s) in '{kind}s'; put one <{kind}> where "
                       f"each {kind} goes")
    return out


def _block(block, where: str):
    if not isinstance(block, dict) or block.get("type") not in ("text", "image", "video"):
        raise _Bad(f"{where} must be a block with type text|image|video, got {block!r}"[:300])
    if block["type"] == "text":
        if not isinstance(block.get("text"), str):
            raise _Bad(f"{where} (text) needs a string 'text'")
        if TAG_RE.search(block["text"]):
            raise _Bad(f"{where}: a text block contains a media tag; use an image/video block instead")
        return block["text"]
    if block["type"] == "image":
        path = block.get("image", block.get("path"))
        if not isinstance(path, str) or not path:
            raise _Bad(f"{where} (image) needs a non-empty 'image' path")
        return Media("image", path)
    return _video_entry(block, where)


def check_roles(messages: list[Message]) -> list[str]:
    """Optional system turn first, then user / assistant alternating, starting with user; at least one
    assistant turn with non-empty text."""
    problems = []
    roles = [m.role for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        problems.append(f"a system turn may only come first (turn {roles.index('system', 1)})")
    for k, role in enumerate(body):
        want = "user" if k % 2 == 0 else "assistant"
        if role != want and role != "system":
            problems.append(f"roles do not alternate: turn {k + len(roles) - len(body)} is {role}, expected {want} "
                            f"(roles: {'/'.join(roles)})")
            break
    if not any(m.role == "assistant" and m.text.strip() for m in messages):
        problems.append("no non-empty assistant turn: nothing would be supervised")
    return problems

"""vLLM's OpenAI-compatible protocol as the simulator speaks it (pure: no server, no clock):
request validation with vLLM's refusals, and the response, chunk and error shapes.

Shapes follow vLLM >= 0.10 (``vllm/entrypoints/openai/protocol.py``): errors are
``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP status.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any

import pybase64

from .config import SimulatorConfig
from .output import MODES, image_digest, image_size, prompt_tokens


class ApiError(Exception):
    """An error answered in vLLM's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}


def dumps(obj: Any) -> str:
    """Compact JSON, as vLLM's pydantic models serialise."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ParsedRequest:
    """A validated chat request, reduced to what the simulator acts on."""

    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float
    seed: int | None
    skip_special_tokens: bool
    ignore_eos: bool
    ngram: bool
    mode: str
    image: bytes | None
    image_digest: bytes | None
    image_size: tuple[int, int] | None
    prompt_text: str
    prompt_tokens: int


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 ``BadRequestError``, vLLM's answer to a request it will not run."""
    return ApiError(400, message, "BadRequestError", param)


def _check_type(body: dict[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise bad_request(f"{key} must be {what}, got {type(value).__name__}", key)
    return value


def image_urls(body: Any) -> list[str]:
    """The http(s) image URLs of a request body (the server fetches them before parsing, as
    vLLM's media connector does); malformed bodies give none and fail in parse_chat_request."""
    out: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for msg in messages if isinstance(messages, list) else ():
        content = msg.get("content") if isinstance(msg, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    out.append(url)
    return out


def parse_chat_request(body: Any, config: SimulatorConfig, fetched: dict[str, bytes] | None = None) -> ParsedRequest:
    """Validate a chat completion request as vLLM would; raise :class:`ApiError` on the first
    problem. Unknown fields are ignored, as in vLLM. ``fetched``: the bytes of the request's
    http(s) image URLs (see :func:`image_urls`)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != config.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: a non-empty list of messages is required", "messages")
    texts: list[str] = []
    images: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a role", "messages")
        content = msg.get("content")
        if content is None or isinstance(content, str):
            texts.append(content or "")
            continue
        if not isinstance(content, list):
            raise bad_request(f"messages[{i}].content must be a string or a list of content parts", "messages")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise bad_request(f"{where} must be an object", "messages")
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}.text must be a string", "messages")
                texts.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise bad_request(f"{where}.image_url.url must be a string", "messages")
                images.append(url)
            else:
                raise bad_request(f"{where}: unsupported content part type {kind!r} (expected 'text' or 'image_url')", "messages")
    if len(images) > config.limit_images:
        raise bad_request(f"At most {config.limit_images} image(s) may be provided in one prompt.", "messages")

    stream = bool(_check_type(body, "stream", (bool,), "a boolean"))
    stream_options = _check_type(body, "stream_options", (dict,), "an object")
    if stream_options is not None and not stream:
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    include_usage = bool((stream_options or {}).get("include_usage", False))
    max_tokens = _check_type(body, "max_tokens", (int,), "an integer")
    mct = _check_type(body, "max_completion_tokens", (int,), "an integer")
    if max_tokens is None:
        max_tokens = mct
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    temperature = _check_type(body, "temperature", (int, float), "a number")
    temperature = 1.0 if temperature is None else float(temperature)
    if temperature < 0:
        raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
    n = _check_type(body, "n", (int,), "an integer")
    if n not in (None, 1):
        raise bad_request("the simulator supports n=1 only", "n")
    seed = _check_type(body, "seed", (int,), "an integer")
    skip = _check_type(body, "skip_special_tokens", (bool,), "a boolean")
    ignore_eos = bool(_check_type(body, "ignore_eos", (bool,), "a boolean"))

    xargs = _check_type(body, "vllm_xargs", (dict,), "an object")
    ngram = False
    if xargs:
        for key in ("ngram_size", "window_size"):
            if key in xargs and (not isinstance(xargs[key], int) or isinstance(xargs[key], bool) or xargs[key] < 1):
                raise bad_request(f"vllm_xargs.{key} must be a positive integer", "vllm_xargs")
        wl = xargs.get("whitelist_token_ids")
        if wl is not None and (not isinstance(wl, list) or not all(isinstance(t, int) for t in wl)):
            raise bad_request("vllm_xargs.whitelist_token_ids must be a list of integers", "vllm_xargs")
        ngram = "ngram_size" in xargs
    mm = _check_type(body, "mm_processor_kwargs", (dict,), "an object")
    mode = config.default_mode
    if mm and "mode" in mm:
        mode = str(mm["mode"]).lower()
        if mode not in (*MODES, "gundam"):
            raise bad_request(f"mm_processor_kwargs.mode must be one of tiny, small, base, large, gundam; got {mm['mode']!r}", "mm_processor_kwargs")

    image: bytes | None = None
    digest: bytes | None = None
    size: tuple[int, int] | None = None
    if images:
        image = (fetched or {}).get(images[0]) or _decode_data_url(images[0])
        try:
            digest = image_digest(image)
            size = image_size(image, digest=digest)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad input
            raise bad_request(f"Failed to load image: the image_url data cannot be decoded as an image ({type(exc).__name__}: {exc})", "messages") from exc
    prompt_text = "\n".join(texts)
    n_prompt = prompt_tokens(prompt_text, size, mode)
    limit = config.max_model_len
    if n_prompt >= limit or (max_tokens is not None and n_prompt + max_tokens > limit):
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n_prompt + (max_tokens or 0)} tokens ({n_prompt} in the messages, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            "max_tokens",
        )
    return ParsedRequest(
        stream=stream, include_usage=include_usage, max_tokens=max_tokens, temperature=temperature, seed=seed,
        skip_special_tokens=True if skip is None else skip, ignore_eos=ignore_eos, ngram=ngram, mode=mode,
        image=image, image_digest=digest, image_size=size, prompt_text=prompt_text, prompt_tokens=n_prompt,
    )


def _decode_data_url(url: str) -> bytes:
    if url.startswith(("http://", "https://")):
        raise bad_request("the image URL was not fetched", "messages")
    if not url.startswith("data:"):
        raise bad_request(f"unsupported image URL scheme in {url[:40]!r}; expected http(s) or a data:image/...;base64 URL", "messages")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise bad_request("the image data URL must look like data:image/<type>;base64,<data>", "messages")
    try:
        data = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the image data URL is not valid base64: {exc}", "messages") from exc
    if not data:
        raise bad_request("the image data URL is empty", "messages")
    return data

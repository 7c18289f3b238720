"""The vLLM side: teach vLLM's DeepSeek-OCR processor to honour per-request sizes.

Upstream (vllm/model_executor/models/deepseek_ocr.py and
vllm/transformers_utils/processors/deepseek_ocr.py, vLLM 0.11.1 - 0.26) builds one processor with the
module constants BASE_SIZE=1024, IMAGE_SIZE=640, CROP_MODE=True, and counts placeholder tokens with
the same constants. The model side already takes the sizes from the tensors it receives. Four
methods are wrapped, all keyed on the same merged kwargs (server ``--mm-processor-kwargs`` under the
request's ``mm_processor_kwargs``) so the token count and the pixels always agree:

1. ``DeepseekOCRProcessingInfo.get_hf_processor``: this plugin's keys are removed before vLLM builds
   (and caches) the HF processor, so there is still one shared processor instance.
2. ``DeepseekOCRMultiModalProcessor._call_hf_processor``: the request's sizes are set on a shallow
   copy of that processor (never on the shared one: requests are processed concurrently) and
   ``crop_mode`` is passed to its ``__call__``.
3. ``DeepseekOCRMultiModalProcessor._get_prompt_updates``: the placeholder count comes from
   ``modes.num_image_tokens`` with the same sizes.
4. ``DeepseekOCRForCausalLM.embed_multimodal`` (``get_multimodal_embeddings`` in older releases):
   when one encoder batch mixes modes, vLLM cannot stack images of different sizes and passes lists;
   the batch is then encoded one image at a time.

Everything that touches vLLM is imported inside ``apply`` so that this module imports without it.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .modes import Sizes, num_image_tokens, resolve_sizes, strip_mode_keys

log = logging.getLogger("vllm_ocr_modes")

_PATCHED_FLAG = "_vllm_ocr_modes_patched"


def server_mm_kwargs(info: Any) -> Mapping[str, Any]:
    """The server-wide ``--mm-processor-kwargs`` (empty when the attribute path differs)."""
    for path in (("ctx", "model_config", "multimodal_config", "mm_processor_kwargs"), ("ctx", "model_config", "mm_processor_kwargs")):
        obj: Any = info
        try:
            for attr in path:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, Mapping):
            return obj
    return {}


def request_sizes(info: Any, mm_kwargs: Mapping[str, Any] | None) -> Sizes:
    return resolve_sizes(server_mm_kwargs(info), mm_kwargs)


def sized_processor(processor: Any, sizes: Sizes) -> Any:
    """A shallow copy of the shared HF processor with this request's sizes."""
    clone = copy.copy(processor)
    clone.base_size = sizes.base_size
    clone.image_size = sizes.image_size
    return clone


def split_per_image(pixel_values: Any, images_crop: Any, images_spatial_crop: Any) -> list[tuple[Any, Any, Any]]:
    """Per-image (pixel_values, images_crop, images_spatial_crop) with a leading batch dimension of
    one, from a batch that vLLM could not stack. Works on torch tensors and numpy arrays alike.

    ``images_crop`` is either one array of every image's tiles concatenated (same tile size) or one
    entry per image; an image has cols*rows tiles when tiled (cols or rows > 1), else none."""
    n = len(pixel_values)
    crops_per_item = isinstance(images_crop, (list, tuple))
    if crops_per_item and len(images_crop) != n:
        raise ValueError(f"cannot split images_crop: {len(images_crop)} entries for {n} images")
    out = []
    offset = 0
    for i in range(n):
        spatial = images_spatial_crop[i]
        cols, rows = int(spatial[0]), int(spatial[1])
        tiles = cols * rows if (cols > 1 or rows > 1) else 0
        if crops_per_item:
            crops = images_crop[i]
        else:
            crops = images_crop[offset : offset + tiles]
            offset += tiles
        pv = pixel_values[i]
        out.append((pv[None] if pv.ndim == 3 else pv, crops, spatial[None] if spatial.ndim == 1 else spatial))
    return out


def _wrap_get_hf_processor(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_hf_processor(self: Any, **kwargs: Any) -> Any:
        return original(self, **strip_mode_keys(kwargs))

    return get_hf_processor


def _wrap_call_hf_processor(original: Callable[..., Any]) -> Callable[..., Any]:
    def _call_hf_processor(self: Any, prompt: str, mm_data: Mapping[str, object], mm_kwargs: Mapping[str, object], *args: Any, **kwargs: Any) -> Any:
        if not mm_data:  # text only: nothing to size
            return original(self, prompt, mm_data, strip_mode_keys(mm_kwargs), *args, **kwargs)
        sizes = request_sizes(self.info, mm_kwargs)
        rest = strip_mode_keys(mm_kwargs)
        processor = sized_processor(self.info.get_hf_processor(**rest), sizes)
        return self.info.ctx.call_hf_processor(processor, dict(prompt=prompt, **mm_data), {**rest, "crop_mode": sizes.crop_mode})

    return _call_hf_processor


def _wrap_get_prompt_updates(model_mod: Any) -> Callable[..., Any]:
    image_embedding_items = model_mod.ImageEmbeddingItems
    image_processor_items = model_mod.ImageProcessorItems
    prompt_replacement = model_mod.PromptReplacement

    def _get_prompt_updates(self: Any, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], *args: Any, **kwargs: Any) -> Sequence[Any]:
        sizes = request_sizes(self.info, hf_processor_mm_kwargs)
        hf_processor = self.info.get_hf_processor(**strip_mode_keys(hf_processor_mm_kwargs))
        image_token_id = hf_processor.image_token_id

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (image_embedding_items, image_processor_items))
            if isinstance(images, image_embedding_items):
                count = images.get_feature_size(item_idx)
            else:
                size = images.get_image_size(item_idx)
                count = num_image_tokens(size.width, size.height, sizes)
            return [image_token_id] * count

        return [prompt_replacement(modality="image", target=[image_token_id], replacement=replacement)]

    return _get_prompt_updates


def _wrap_embed(original: Callable[..., Any]) -> Callable[..., Any]:
    def embed(self: Any, **kwargs: Any) -> Any:
        pixel_values = kwargs.get("pixel_values")
        if not isinstance(pixel_values, (list, tuple)):
            return original(self, **kwargs)
        out: list[Any] = []
        for pv, crops, spatial in split_per_image(pixel_values, kwargs.get("images_crop"), kwargs.get("images_spatial_crop")):
            one = original(self, **{**kwargs, "pixel_values": pv, "images_crop": crops, "images_spatial_crop": spatial})
            if one:
                out.extend(one)
        return out

    return embed


def apply() -> bool:
    """Patch vLLM's DeepSeek-OCR classes once. False (with a warning) when this vLLM has no
    DeepSeek-OCR model or its classes do not look as expected; vLLM then serves Gundam only."""
    try:
        from vllm.model_executor.models import deepseek_ocr as model_mod
    except Exception as exc:  # noqa: BLE001 - any import problem means: nothing to patch
        log.warning("vllm_ocr_modes: vLLM's DeepSeek-OCR model is not importable (%s); modes stay Gundam", exc)
        return False
    if getattr(model_mod, _PATCHED_FLAG, False):
        return True
    info_cls = getattr(model_mod, "DeepseekOCRProcessingInfo", None)
    proc_cls = getattr(model_mod, "DeepseekOCRMultiModalProcessor", None)
    model_cls = getattr(model_mod, "DeepseekOCRForCausalLM", None)
    needed = ("ImageEmbeddingItems", "ImageProcessorItems", "PromptReplacement")
    if info_cls is None or proc_cls is None or model_cls is None or not all(hasattr(model_mod, n) for n in needed):
        log.warning("vllm_ocr_modes: this vLLM's deepseek_ocr module has an unexpected layout; modes stay Gundam")
        return False
    embed_name = "embed_multimodal" if hasattr(model_cls, "embed_multimodal") else "get_multimodal_embeddings"
    parse = getattr(model_cls, "_parse_and_validate_image_input", None)
    if parse is not None:
        try:
            if "shape[-1]" not in inspect.getsource(parse):
                log.warning(
                    "vllm_ocr_modes: this vLLM's DeepSeek-OCR model may validate fixed image sizes; "
                    "tiny/small/large can fail here (base and gundam use the upstream sizes)"
                )
        except (OSError, TypeError):
            pass
    info_cls.get_hf_processor = _wrap_get_hf_processor(info_cls.get_hf_processor)
    proc_cls._call_hf_processor = _wrap_call_hf_processor(proc_cls._call_hf_processor)
    proc_cls._get_prompt_updates = _wrap_get_prompt_updates(model_mod)
    if hasattr(model_cls, embed_name):
        setattr(model_cls, embed_name, _wrap_embed(getattr(model_cls, embed_name)))
    setattr(model_mod, _PATCHED_FLAG, True)
    log.info("vllm_ocr_modes: DeepSeek-OCR modes tiny/small/base/large/gundam enabled via mm_processor_kwargs")
    return True

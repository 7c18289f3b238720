"""The vLLM plugin plugins/vllm_ocr_modes, on CPU and without vLLM: its mode logic, its token counts
against a transcription of the upstream processor, and its patch wired into stand-in vLLM classes."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "vllm_ocr_modes"))

from vllm_ocr_modes import modes as plugin_modes  # noqa: E402
from vllm_ocr_modes import patch as plugin_patch  # noqa: E402
from vllm_ocr_modes.modes import MODES, ModeError, Sizes, num_image_tokens, resolve_sizes  # noqa: E402

from ocr_stream.contracts import Mode  # noqa: E402
from ocr_stream.engines import prompts  # noqa: E402

# --- upstream arithmetic, transcribed line by line from vLLM's processors/deepseek_ocr.py --------


def _up_find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):  # type: ignore[no-untyped-def]
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def _up_calculate_aspect_ratios(min_num=2, max_num=6):  # type: ignore[no-untyped-def]
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


def upstream_token_count(width: int, height: int, base_size: int, image_size: int, cropping: bool) -> int:
    """len(tokenized_image) in DeepseekOCRProcessor.tokenize_with_images for one image."""
    if width <= 640 and height <= 640:
        crop_ratio = [1, 1]
    elif cropping:
        crop_ratio = list(
            _up_find_closest_aspect_ratio(width / height, _up_calculate_aspect_ratios(), width, height, 640)
        )
    else:
        crop_ratio = [1, 1]
    num_width_tiles, num_height_tiles = crop_ratio
    num_queries = math.ceil((image_size // 16) / 4)
    num_queries_base = math.ceil((base_size // 16) / 4)
    tokenized_image = ([0] * num_queries_base + [0]) * num_queries_base
    tokenized_image += [0]
    if num_width_tiles > 1 or num_height_tiles > 1:
        local_row = [0] * (num_queries * num_width_tiles + 1)
        tokenized_image += local_row * (num_queries * num_height_tiles)
    return len(tokenized_image)


# --- pure logic ----------------------------------------------------------------------------------


def test_mode_table() -> None:
    assert {k: (v.base_size, v.image_size, v.crop_mode) for k, v in MODES.items()} == {
        "tiny": (512, 512, False),
        "small": (640, 640, False),
        "base": (1024, 1024, False),
        "large": (1280, 1280, False),
        "gundam": (1024, 640, True),
    }


@pytest.mark.parametrize(("mode", "tokens"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_no_crop_token_counts(mode: str, tokens: int) -> None:
    # 64/100/256/400 vision tokens plus one newline per row and the view separator.
    for size in [(300, 400), (1131, 1600), (1600, 1131), (4000, 100)]:
        assert num_image_tokens(*size, MODES[mode]) == tokens


def test_gundam_token_counts() -> None:
    gundam = MODES["gundam"]
    assert num_image_tokens(640, 640, gundam) == 273  # fits 640x640: global view only
    assert num_image_tokens(1280, 1920, gundam) == 903  # portrait page: 2x3 tiles
    assert num_image_tokens(1131, 1600, gundam) == 903
    assert num_image_tokens(1920, 1280, gundam) == 273 + 20 * 31  # landscape: 3x2 tiles


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    mode=st.sampled_from(sorted(MODES)),
)
def test_token_counts_match_upstream_processor(width: int, height: int, mode: str) -> None:
    sizes = MODES[mode]
    expected = upstream_token_count(width, height, sizes.base_size, sizes.image_size, sizes.crop_mode)
    assert num_image_tokens(width, height, sizes) == expected
    # ocr-stream's own copy (engines.prompts) agrees, so the engine can predict prompt tokens.
    assert prompts.image_tokens(Mode(mode), width, height) == expected


def test_resolve_sizes() -> None:
    assert resolve_sizes() == MODES["gundam"]
    assert resolve_sizes({"mode": "base"}) == MODES["base"]
    assert resolve_sizes({"mode": "BASE"}) == MODES["base"]
    assert resolve_sizes({"mode": "small"}, {"mode": "large"}) == MODES["large"]  # request wins
    assert resolve_sizes({"mode": "base"}, None) == MODES["base"]  # server default
    assert resolve_sizes({"base_size": 1280, "image_size": 1280, "crop_mode": False}) == MODES["large"]
    assert resolve_sizes({"mode": "tiny", "base_size": 640}) == Sizes(640, 512, False)
    assert resolve_sizes({"mode": "base", "other": 1}) == MODES["base"]


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "huge"},
        {"mode": 3},
        {"base_size": 1000},
        {"base_size": True},
        {"image_size": "640"},
        {"crop_mode": "yes"},
        {"mode": "base", "crop_mode": True},  # tiles are always 640 upstream
    ],
)
def test_resolve_sizes_rejects_with_a_reason(bad: dict[str, Any]) -> None:
    with pytest.raises(ModeError, match="mm_processor_kwargs"):
        resolve_sizes(bad)
    assert issubclass(ModeError, ValueError)  # vLLM answers ValueErrors in preprocessing with 400


def test_split_per_image() -> None:
    pv = [np.zeros((3, 1024, 1024)), np.zeros((3, 512, 512)), np.zeros((3, 1024, 1024))]
    spatial = np.array([[2, 3], [1, 1], [1, 1]])
    crops = np.arange(6 * 3 * 2 * 2).reshape(6, 3, 2, 2)
    parts = plugin_patch.split_per_image(pv, crops, spatial)
    assert [p[0].shape for p in parts] == [(1, 3, 1024, 1024), (1, 3, 512, 512), (1, 3, 1024, 1024)]
    assert [len(p[1]) for p in parts] == [6, 0, 0]
    assert [p[2].tolist() for p in parts] == [[[2, 3]], [[1, 1]], [[1, 1]]]
    per_item = [np.zeros((6, 3, 2, 2)), np.zeros((0, 3, 512, 512)), np.zeros((0, 3, 1024, 1024))]
    assert [len(p[1]) for p in plugin_patch.split_per_image(pv, per_item, spatial)] == [6, 0, 0]
    with pytest.raises(ValueError, match="cannot split"):
        plugin_patch.split_per_image(pv, per_item[:2], spatial)


def test_plugin_package_metadata() -> None:
    text = (ROOT / "plugins" / "vllm_ocr_modes" / "pyproject.toml").read_text()
    assert '[project.entry-points."vllm.general_plugins"]' in text
    assert 'ocr_modes = "vllm_ocr_modes:register"' in text


def test_register_without_vllm_is_harmless() -> None:
    import vllm_ocr_modes

    if "vllm" in sys.modules:
        pytest.skip("a vllm module is loaded")
    vllm_ocr_modes.register()  # logs a warning, does not raise
    assert plugin_patch.apply() is False


# --- the patch, against stand-ins shaped like vLLM's classes --------------------------------------


class _ImageSize:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height


class ImageProcessorItems:
    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def get_image_size(self, i: int) -> _ImageSize:
        return _ImageSize(*self.sizes[i])


class ImageEmbeddingItems:
    def get_feature_size(self, i: int) -> int:
        return 7


class MMItems:
    def __init__(self, items: Any) -> None:
        self.items = items

    def get_items(self, modality: str, types_: Any) -> Any:
        assert modality == "image"
        return self.items


class PromptReplacement:
    def __init__(self, *, modality: str, target: list[int], replacement: Any) -> None:
        self.modality, self.target, self.replacement = modality, target, replacement


class FakeHFProcessor:
    """Stands in for DeepseekOCRProcessor: counts tokens the upstream way from its own attributes."""

    image_token_id = 128815

    def __init__(self) -> None:
        self.base_size, self.image_size = 1024, 640  # upstream module constants

    def __call__(self, *, prompt: str, images: list[tuple[int, int]], crop_mode: bool = True, **kwargs: Any) -> dict[str, Any]:
        assert "mode" not in kwargs, "the plugin's keys must not reach the HF processor"
        return {
            "num_image_tokens": [upstream_token_count(w, h, self.base_size, self.image_size, crop_mode) for w, h in images],
            "sizes": (self.base_size, self.image_size, crop_mode),
        }


class FakeCtx:
    def __init__(self, server_kwargs: dict[str, Any]) -> None:
        self.model_config = types.SimpleNamespace(multimodal_config=types.SimpleNamespace(mm_processor_kwargs=server_kwargs))
        self.processor = FakeHFProcessor()

    def call_hf_processor(self, processor: Any, data: dict[str, Any], kwargs: dict[str, Any]) -> Any:
        return processor(**data, **kwargs)


def _fake_vllm_module(server_kwargs: dict[str, Any]) -> types.ModuleType:
    mod = types.ModuleType("vllm.model_executor.models.deepseek_ocr")

    class DeepseekOCRProcessingInfo:
        def __init__(self) -> None:
            self.ctx = FakeCtx(server_kwargs)

        def get_hf_processor(self, **kwargs: Any) -> FakeHFProcessor:
            if set(kwargs) - {"strategy"}:
                raise TypeError(f"Unexpected keyword argument {sorted(kwargs)}")
            return self.ctx.processor  # vLLM caches one instance

    class DeepseekOCRMultiModalProcessor:
        def __init__(self) -> None:
            self.info = DeepseekOCRProcessingInfo()

        def _call_hf_processor(self, prompt: str, mm_data: Any, mm_kwargs: Any, tok_kwargs: Any) -> Any:
            return {"text_only": True, "kwargs": dict(mm_kwargs)}

        def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Any, out_mm_kwargs: Any) -> Any:
            raise AssertionError("must be replaced")

    class DeepseekOCRForCausalLM:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def embed_multimodal(self, **kwargs: Any) -> Any:
            self.calls.append((kwargs["pixel_values"].shape, len(kwargs["images_crop"])))
            return [f"embedding-{len(self.calls)}"]

        def _parse_and_validate_image_input(self, **kwargs: Any) -> Any:
            pixel_values = kwargs["pixel_values"]
            return pixel_values.shape[-1]

    mod.DeepseekOCRProcessingInfo = DeepseekOCRProcessingInfo  # type: ignore[attr-defined]
    mod.DeepseekOCRMultiModalProcessor = DeepseekOCRMultiModalProcessor  # type: ignore[attr-defined]
    mod.DeepseekOCRForCausalLM = DeepseekOCRForCausalLM  # type: ignore[attr-defined]
    mod.ImageEmbeddingItems = ImageEmbeddingItems  # type: ignore[attr-defined]
    mod.ImageProcessorItems = ImageProcessorItems  # type: ignore[attr-defined]
    mod.PromptReplacement = PromptReplacement  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = _fake_vllm_module({})
    for name in ("vllm", "vllm.model_executor", "vllm.model_executor.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.models.deepseek_ocr", mod)
    monkeypatch.setattr(sys.modules["vllm.model_executor.models"], "deepseek_ocr", mod, raising=False)
    assert plugin_patch.apply() is True
    assert plugin_patch.apply() is True  # idempotent
    return mod


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("size", [(600, 500), (1131, 1600), (1600, 1131), (2000, 700)])
def test_patched_placeholders_agree_with_processor(patched: types.ModuleType, mode: str, size: tuple[int, int]) -> None:
    proc = patched.DeepseekOCRMultiModalProcessor()
    kwargs = {"mode": mode}
    out = proc._call_hf_processor("<image>\nFree OCR.", {"images": [size]}, kwargs, {})
    sizes = MODES[mode]
    assert out["sizes"] == (sizes.base_size, sizes.image_size, sizes.crop_mode)
    (update,) = proc._get_prompt_updates(MMItems(ImageProcessorItems([size])), kwargs, None)
    placeholders = update.replacement(0)
    assert len(placeholders) == out["num_image_tokens"][0]
    assert set(placeholders) == {FakeHFProcessor.image_token_id}
    # The shared processor kept the upstream sizes: requests never see each other's mode.
    assert (proc.info.ctx.processor.base_size, proc.info.ctx.processor.image_size) == (1024, 640)


def test_patched_default_is_gundam_and_text_only_passes_through(patched: types.ModuleType) -> None:
    proc = patched.DeepseekOCRMultiModalProcessor()
    out = proc._call_hf_processor("<image>", {"images": [(1131, 1600)]}, {}, {})
    assert out["sizes"] == (1024, 640, True) and out["num_image_tokens"] == [903]
    assert proc._call_hf_processor("hello", {}, {"mode": "base"}, {}) == {"text_only": True, "kwargs": {}}
    (update,) = proc._get_prompt_updates(MMItems(ImageEmbeddingItems()), {}, None)
    assert len(update.replacement(0)) == 7


def test_patched_server_default_mode(patched: types.ModuleType) -> None:
    proc = patched.DeepseekOCRMultiModalProcessor()
    proc.info.ctx.model_config.multimodal_config.mm_processor_kwargs = {"mode": "base"}
    assert proc._call_hf_processor("<image>", {"images": [(1131, 1600)]}, {}, {})["num_image_tokens"] == [273]
    assert proc._call_hf_processor("<image>", {"images": [(1131, 1600)]}, {"mode": "tiny"}, {})["num_image_tokens"] == [73]


def test_patched_bad_mode_is_a_value_error(patched: types.ModuleType) -> None:
    proc = patched.DeepseekOCRMultiModalProcessor()
    with pytest.raises(ValueError, match="unknown mode 'huge'"):
        proc._call_hf_processor("<image>", {"images": [(100, 100)]}, {"mode": "huge"}, {})


def test_patched_mixed_mode_batch_is_encoded_per_image(patched: types.ModuleType) -> None:
    model = patched.DeepseekOCRForCausalLM()
    stacked = model.embed_multimodal(pixel_values=np.zeros((2, 3, 1024, 1024)), images_crop=np.zeros((0, 3, 640, 640)), images_spatial_crop=np.ones((2, 2)))
    assert stacked == ["embedding-1"]  # one stackable batch: passed through untouched
    mixed = model.embed_multimodal(
        pixel_values=[np.zeros((3, 1024, 1024)), np.zeros((3, 512, 512))],
        images_crop=[np.zeros((6, 3, 640, 640)), np.zeros((0, 3, 512, 512))],
        images_spatial_crop=np.array([[2, 3], [1, 1]]),
    )
    assert mixed == ["embedding-2", "embedding-3"]
    assert model.calls[1:] == [((1, 3, 1024, 1024), 6), ((1, 3, 512, 512), 0)]


def test_plugin_imports_without_vllm_torch_or_pil() -> None:
    """The pure part runs anywhere: import it in a fresh interpreter where vllm, torch and PIL are
    made unimportable."""
    import subprocess

    code = (
        "import sys\n"
        "for m in ('vllm', 'torch', 'PIL', 'transformers'): sys.modules[m] = None\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins' / 'vllm_ocr_modes')!r})\n"
        "import vllm_ocr_modes\n"
        "from vllm_ocr_modes.modes import MODES, num_image_tokens\n"
        "vllm_ocr_modes.register()\n"
        "print(num_image_tokens(1131, 1600, MODES['gundam']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "903"

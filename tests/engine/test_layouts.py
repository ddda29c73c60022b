"""Token and channels-last layers as maps: detection, refusals, and every method against the
literal reference on the output read as a grid by hand (plain and meta, both meta paths).

The reference is ``tests/test_reference.py``'s (materialised per-location terms, plain
reductions), fed with activations and gradients that a plain forward hook records on the
layer's *raw* output and that this file reads as (K, H, W) itself: ``permute`` for
channels-last, ``tokens[P:].T.reshape(D, h, w)`` for tokens, with the P leading tokens left
out. Each model names the reading of each layer here, so a detection error cannot hide in
the reference. The reading is validated once without the library: Σ_u of the scaling and bias
terms is autograd's gradient of a zero-initialised scale and bias spliced onto the patch tokens
only.
"""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MaxVit, SwinTransformer, VisionTransformer

from saliency_monitor import compute_saliency, default_layers
from saliency_monitor.engine import declare_layout
from saliency_monitor.engine.layers import trace_forward
from saliency_monitor.engine.layouts import CHANNELS_FIRST, CHANNELS_LAST, TOKENS, MapLayout
from tests._trace import assert_same, snapshot
from tests.conftest import make_vgg11, without_inplace
from tests.test_reference import (
    LayerRecord,
    all_methods,
    assert_close_to_reference,
    literal_terms,
    method_pair,
    reference_values,
    term_sum,
)

TARGETS = torch.tensor([[0, 3], [4, 0]])
META_METHODS = ["norm_grad", "norm_grad_selective", "linear_approx", "grad_cam", "gradient"]


def randomize_head(model: nn.Module, head: nn.Linear) -> nn.Module:
    """torchvision's ViT starts with a zero head (every gradient 0): a random one instead."""
    with torch.no_grad():
        head.weight.normal_(0, 0.5)
        head.bias.normal_(0, 0.1)
    return model


def tv_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=12, mlp_dim=24,
                              num_classes=5)
    return randomize_head(model, model.heads.head).double().eval()


def tv_swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=5).double().eval()


def tv_maxvit() -> nn.Module:
    torch.manual_seed(0)
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[12, 20], block_layers=[1, 1],
                  head_dim=4, stochastic_depth_prob=0.0, num_classes=5).double().eval()


def timm_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=12, depth=3, num_heads=2, mlp_ratio=2, num_classes=5, reg_tokens=2,
    ).double().eval()


def timm_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, embed_dim=12, depths=(1, 1), num_heads=(2, 2), window_size=4, num_classes=5,
    ).double().eval()


def timm_convnext() -> nn.Module:
    torch.manual_seed(0)
    return timm.models.convnext.ConvNeXt(dims=(12, 20, 28, 36), depths=(1, 1, 1, 1), num_classes=5,
                                         conv_mlp=False).double().eval()


CL = (CHANNELS_LAST,)
CF = (CHANNELS_FIRST,)
READINGS = {
    "tv_vit": (tv_vit, {
        "conv_proj": CF,
        "encoder.dropout": (TOKENS, 1, (4, 4)),
        "encoder.layers.encoder_layer_0.mlp.0": (TOKENS, 1, (4, 4)),
        "encoder.layers.encoder_layer_1": (TOKENS, 1, (4, 4)),
    }),
    "tv_swin": (tv_swin, {
        "features.0.1": CL, "features.1": CL, "features.2.norm": CL, "features.3.0.mlp.1": CL, "permute": CF,
    }),
    "tv_maxvit": (tv_maxvit, {"stem": CF, "blocks.0": CF, "blocks.0.layers.0.layers.grid_attention": CF}),
    "timm_vit": (timm_vit, {
        "patch_embed": (TOKENS, 0, (4, 4)), "blocks.0": (TOKENS, 3, (4, 4)), "blocks.1.mlp.fc1": (TOKENS, 3, (4, 4)),
    }),
    "timm_swin": (timm_swin, {"patch_embed": CL, "layers.0": CL, "layers.1.downsample.norm": CL, "norm": CL}),
    "timm_convnext": (timm_convnext, {"stem": CF, "stages.0.blocks.0.norm": CL, "stages.1.blocks.0.mlp.fc1": CL,
                                      "stages.1": CF}),
}


def read_as_grid(tensor: Tensor, reading: tuple) -> Tensor:
    """One image's raw output (no batch axis) as (K, H, W), by hand."""
    if reading[0] == CHANNELS_LAST:
        return tensor.permute(2, 0, 1)
    if reading[0] == TOKENS:
        _, prefix, (h, w) = reading
        patches = tensor[prefix:]
        assert patches.shape[0] == h * w
        return patches.T.reshape(patches.shape[1], h, w)
    return tensor


def literal_records(model: nn.Module, images: Tensor, targets: Tensor, readings: dict) -> list[dict[str, LayerRecord]]:
    """Per image: {layer: LayerRecord} of the raw output read by hand; one forward and one
    autograd.grad per target, plain forward hooks on a deep copy."""
    ref = without_inplace(model)
    modules = dict(ref.named_modules())
    records = []
    for b in range(images.shape[0]):
        outputs: dict[str, Tensor] = {}

        def keep(name: str, outputs: dict[str, Tensor] = outputs):
            def hook(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
                outputs[name] = output
                return output.clone()

            return hook

        handles = [modules[n].register_forward_hook(keep(n)) for n in readings]
        try:
            logits = ref(images[b : b + 1])
        finally:
            for handle in handles:
                handle.remove()
        names = list(readings)
        per_target = [torch.autograd.grad(logits[0, int(c)], [outputs[n] for n in names], retain_graph=True)
                      for c in targets[b]]
        records.append({
            name: LayerRecord(
                activation=read_as_grid(outputs[name][0].detach(), readings[name]),
                gradient=torch.stack([read_as_grid(grads[i][0], readings[name]) for grads in per_target]),
                layer_input=None, module=None,
            )
            for i, name in enumerate(names)
        })
    return records


def images_for(seed: int = 1, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def summed_magnitudes(records: list[dict[str, LayerRecord]], layer: str, extract: str | None, where: Tensor) -> Tensor:
    """(B, T, n): Σ of the |entries| a sum aggregates at each location (Grad-CAM: Σ_k |α_k x_k|)."""
    per_image = []
    for rec in records:
        record, rows = rec[layer], []
        for t in range(record.gradient.shape[0]):
            if extract is None:
                weights = record.gradient[t].mean(dim=(1, 2))
                rows.append((weights[:, None, None] * record.activation).abs().sum(0).flatten()[where])
                continue
            total = torch.zeros(len(where), dtype=torch.float64)
            for positions, _rows, block, _entries in literal_terms(extract, record, t, where):
                total[positions] += block.flatten(1).abs().sum(1)
            rows.append(total)
        per_image.append(torch.stack(rows))
    return torch.stack(per_image)


def compare(maps: dict, records: list[dict[str, LayerRecord]], layers: list[str], methods: list[str],
            what: str) -> int:
    """Library maps against the reference; returns how many (layer, method) maps were compared.
    Sums (and Grad-CAM's) are held to float32 rounding of the
    entries they add: a token layer that only feeds a LayerNorm has Σ_k g_k = 0 and Σ_k g_k x_k = 0
    (LN is invariant to shifting and scaling its input), which the library's float32 gets as rounding."""
    failures, compared = [], 0
    for layer in layers:
        for method, (where, expected) in reference_values(records, layer, methods).items():
            actual = maps[method][layer].double().flatten(2)[..., where]
            pair = method_pair(method)
            try:
                if pair is None or pair[1] == "sum":
                    scale = summed_magnitudes(records, layer, pair and pair[0], where).amax(-1, keepdim=True)
                    error = float(((actual - expected).abs() / scale.clamp_min(1e-300)).max())
                    assert error <= 2e-5, f"{what} {layer} {method}: max error {error:.3g} of the summed |entries|"
                else:
                    assert expected.abs().amax() > 0, f"{what} {layer} {method}: degenerate reference"
                    assert_close_to_reference(actual.float(), expected, f"{what} {layer} {method}")
            except AssertionError as error:
                failures.append(str(error))
            compared += 1
    assert not failures, "\n".join(failures)
    return compared


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("model_name", list(READINGS))
def test_detected_layouts_are_the_readings_by_hand(model_name: str) -> None:
    make, readings = READINGS[model_name]
    trace = trace_forward(make(), images_for()[:1])
    for layer, reading in readings.items():
        expected = MapLayout(TOKENS, reading[2], reading[1]) if reading[0] == TOKENS else MapLayout(reading[0])
        assert trace.layouts[layer] == expected, layer


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("tv_vit", ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]),  # not the last block
        ("tv_swin", ["features.1", "norm"]),
        ("tv_maxvit", ["stem", "blocks.0", "blocks.1"]),
        ("timm_vit", ["blocks.0", "blocks.1"]),
        ("timm_swin", ["layers.0", "norm"]),
        ("timm_convnext", ["stages.0", "stages.1", "stages.2"]),
    ],
)
def test_default_layers_of_tiny_transformers(model_name: str, expected: list[str]) -> None:
    assert default_layers(READINGS[model_name][0](), images_for()) == expected


def test_a_plain_vit_without_class_token_keeps_its_last_block() -> None:
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=12, depth=6, num_heads=2, num_classes=5, class_token=False,
        global_pool="avg")
    assert default_layers(model.eval(), torch.randn(1, 3, 32, 32)) == ["blocks.0", "blocks.2", "blocks.3", "blocks.5"]


class Windows(nn.Module):
    """A conv, then a layer that regroups its 8×8 map into (B·4, 16, C) windows and back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.window_mlp = nn.Linear(6, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)  # (B, 6, 8, 8)
        b = x.shape[0]
        windows = x.reshape(b, 6, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(b * 4, 16, 6)
        windows = self.window_mlp(windows)
        x = windows.reshape(b, 2, 2, 4, 4, 6).permute(0, 5, 1, 3, 2, 4).reshape(b, 6, 8, 8)
        return self.head(x.mean(dim=(2, 3)))


REFUSALS = [
    (tv_maxvit, "blocks.0.layers.0.layers.grid_attention.mlp_layer", 32,
     "Expected layer 'blocks.0.layers.0.layers.grid_attention.mlp_layer' to output a map on the image grid, but "
     "got shape (2, 16, 4, 12): it runs between a window partition and its departition: its axes are windows and "
     "window tokens. Choose a layer whose output lies on the grid (a stage or block output), or state its layout "
     "with saliency_monitor.engine.declare_layout(module, ...)."),
    (make_vgg11, "avgpool", 32,
     "Expected layer 'avgpool' to output a map on the image grid, but got shape (2, 512, 7, 7): it is an adaptive "
     "pool that upsamples its 1×1 input to 7×7: its map is a replicated copy of the previous layer's."),
    (make_vgg11, "features.20", 32,
     "Expected layer 'features.20' to output a map on the image grid, but got shape (2, 512, 1, 1): its map is 1×1 "
     "(one value per channel, as after a global pool): no spatial extent."),
    (tv_vit, "encoder.layers.encoder_layer_0.self_attention", 32,
     "Expected layer 'encoder.layers.encoder_layer_0.self_attention' to output a 4-D (B, K, H, W) tensor, but got "
     "a tuple of 2 items (NoneType, torch.float64 tensor of shape (2, 17, 12)). Maps are read from (B, K, H, W) "
     "and channels-last (B, H, W, C) outputs and from (B, N, D) tokens on a patch grid."),
    (Windows, "window_mlp", 8,
     "Expected layer 'window_mlp' to output a map on the image grid, but got shape (8, 16, 6): its first axis (8) "
     "is not the batch of 2 images: a window-partitioned or otherwise regrouped tensor."),
    (tv_maxvit, "blocks.0.layers.0.layers.window_attention.partition_op", 32, "between a window partition"),
]


@pytest.mark.parametrize(("make", "layer", "size", "message"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_what_is_not_a_map_is_refused_by_name(make, layer: str, size: int, message: str) -> None:
    """The same message on the meta paths, with the batch of one image they run at."""
    model = make().double().eval()
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    any_batch = re.sub(r"\\\(\d+,", r"\\(\\d+,", re.escape(message))  # shape (2, ... -> (\d+, ...
    any_batch = re.sub(r"(axis|of)\\ (\\\()?\d+", r"\1\\ \2\\d+", any_batch)
    with pytest.raises(ValueError, match=re.escape(message)):
        compute_saliency(model, images, [0, 1], [layer], ["norm_grad"])
    for batching in ("loop", "vmap"):
        with pytest.raises(ValueError, match=any_batch):
            compute_saliency(model, images, [0, 1], [layer], ["norm_grad"], meta_lr=0.01, meta_batching=batching)


def test_attention_weights_on_a_grid_sized_matrix_are_refused() -> None:
    """An N×N attention matrix whose N is a grid side of the model (one 8×8 window over an 8×8 map:
    N = 64 = the 64×64 patch grid) reads as (B, heads, 64, 64): refused for its softmax rows."""

    class OneWindow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patches = nn.Conv2d(3, 4, 1)  # 64×64 grid
            self.down = nn.Conv2d(4, 4, 8, stride=8)  # 8×8: one window of N = 64 tokens
            self.attn_drop = nn.Dropout(0.0)
            self.head = nn.Linear(4, 5)

        def forward(self, x: Tensor) -> Tensor:
            tokens = self.down(self.patches(x)).flatten(2).transpose(1, 2)[:, None]  # (B, 1, 64, 4)
            weights = self.attn_drop((tokens @ tokens.transpose(-1, -2)).softmax(-1))  # (B, 1, 64, 64)
            return self.head((weights @ tokens).mean(dim=(1, 2)))

    with pytest.raises(ValueError, match="sum to 1 along its last axis: attention, not a map"):
        compute_saliency(OneWindow().eval(), torch.randn(2, 3, 64, 64), [0, 1], ["attn_drop"])


# --------------------------------------------------------------------------- declared layouts


class LinearPatches(nn.Module):
    """A ViT-like model with a linear patch embedding (no conv: no grid to find the tokens on)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 8 * 8, 12)
        self.block = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 12), nn.GELU())
        self.head = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        patches = F.unfold(x, 8, stride=8).transpose(1, 2)  # (B, 16, 192), raster order of the 4×4 grid
        return self.head(self.block(self.embed(patches)).mean(1))


def test_declared_token_layout_gives_the_maps_of_the_grid() -> None:
    torch.manual_seed(0)
    model = LinearPatches().double().eval()
    images = images_for()
    with pytest.raises(ValueError, match=r"its 16 tokens are not 0 to 8 leading tokens plus a grid"):
        compute_saliency(model, images, TARGETS, ["block"])
    declare_layout(model.block, "tokens", grid=(4, 4))
    methods = all_methods(conv=False)
    maps = compute_saliency(model, images, TARGETS, ["block"], methods)
    compare(maps, literal_records(model, images, TARGETS, {"block": (TOKENS, 0, (4, 4))}), ["block"], methods,
            "declared")
    declare_layout(model.block, "tokens", grid=5)
    with pytest.raises(ValueError, match=re.escape(
            "but got shape (2, 16, 12): its declared layout is tokens (B, 5×5, D), which needs (B, 25, D)")):
        compute_saliency(model, images, TARGETS, ["block"])
    declare_layout(model.block, None)
    assert not hasattr(model.block, "_saliency_map_layout")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "nhwc"}, "Expected `layout` to be one of ['channels_first', 'channels_last', 'tokens'] or None, "
                             "but got 'nhwc'."),
        ({"layout": "tokens"}, "Expected `grid` to be the tokens' patch grid (h, w), but got None."),
        ({"layout": "tokens", "grid": (4, 0)}, "Expected `grid` to be None, a positive int or (h, w), but got (4, 0)."),
        ({"layout": "tokens", "grid": 4, "prefix_tokens": -1},
         "Expected `prefix_tokens` to be an int >= 0, but got -1."),
        ({"layout": "channels_last", "grid": 4}, "Expected `grid=None` and `prefix_tokens=0` for layout "
                                                 "'channels_last' (its shape holds the grid), but got grid=4"),
    ],
)
def test_declare_layout_checks_its_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        declare_layout(nn.Linear(2, 2), **kwargs)
    with pytest.raises(TypeError, match=r"Expected `module` to be a torch\.nn\.Module"):
        declare_layout("block", "tokens", grid=4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the literal reference


@pytest.mark.parametrize("model_name", list(READINGS))
def test_every_method_matches_the_literal_reference_on_the_grid_read_by_hand(model_name: str) -> None:
    make, readings = READINGS[model_name]
    model, images, layers, methods = make(), images_for(), list(readings), all_methods(conv=False)
    maps = compute_saliency(model, images, TARGETS, layers, methods)
    compared = compare(maps, literal_records(model, images, TARGETS, readings), layers, methods, model_name)
    assert compared == len(layers) * len(methods), "every method at every layer has a reference"


def test_the_reading_by_hand_excludes_the_class_token_and_is_a_virtual_weight_gradient() -> None:
    """Σ_u g_u ⊙ x_u and Σ_u g_u over the patch tokens read as a grid are the gradients of a scale and a bias
    applied to the patch tokens only (the class token untouched)."""
    model, images = tv_vit(), images_for()
    layer, reading = "encoder.layers.encoder_layer_1", (TOKENS, 1, (4, 4))
    records = literal_records(model, images, TARGETS, {layer: reading})
    ref = without_inplace(model)
    for b in range(images.shape[0]):
        for t, c in enumerate(TARGETS[b].tolist()):
            scale = torch.zeros(12, dtype=torch.float64, requires_grad=True)
            bias = torch.zeros(12, dtype=torch.float64, requires_grad=True)

            def splice(_module: nn.Module, _args: tuple, out: Tensor, scale: Tensor = scale, bias: Tensor = bias):
                return torch.cat([out[:, :1], out[:, 1:] * (1 + scale) + bias], dim=1)

            handle = dict(ref.named_modules())[layer].register_forward_hook(splice)
            try:
                d_scale, d_bias = torch.autograd.grad(ref(images[b : b + 1])[0, c], [scale, bias])
            finally:
                handle.remove()
            torch.testing.assert_close(term_sum("scaling", records[b][layer], t), d_scale, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(term_sum("bias", records[b][layer], t), d_bias, rtol=1e-9, atol=1e-12)


def literal_meta_records(model: nn.Module, images: Tensor, targets: Tensor, readings: dict, lr: float) -> list:
    """Per image and target: a deep copy, one SGD step on that image's cross-entropy, the literal records."""
    rows = []
    for b in range(images.shape[0]):
        per_target = []
        for c in targets[b].tolist():
            clone = copy.deepcopy(model).eval()
            F.cross_entropy(clone(images[b : b + 1]), torch.tensor([c])).backward()
            torch.optim.SGD(clone.parameters(), lr=lr).step()
            per_target.append(literal_records(clone, images[b : b + 1], torch.tensor([[c]]), readings)[0])
        rows.append({layer: LayerRecord(
            activation=torch.stack([r[layer].activation for r in per_target]),  # (T, K, H, W): per target's θ'
            gradient=torch.cat([r[layer].gradient for r in per_target]), layer_input=None, module=None,
        ) for layer in readings})
    return rows


@pytest.mark.parametrize("model_name", ["tv_vit", "tv_swin", "timm_vit"])
def test_meta_maps_match_the_literal_reference_on_both_paths(model_name: str) -> None:
    """θ' per (image, target) by a deep copy and torch's SGD; the maps at θ' by the literal reference; the loop
    and the vmap path both match it (and so each other)."""
    make, readings = READINGS[model_name]
    model, images, lr = make(), images_for(), 0.05
    layers = [n for n in readings if n != "conv_proj"][:3]
    rows = literal_meta_records(model, images, TARGETS, {n: readings[n] for n in layers}, lr)
    for batching in ("loop", "vmap"):
        maps = compute_saliency(model, images, TARGETS, layers, META_METHODS, meta_lr=lr, meta_batching=batching)
        for t in range(TARGETS.shape[1]):  # each target has its own θ', so its own activation
            records = [{n: LayerRecord(row[n].activation[t], row[n].gradient[t : t + 1], None, None) for n in layers}
                       for row in rows]
            at_t = {m: {n: maps[m][n][:, t : t + 1] for n in layers} for m in META_METHODS}
            compared = compare(at_t, records, layers, META_METHODS, f"{model_name} {batching} t={t}")
            assert compared == len(layers) * len(META_METHODS), "every method at every layer has a reference"


def test_a_transformer_in_train_mode_is_left_untouched() -> None:
    """Dropout, attention dropout and stochastic depth in train mode: maps run in eval mode, and no flag,
    parameter, buffer, .grad, hook or RNG state changes."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=12, depth=3, num_heads=2, num_classes=5, drop_rate=0.2,
        attn_drop_rate=0.2, drop_path_rate=0.2, proj_drop_rate=0.2).train()
    images = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    first = compute_saliency(model, images, TARGETS, None, META_METHODS, meta_lr=0.01)
    again = compute_saliency(model, images, TARGETS, None, META_METHODS, meta_lr=0.01, meta_batching="vmap")
    assert_same(before, snapshot(model))
    assert list(first["norm_grad"]) == ["blocks.0", "blocks.1"]
    for method in ("norm_grad", "norm_grad_selective"):  # float32: sums over channels would be rounding noise
        for layer, value in first[method].items():
            torch.testing.assert_close(again[method][layer], value, rtol=1e-3, atol=1e-4 * float(value.abs().max()))


def vit_reshape(tensor: Tensor) -> Tensor:
    """pytorch-grad-cam's documented ``reshape_transform`` for a ViT (class token dropped, 4×4 patch grid)."""
    return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).permute(0, 3, 1, 2)


def swin_reshape(tensor: Tensor) -> Tensor:
    """... and for torchvision's channels-last Swin stages."""
    return tensor.permute(0, 3, 1, 2)


@pytest.mark.parametrize(("make", "layer", "reshape"), [
    (tv_vit, "encoder.layers.encoder_layer_1", vit_reshape), (tv_swin, "features.1", swin_reshape),
], ids=["vit", "swin"])
def test_grad_cam_is_pytorch_grad_cam_with_a_hand_written_reshape_transform(make, layer: str, reshape) -> None:
    """What pytorch-grad-cam needs a user-written ``reshape_transform`` for, detected: the same raw cam."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images = make().float(), images_for().float()
    mine = compute_saliency(model, images, TARGETS, [layer], ["grad_cam"])["grad_cam"][layer]
    peer = without_inplace(model)
    cam = GradCAM(model=peer, target_layers=[dict(peer.named_modules())[layer]], reshape_transform=reshape)
    try:
        for t in range(TARGETS.shape[1]):
            targets = [ClassifierOutputTarget(int(c)) for c in TARGETS[:, t]]
            cam(input_tensor=images, targets=targets)
            recorded = cam.activations_and_grads
            raw = cam.get_cam_image(images, layer, targets, recorded.activations[0].numpy(),
                                    recorded.gradients[0].numpy(), eigen_smooth=False)
            theirs = torch.from_numpy(raw).clamp_min(0)
            assert theirs.amax() > 0
            torch.testing.assert_close(mine[:, t], theirs.float(), rtol=0, atol=1e-5 * float(theirs.abs().max()))
    finally:
        cam.activations_and_grads.release()

"""compute_saliency against a slow, literal Extract & Aggregate reference.

The reference shares no code with the library. Per image and per target it runs a float64
deep copy of the model (in-place flags off) with plain forward hooks, takes
``torch.autograd.grad(logit[b, c], activation)``, *materialises* every per-location term
(the vector g_u or g_u ⊙ x_u, the K'xP matrix g_u p_uᵀ, with p_u the patch cut by F.unfold,
block-diagonal for grouped convs) and aggregates it with plain reductions of the
materialised entries. The library instead uses closed forms (‖g pᵀ‖ = ‖g‖‖p‖, box filters
of per-location channel statistics, ...).

The reference itself is validated without the library:
* its real-conv patches rebuild the conv's output through the weight (so padding, padding
  mode, 'same' asymmetry, stride, dilation and group blocks are torch's own), and
* Σ_u of each kind of term equals autograd's gradient of the weight it claims to be the
  gradient of: the real Conv2d weight, and zero-initialised virtual bias / scale / identity
  1x1 and 3x3 convs spliced in after the layer.

Cost: SmallNet's maps are checked at every location. On resnet18 / vgg11 an outer-product
term has up to 512 x 4608 entries, so where a map's terms exceed ``TERM_BUDGET`` entries the
check runs on a fixed sample of locations that always includes the 4 corners, the 4 edge
midpoints and the centre (where padding matters), plus seeded random ones.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency_monitor import AGGREGATIONS, EXTRACTS, NAMED_METHODS, compute_saliency
from tests.conftest import MODEL_SPECS, SMALLNET_CONV_LAYERS, make_images, without_inplace

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

BATCH = 2
TARGETS = torch.tensor([[0, 3], [4, 0]])  # (B, T=2); class 0 for both images, at different t
BLOCK_ELEMENTS = 1 << 18  # materialise at most this many term entries at once (2 MB, in cache)
TERM_BUDGET = 1 << 22  # term entries per (layer, extract, image, target) before sampling locations
MIN_SAMPLED_LOCATIONS = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small float64 ops: one thread avoids OpenMP oversubscription on a busy 2-core box
    (measured 18 s with one thread against 106 s with two while other jobs held the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def method_pair(method: str) -> tuple[str, str] | None:
    """(extract, aggregation), or None for grad_cam."""
    if method in NAMED_METHODS:
        return NAMED_METHODS[method]
    extract, aggregation = method.split(":")
    return extract, aggregation


def all_methods(conv: bool) -> list[str]:
    """Every named method and grid pair whose extract is (conv=True) or is not "conv"."""
    names = list(NAMED_METHODS) + [f"{e}:{a}" for e in EXTRACTS for a in AGGREGATIONS]
    return [m for m in names if conv == ((method_pair(m) or ("",))[0] == "conv")]


# --------------------------------------------------------------------------- reference capture


@dataclass
class LayerRecord:
    """One layer for one image: float64, unbatched."""

    activation: Tensor  # (K, H, W) the layer's output (the image for "input")
    gradient: Tensor  # (T, K, H, W) d logit[c_t] / d activation
    layer_input: Tensor | None  # (K_in, H_in, W_in) the module's input
    module: nn.Module | None  # the module *of the reference copy*


def recording_hook(name: str, outputs: dict[str, Tensor], inputs: dict[str, Tensor]):
    """A forward hook that records the layer's output and input under ``name``."""

    def hook(_module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        outputs[name], inputs[name] = output, args[0]
        return output.clone()  # `out += identity` downstream must not touch `output`

    return hook


def literal_capture(
    model: nn.Module, images: Tensor, targets: Tensor, layers: list[str]
) -> list[dict[str, LayerRecord]]:
    """Per image b: {layer: LayerRecord}. One forward per image, one autograd.grad per target."""
    ref = without_inplace(model)
    modules = dict(ref.named_modules())
    records = []
    for b in range(images.shape[0]):
        outputs: dict[str, Tensor] = {}
        inputs: dict[str, Tensor] = {}
        handles = [
            modules[n].register_forward_hook(recording_hook(n, outputs, inputs)) for n in layers if n != "input"
        ]
        try:
            image = images[b : b + 1].clone().requires_grad_(True)
            logits = ref(image)
        finally:
            for handle in handles:
                handle.remove()
        activations = [image if n == "input" else outputs[n] for n in layers]
        per_target = [
            torch.autograd.grad(logits[0, int(c)], activations, retain_graph=True) for c in targets[b]
        ]
        records.append({
            name: LayerRecord(
                activation=act[0].detach(),
                gradient=torch.stack([grads[i][0] for grads in per_target]),
                layer_input=None if name == "input" else inputs[name][0].detach(),
                module=None if name == "input" else modules[name],
            )
            for i, (name, act) in enumerate(zip(layers, activations))
        })
    return records


# --------------------------------------------------------------------------- literal terms


def conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as torch pads; checked by ``test_patches_rebuild_conv_output``."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)  # the odd pixel goes right/bottom
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_patches(conv: nn.Conv2d, layer_input: Tensor) -> Tensor:
    """(L, K_in * kh * kw): row u is the conv's receptive-field patch of output location u."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(layer_input[None], conv_padding(conv), mode=mode)
    return F.unfold(padded, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)[0].T


def group_mask(conv: nn.Conv2d) -> Tensor:
    """(K_out, K_in * kh * kw): 1 where output channel o and input channel i share a group."""
    k_out, k_in, groups = conv.out_channels, conv.in_channels, conv.groups
    group_out = torch.arange(k_out) // (k_out // groups)
    group_in = (torch.arange(k_in) // (k_in // groups)).repeat_interleave(conv.kernel_size[0] * conv.kernel_size[1])
    return (group_out[:, None] == group_in[None, :]).double()


def block_diagonal_weight(conv: nn.Conv2d) -> Tensor:
    """The grouped weight (K_out, K_in/G, kh, kw) written out as a full (K_out, K_in*kh*kw) matrix."""
    k_out, groups = conv.out_channels, conv.groups
    per_group = conv.weight.detach().flatten(1)  # (K_out, K_in/G * kh*kw)
    width = per_group.shape[1]
    full = torch.zeros(k_out, width * groups, dtype=per_group.dtype)
    for o in range(k_out):
        g = o // (k_out // groups)
        full[o, g * width : (g + 1) * width] = per_group[o]
    return full


def diagonal_blocks(full: Tensor, conv: nn.Conv2d) -> Tensor:
    """Inverse of ``block_diagonal_weight``: the (K_out, K_in/G, kh, kw) diagonal blocks."""
    k_out, groups = conv.out_channels, conv.groups
    width = full.shape[1] // groups
    rows = [full[o, (o // (k_out // groups)) * width : (o // (k_out // groups) + 1) * width] for o in range(k_out)]
    return torch.stack(rows).reshape(conv.weight.shape)


def term_factors(extract: str, record: LayerRecord, t: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(g_rows (L, K'), patches (L, P) or None, mask (K', P) or None): term_u = g_u [p_uᵀ ⊙ mask]."""
    x, g = record.activation, record.gradient[t]
    g_rows = g.flatten(1).T  # gradient at the layer output, one row per location
    if extract == "bias":
        return g_rows, None, None
    if extract == "scaling":
        return (g * x).flatten(1).T, None, None
    if extract == "conv1x1":
        return g_rows, x.flatten(1).T, None
    if extract == "conv3x3":
        return g_rows, F.unfold(x[None], 3, padding=1)[0].T, None  # zero padded 3x3 patch
    if extract == "conv3x3_depthwise":  # the vector (g_k x_{k,u+δ})_{k,δ}, as the official code unfolds it
        return g_rows.repeat_interleave(9, dim=1) * F.unfold(x[None], 3, padding=1)[0].T, None, None
    if extract == "conv":
        return g_rows, conv_patches(record.module, record.layer_input), group_mask(record.module)
    raise AssertionError(extract)


def entries_per_location(extract: str, record: LayerRecord) -> int:
    g_rows, patches, _ = term_factors(extract, record, 0)
    return g_rows.shape[1] * (1 if patches is None else patches.shape[1])


def literal_terms(extract: str, record: LayerRecord, t: int, where: Tensor) -> Iterator[tuple[slice, slice, Tensor]]:
    """The terms at locations ``where`` (flat indices), materialised block by block.

    Yields ``(positions, rows, block, entries)``: ``block[i]`` holds rows ``rows`` of the term at
    location ``where[positions][i]`` (the whole vector for bias/scaling/depthwise, a row block of
    the matrix g_u p_uᵀ for the outer products; off-group blocks of a grouped conv are zeros);
    ``entries`` is None, or the bool mask of the block's entries that belong to the term (the
    zeros outside a grouped conv's blocks are not entries: they must not win a signed max).
    """
    g_rows, patches, mask = term_factors(extract, record, t)
    assert patches is None or patches.shape[0] == g_rows.shape[0], "patches and gradient disagree on L"
    g_rows = g_rows[where]
    if patches is None:
        yield slice(0, len(where)), slice(None), g_rows, None
        return
    patches = patches[where]
    num_rows, width = g_rows.shape[1], patches.shape[1]
    rows_per_block = max(1, min(num_rows, BLOCK_ELEMENTS // width))
    locations_per_block = max(1, BLOCK_ELEMENTS // (num_rows * width))
    for start in range(0, len(where), locations_per_block):
        positions = slice(start, min(start + locations_per_block, len(where)))
        for row in range(0, num_rows, rows_per_block):
            rows = slice(row, min(row + rows_per_block, num_rows))
            block = g_rows[positions, rows, None] * patches[positions, None, :]  # g_u p_uᵀ
            if mask is None:
                yield positions, rows, block, None
            else:
                yield positions, rows, block * mask[rows], mask[rows].bool().expand_as(block)


def literal_values(extract: str, record: LayerRecord, t: int, where: Tensor) -> dict[str, Tensor]:
    """{aggregation: (len(where),) float64}, plain reductions of the materialised entries
    (the row blocks of one location's matrix combine by +, max, and + of squares)."""
    n = len(where)
    total, max_abs, squares, positive_squares = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
    signed_max = torch.full((n,), -torch.inf, dtype=torch.float64)
    for positions, _rows, block, entries in literal_terms(extract, record, t, where):
        flat = block.flatten(1)
        total[positions] += flat.sum(1)
        own = flat if entries is None else torch.where(entries.flatten(1), flat, -torch.inf)
        signed_max[positions] = torch.maximum(signed_max[positions], own.amax(1))
        max_abs[positions] = torch.maximum(max_abs[positions], flat.abs().amax(1))
        squares[positions] += flat.square().sum(1)
        positive_squares[positions] += flat.clamp(min=0).square().sum(1)
    return {"sum": total, "max": signed_max, "maxabs": max_abs, "norm": squares.sqrt(),
            "filter_norm": positive_squares.sqrt()}


def term_sum(extract: str, record: LayerRecord, t: int) -> Tensor:
    """Σ over all locations u of the literal terms: a vector (K,) or (K·9,), or a matrix (K', P)."""
    every = torch.arange(record.gradient[t, 0].numel())
    total = None
    for _positions, rows, block, _entries in literal_terms(extract, record, t, every):
        if total is None:
            total = torch.zeros(block.shape[1] if block.ndim == 2 else record.gradient.shape[1], *block.shape[2:],
                                dtype=torch.float64)
        total[rows] += block.sum(0)
    return total


def literal_grad_cam(record: LayerRecord, t: int) -> Tensor:
    """relu(Σ_k mean_u(g_k) x_k), flattened over locations."""
    g, x = record.gradient[t], record.activation
    weights = g.mean(dim=(1, 2))  # α_k = mean_u g_k(u)
    return torch.relu((weights[:, None, None] * x).sum(0)).flatten()


def sampled_locations(record: LayerRecord, extract: str) -> Tensor:
    """Flat indices of the locations checked: all, or a fixed sample when the terms are big."""
    h, w = record.gradient.shape[2:]
    per_location = 1 if extract in (None, "bias", "scaling") else entries_per_location(extract, record)
    count = max(MIN_SAMPLED_LOCATIONS, TERM_BUDGET // per_location)
    if h * w <= count:
        return torch.arange(h * w)
    rows, cols = [0, h // 2, h - 1], [0, w // 2, w - 1]
    border_and_centre = {r * w + c for r in rows for c in cols}
    rest = torch.randperm(h * w, generator=torch.Generator().manual_seed(h * w + per_location)).tolist()
    chosen = list(border_and_centre) + [i for i in rest if i not in border_and_centre]
    return torch.tensor(sorted(chosen[:count]))


def reference_values(
    records: list[dict[str, LayerRecord]], layer: str, methods: list[str]
) -> dict[str, tuple[Tensor, Tensor]]:
    """{method: (where (n,), values (B, T, n) float64)}; each extract materialised once."""
    extracts = {method_pair(m)[0] for m in methods if method_pair(m)}
    first = records[0][layer]
    where = {e: sampled_locations(first, e) for e in extracts}
    where[None] = torch.arange(first.gradient[0, 0].numel())
    values: dict[tuple, list[Tensor]] = defaultdict(list)  # (extract, aggregation) -> per image (T, n)
    for rec in records:
        record = rec[layer]
        per_target: dict[tuple, list[Tensor]] = defaultdict(list)
        for t in range(record.gradient.shape[0]):
            per_target[(None, None)].append(literal_grad_cam(record, t))
            for extract in extracts:
                for aggregation, value in literal_values(extract, record, t, where[extract]).items():
                    per_target[(extract, aggregation)].append(value)
        for key, found in per_target.items():
            values[key].append(torch.stack(found))
    out = {}
    for method in methods:
        pair = method_pair(method) or (None, None)
        out[method] = (where[pair[0]], torch.stack(values[tuple(pair)]))
    return out


def assert_close_to_reference(actual: Tensor, expected: Tensor, what: str, rel: float = 2e-5) -> None:
    """float32 library values vs float64 reference, relative to each map's largest |value|.

    The library casts g and x to float32 before aggregating: ~1e-7 relative rounding per
    factor, grown by the sums over channels and patches; 2e-5 of the map's scale leaves room
    for that and for nothing else (a wrong location, sign or padding is O(1))."""
    assert actual.dtype == torch.float32, what
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    error = ((actual.double() - expected).abs() / scale).max().item()
    assert error <= rel, f"{what}: max error {error:.3g} of the map's max |value| (allowed {rel})"


# --------------------------------------------------------------------------- per-model cache

_CACHE: dict[str, dict] = {}


def model_case(request: pytest.FixtureRequest, model_name: str) -> dict:
    """Model, images, literal records and library maps of one model, computed once."""
    if model_name not in _CACHE:
        _factory, size, layers, conv_layers = MODEL_SPECS[model_name]
        model = request.getfixturevalue(model_name)
        images = make_images(BATCH, size)
        records = literal_capture(model, images, TARGETS, list(dict.fromkeys(layers + conv_layers)))
        maps = compute_saliency(model, images, TARGETS, layers, all_methods(conv=False))
        maps.update(compute_saliency(model, images, TARGETS, conv_layers, all_methods(conv=True)))
        _CACHE[model_name] = {"model": model, "images": images, "records": records, "maps": maps,
                              "layers": layers, "conv_layers": conv_layers}
    return _CACHE[model_name]


# --------------------------------------------------------------------------- the comparison

CASES = [(name, layer) for name, (_, _, layers, conv_layers) in MODEL_SPECS.items()
         for layer in dict.fromkeys(layers + conv_layers)]


@pytest.mark.parametrize(("model_name", "layer"), CASES, ids=[f"{m}-{layer}" for m, layer in CASES])
def test_every_method_matches_literal_reference(request: pytest.FixtureRequest, model_name: str, layer: str) -> None:
    """Every named method and every extract:aggregation pair, T=2 targets, float64 models."""
    case = model_case(request, model_name)
    methods = (all_methods(conv=False) if layer in case["layers"] else []) + (
        all_methods(conv=True) if layer in case["conv_layers"] else []
    )
    failures = []
    for method, (where, expected) in reference_values(case["records"], layer, methods).items():
        if method != "grad_cam":  # relu may legitimately zero a Grad-CAM map
            assert expected.abs().amax() > 0, f"{method} at {layer}: degenerate (all-zero) reference"
        actual = case["maps"][method][layer]
        assert actual.shape == (BATCH, TARGETS.shape[1], *case["records"][0][layer].gradient.shape[2:])
        try:
            assert_close_to_reference(actual.flatten(2)[..., where], expected, f"{model_name} {layer} {method}")
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures)


def test_grad_cam_reference_is_not_all_zero() -> None:
    """Grad-CAM is exempt from the degeneracy check above; make sure most maps are live."""
    live = [
        (name, layer)
        for name, layer in CASES
        if name in _CACHE and layer in _CACHE[name]["layers"]
        and _CACHE[name]["maps"]["grad_cam"][layer].amax() > 0
    ]
    checked = [(n, layer) for n, layer in CASES if n in _CACHE and layer in _CACHE[n]["layers"]]
    if not checked:
        pytest.skip("run together with test_every_method_matches_literal_reference")
    assert len(live) >= 0.75 * len(checked), f"only {live} of {checked} have a non-zero Grad-CAM"


def test_methods_and_layers_cover_the_grid() -> None:
    """The comparison runs every named method and all 6x5 extract:aggregation pairs (the official
    grid's signed ``max`` and ``conv3x3_depthwise`` included), and the layers it was asked to."""
    covered = set(all_methods(conv=False)) | set(all_methods(conv=True))
    assert covered == set(NAMED_METHODS) | {f"{e}:{a}" for e in EXTRACTS for a in AGGREGATIONS}
    assert len(covered) == len(NAMED_METHODS) + len(EXTRACTS) * len(AGGREGATIONS) == 6 + 6 * 5
    assert {"conv3x3_depthwise:max", "conv1x1:max", "conv:max", "bias:max"} <= covered
    layers = {name: set(plain + conv) for name, (_, _, plain, conv) in MODEL_SPECS.items()}
    assert {"input", "down", "dilated", "grouped", "reflect", "same4", "same2", "mixed"} <= layers["smallnet"]
    assert {"relu", "layer1", "layer2.0.conv1", "layer4"} <= layers["resnet18"]
    assert {"features.3", "features.8", "features.15"} <= layers["vgg11"]


# --------------------------------------------------------------------------- validating the reference

CONV_CASES = [(name, layer) for name, (_, _, _, conv_layers) in MODEL_SPECS.items() for layer in conv_layers]
# Σ_u needs every location: the affordable conv layers (vgg's 256-channel ones are not).
CONV_SUM_CASES = [c for c in CONV_CASES if c not in {("vgg11", "features.3"), ("vgg11", "features.8"),
                                                       ("resnet18", "layer3.1.conv2")}]


@pytest.mark.parametrize(("model_name", "layer"), CONV_CASES, ids=[f"{m}-{layer}" for m, layer in CONV_CASES])
def test_patches_rebuild_conv_output(request: pytest.FixtureRequest, model_name: str, layer: str) -> None:
    """The reference's patches are the conv's own: block-diagonal weight @ patch + bias = output."""
    case = model_case(request, model_name)
    for rec in case["records"]:
        record = rec[layer]
        conv = record.module
        rebuilt = conv_patches(conv, record.layer_input) @ block_diagonal_weight(conv).T
        if conv.bias is not None:
            rebuilt = rebuilt + conv.bias.detach()
        torch.testing.assert_close(rebuilt, record.activation.flatten(1).T, rtol=1e-10, atol=1e-10)
        # the mask the literal terms use is exactly the weight's block structure
        mask = group_mask(conv)
        assert mask.sum() == conv.weight.numel()
        assert ((block_diagonal_weight(conv) != 0) <= (mask == 1)).all()


def weight_gradient(model: nn.Module, image: Tensor, target: int, layer: str) -> Tensor:
    """d logit[target] / d W of the layer's real Conv2d, by autograd on a deep copy."""
    ref = without_inplace(model)
    conv = dict(ref.named_modules())[layer]
    return torch.autograd.grad(ref(image[None])[0, target], conv.weight)[0]


@pytest.mark.parametrize(
    ("model_name", "layer"), CONV_SUM_CASES, ids=[f"{m}-{layer}" for m, layer in CONV_SUM_CASES]
)
def test_sum_of_real_conv_terms_is_the_weight_gradient(
    request: pytest.FixtureRequest, model_name: str, layer: str
) -> None:
    """Σ_u g^out_u p_uᵀ (block-diagonal for groups) = d logit / d W of the real conv; and the
    library's conv:sum map at every u is the sum of the entries of the literal matrix at u."""
    case = model_case(request, model_name)
    for b, rec in enumerate(case["records"]):
        record = rec[layer]
        every = torch.arange(record.gradient[0, 0].numel())
        for t, c in enumerate(TARGETS[b].tolist()):
            total = term_sum("conv", record, t)  # (K_out, K_in*kh*kw)
            assert (total * (1 - group_mask(record.module))).abs().max() == 0
            expected = weight_gradient(case["model"], case["images"][b], c, layer)
            torch.testing.assert_close(diagonal_blocks(total, record.module), expected, rtol=1e-9, atol=1e-12)
            entry_sums = literal_values("conv", record, t, every)["sum"]
            actual = case["maps"]["conv:sum"][layer][b, t].flatten()
            assert_close_to_reference(actual[None], entry_sums[None], f"{layer} conv:sum")


def virtual_weight_gradients(model: nn.Module, image: Tensor, target: int, layer: str) -> dict[str, Tensor]:
    """Gradients of zero-valued virtual weights spliced in right after ``layer``:
    y -> y + β + γ ⊙ y + W1 * y + W3 * y (W3 a 3x3 conv with zero padding)."""
    ref = without_inplace(model)
    module = None if layer == "input" else dict(ref.named_modules())[layer]
    if module is None:
        channels = image.shape[0]
    else:
        seen: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
        with torch.no_grad():
            ref(image[None])
        handle.remove()
        channels = seen[0].shape[1]
    weights = {
        "bias": torch.zeros(1, channels, 1, 1, dtype=torch.float64, requires_grad=True),
        "scaling": torch.zeros(1, channels, 1, 1, dtype=torch.float64, requires_grad=True),
        "conv1x1": torch.zeros(channels, channels, 1, 1, dtype=torch.float64, requires_grad=True),
        "conv3x3": torch.zeros(channels, channels, 3, 3, dtype=torch.float64, requires_grad=True),
        "conv3x3_depthwise": torch.zeros(channels, 1, 3, 3, dtype=torch.float64, requires_grad=True),
    }

    def splice(y: Tensor) -> Tensor:
        return (y + weights["bias"] + weights["scaling"] * y + F.conv2d(y, weights["conv1x1"])
                + F.conv2d(y, weights["conv3x3"], padding=1)
                + F.conv2d(y, weights["conv3x3_depthwise"], padding=1, groups=channels))

    if module is None:
        logits = ref(splice(image[None]))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: splice(out))
        try:
            logits = ref(image[None])
        finally:
            handle.remove()
    grads = torch.autograd.grad(logits[0, target], list(weights.values()))
    return dict(zip(weights, grads))


VIRTUAL_CASES = [("smallnet", layer) for layer in ["input", "conv1", "relu1", "grouped", "same4", "mixed"]] + [
    ("resnet18", "layer1"), ("resnet18", "layer1.0.bn2"), ("vgg11", "input"),
]


@pytest.mark.parametrize(
    ("model_name", "layer"), VIRTUAL_CASES, ids=[f"{m}-{layer}" for m, layer in VIRTUAL_CASES]
)
def test_sum_of_identity_terms_is_a_virtual_weight_gradient(
    request: pytest.FixtureRequest, model_name: str, layer: str
) -> None:
    """Σ_u g_u = dβ, Σ_u g_u⊙x_u = dγ, Σ_u g_u x_uᵀ = dW1, Σ_u g_u x_{u,3x3}ᵀ = dW3, and
    Σ_u (g_{k,u} x_{k,u+δ})_{k,δ} = dW of a depthwise 3x3 conv."""
    case = model_case(request, model_name)
    for b, rec in enumerate(case["records"]):
        record = rec[layer]
        for t, c in enumerate(TARGETS[b].tolist()):
            grads = virtual_weight_gradients(case["model"], case["images"][b], c, layer)
            for extract, grad in grads.items():
                torch.testing.assert_close(term_sum(extract, record, t).reshape(grad.shape), grad,
                                           rtol=1e-9, atol=1e-12,
                                           msg=lambda m, extract=extract: f"{layer} {extract}: {m}")


# --------------------------------------------------------------------------- float64 closed forms


def test_closed_forms_are_exact_in_float64(smallnet: nn.Module) -> None:
    """The library's closed forms (internal functions), fed float64 captures, match the literal
    terms to ~1e-12: the 2e-5 allowed above is float32 rounding and nothing else."""
    from saliency_monitor.engine.aggregate import ConvGeometry, aggregate_outer, aggregate_vector, grad_cam
    from saliency_monitor.engine.capture import capture

    images = make_images(BATCH, 32)
    layers = ["input", *SMALLNET_CONV_LAYERS]
    records = literal_capture(smallnet, images, TARGETS, layers)
    captured = capture(smallnet, images, TARGETS, layers, keep_inputs=set(SMALLNET_CONV_LAYERS)).layers
    for layer in layers:
        g, x, module = captured[layer].gradient, captured[layer].activation, captured[layer].module
        assert g.dtype == torch.float64
        methods = all_methods(conv=False) + (all_methods(conv=True) if layer != "input" else [])
        for method, (where, expected) in reference_values(records, layer, methods).items():
            pair = method_pair(method)
            if pair is None:
                actual = grad_cam(g, x)
            elif pair[0] in ("bias", "scaling"):
                actual = aggregate_vector(g if pair[0] == "bias" else g * x.unsqueeze(1), pair[1])
            elif pair[0] == "conv":
                actual = aggregate_outer(g, captured[layer].layer_input, ConvGeometry.of(module), pair[1])
            elif pair[0] == "conv3x3_depthwise":
                actual = aggregate_outer(g, x, ConvGeometry.identity(3, groups=x.shape[1]), pair[1])
            else:
                actual = aggregate_outer(g, x, ConvGeometry.identity(1 if pair[0] == "conv1x1" else 3), pair[1])
            torch.testing.assert_close(actual.flatten(2)[..., where], expected, rtol=1e-10,
                                       atol=1e-12 * float(expected.abs().max()),
                                       msg=lambda m, layer=layer, method=method: f"{layer} {method}: {m}")


# --------------------------------------------------------------------------- output_size, targets shape


@pytest.mark.parametrize("output_size", [(40, 48), 24, (7, 100)])
def test_output_size_is_bilinear_resize_of_native_maps(smallnet: nn.Module, output_size) -> None:
    images = make_images(BATCH, 32).float()
    model = copy.deepcopy(smallnet).float()
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    for layers, methods in [
        (["input", "down", "mixed", "same2"], ["norm_grad", "grad_cam", "conv3x3:maxabs"]),
        (["down", "mixed", "same2"], ["norm_grad_conv", "conv:sum"]),
    ]:
        native = compute_saliency(model, images, TARGETS, layers, methods)
        resized = compute_saliency(model, images, TARGETS, layers, methods, output_size=output_size)
        for method in methods:
            for layer in layers:
                expected = F.interpolate(native[method][layer], size=size, mode="bilinear", align_corners=False)
                assert resized[method][layer].shape == (BATCH, TARGETS.shape[1], *size)
                assert resized[method][layer].dtype == torch.float32
                torch.testing.assert_close(resized[method][layer], expected, rtol=1e-6,
                                           atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("model_name", ["smallnet", "resnet18"])
def test_targets_of_shape_b_equal_t1(request: pytest.FixtureRequest, model_name: str) -> None:
    _factory, size, _layers, conv_layers = MODEL_SPECS[model_name]
    model = request.getfixturevalue(model_name)
    images = make_images(BATCH, size)
    layers = conv_layers[:2]
    methods = ["gradient", "grad_cam", "norm_grad_selective", "norm_grad_conv"]
    flat = torch.tensor([3, 1])
    two_d = compute_saliency(model, images, flat[:, None], layers, methods)
    for targets in (flat, flat.tolist()):
        one_d = compute_saliency(model, images, targets, layers, methods)
        for method in methods:
            for layer in layers:
                assert one_d[method][layer].shape[:2] == (BATCH, 1)
                torch.testing.assert_close(one_d[method][layer], two_d[method][layer], rtol=0, atol=0)
    # each column of a (B, T) request is the T=1 request of that column
    both = compute_saliency(model, images, TARGETS, layers, methods)
    for t in range(TARGETS.shape[1]):
        single = compute_saliency(model, images, TARGETS[:, t], layers, methods)
        for method in methods:
            for layer in layers:
                torch.testing.assert_close(both[method][layer][:, t : t + 1], single[method][layer],
                                           rtol=1e-6, atol=1e-6 * float(single[method][layer].abs().max()))


# --------------------------------------------------------------------------- odd corners


@pytest.mark.parametrize("channels_last", [False, True])
def test_valid_padding_no_bias_and_channels_last(channels_last: bool) -> None:
    """padding='valid', bias=False, zero padding on one axis only, 1xN kernels, and
    channels_last tensors (non-contiguous in NCHW terms) all through the same reference."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, (2, 3), padding="valid", bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 4, (1, 3), stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).double().eval()
    images = make_images(BATCH, (11, 17))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    layers, conv_layers = ["input", "0", "1", "2"], ["0", "2"]
    records = literal_capture(model, images, TARGETS, layers)
    maps = compute_saliency(model, images, TARGETS, layers, all_methods(conv=False))
    maps.update(compute_saliency(model, images, TARGETS, conv_layers, all_methods(conv=True)))
    for layer in layers:
        methods = all_methods(conv=False) + (all_methods(conv=True) if layer in conv_layers else [])
        for method, (where, expected) in reference_values(records, layer, methods).items():
            assert_close_to_reference(maps[method][layer].flatten(2)[..., where], expected, f"{layer} {method}")
    for layer in conv_layers:
        for b, rec in enumerate(records):
            conv = rec[layer].module
            rebuilt = conv_patches(conv, rec[layer].layer_input) @ block_diagonal_weight(conv).T
            rebuilt = rebuilt if conv.bias is None else rebuilt + conv.bias.detach()
            torch.testing.assert_close(rebuilt, rec[layer].activation.flatten(1).T, rtol=1e-10, atol=1e-10)
            for t, c in enumerate(TARGETS[b].tolist()):
                expected = weight_gradient(model, images[b], c, layer)
                torch.testing.assert_close(diagonal_blocks(term_sum("conv", rec[layer], t), conv), expected,
                                           rtol=1e-9, atol=1e-12)

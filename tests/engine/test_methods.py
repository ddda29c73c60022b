"""The method registry: every method registered once, with what it needs."""

from __future__ import annotations

import re

import pytest
import torch

from saliency_monitor.engine import AGGREGATIONS, EXTRACTS, METHODS, NAMED_METHODS, get_method, parse_methods
from saliency_monitor.engine.capture import Capture
from saliency_monitor.engine.methods import GRADIENT, RELEVANCE, with_sources


def test_named_methods_and_what_they_need() -> None:
    assert set(METHODS) == {"gradient", "linear_approx", "grad_cam", "norm_grad", "norm_grad_selective",
                            "norm_grad_conv", "lrp", "salient_relevance"}
    assert NAMED_METHODS == {
        "gradient": ("bias", "maxabs"), "linear_approx": ("scaling", "sum"), "grad_cam": None,
        "norm_grad": ("conv1x1", "norm"), "norm_grad_selective": ("scaling", "filter_norm"),
        "norm_grad_conv": ("conv", "norm"),
    }
    assert [m.name for m in METHODS.values() if m.computed_by == RELEVANCE] == ["lrp", "salient_relevance"]
    assert [m.name for m in METHODS.values() if m.needs_conv_layer] == ["norm_grad_conv"]
    assert [(m.name, m.refines) for m in METHODS.values() if m.refines] == [("salient_relevance", "lrp")]


def test_every_grid_cell_is_a_gradient_method() -> None:
    assert EXTRACTS == ("bias", "scaling", "conv1x1", "conv3x3", "conv3x3_depthwise", "conv")
    assert AGGREGATIONS == ("sum", "max", "maxabs", "norm", "filter_norm")
    for extract in EXTRACTS:
        for aggregation in AGGREGATIONS:
            method = get_method(f"{extract}:{aggregation}")
            assert (method.computed_by, method.extract, method.aggregation) == (GRADIENT, extract, aggregation)
            assert method.needs_conv_layer == (extract == "conv") and str(method) == f"{extract}:{aggregation}"
            assert get_method(method.name) == method and get_method(method) is method


def test_a_named_cell_is_its_grid_cell_under_its_name() -> None:
    capture = Capture(torch.randn(2, 4, 5, 5), torch.randn(2, 3, 4, 5, 5), None)
    for name, cell in NAMED_METHODS.items():
        if cell is not None and cell[0] != "conv":
            named, grid = get_method(name), get_method(":".join(cell))
            assert torch.equal(named.gradient_map(capture), grid.gradient_map(capture)), name


def test_parse_methods_checks_names_and_duplicates_naming_the_argument() -> None:
    assert parse_methods("lrp") == (METHODS["lrp"],)
    assert parse_methods(["norm_grad", "bias:max"]) == (METHODS["norm_grad"], get_method("bias:max"))
    with pytest.raises(ValueError, match=re.escape("Expected `layer_methods` to hold methods in ")):
        parse_methods(["norm_grad", "normgrad"], "layer_methods")
    with pytest.raises(ValueError, match=re.escape("Expected distinct `methods`, but got duplicates: ['lrp'].")):
        parse_methods(["lrp", "lrp"])
    with pytest.raises(ValueError, match=re.escape("Expected `methods` to name at least one method")):
        parse_methods([])
    with pytest.raises(TypeError, match=re.escape("Expected `methods` to be a sequence of method names")):
        parse_methods({"lrp"})
    with pytest.raises(ValueError, match=re.escape("but got 3.")):
        get_method(3)


def test_with_sources_adds_what_a_method_refines_once() -> None:
    sr, lrp, ng = METHODS["salient_relevance"], METHODS["lrp"], METHODS["norm_grad"]
    assert with_sources((sr, ng)) == (sr, ng, lrp)
    assert with_sources((lrp, sr)) == (lrp, sr)
    assert with_sources((ng,)) == (ng,)


def test_a_relevance_method_has_no_gradient_map() -> None:
    capture = Capture(torch.randn(1, 2, 3, 3), torch.randn(1, 1, 2, 3, 3), None)
    with pytest.raises(TypeError, match=re.escape("Expected a gradient method, but 'lrp' is computed by relevance.")):
        METHODS["lrp"].gradient_map(capture)
    maps = torch.randn(1, 1, 8, 8)
    assert METHODS["lrp"].refined(maps, 32) is maps
